"""The `mmcl` command: run, compare, demo, bench, score, export, data, list."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from mmcl.errors import MmclError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Continual learning of multimodal LLMs.",
)
data_app = typer.Typer(no_args_is_help=True, help="Generate and validate data files.")
app.add_typer(data_app, name="data")
console = Console()

DEMO_METHODS = ["zero-shot", "lora-ft", "joint", "mr-lora"]

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="experiment YAML")]
SeedOpt = Annotated[int | None, typer.Option(help="seed (data, init, order of batches)")]
TasksOpt = Annotated[str | None, typer.Option(help="task order/subset, comma-separated")]
PresetOpt = Annotated[str | None, typer.Option(help="model preset (micro, tiny)")]


def _overrides(benchmark, method, seed, tasks, preset, **extra) -> dict[str, Any]:
    return {
        "benchmark": benchmark,
        "method.name": method,
        "seed": seed,
        "tasks": tasks.split(",") if tasks else None,
        "model.preset": preset,
        **extra,
    }


@app.command()
def run(
    out: Annotated[Path, typer.Option(help="output directory")],
    benchmark: Annotated[str | None, typer.Option(help="benchmark name")] = None,
    method: Annotated[str | None, typer.Option(help="method name")] = None,
    config: ConfigOpt = None,
    seed: SeedOpt = None,
    tasks: TasksOpt = None,
    preset: PresetOpt = None,
    resume: Annotated[bool, typer.Option(help="continue a killed run in --out")] = False,
) -> None:
    """Run one continual-learning experiment and write results.json + report."""
    from mmcl.config import load_config
    from mmcl.io import end_processes
    from mmcl.report import matrix_markdown
    from mmcl.runner import Run, is_main_process

    cfg = load_config(config, _overrides(benchmark, method, seed, tasks, preset))
    res = Run(cfg, out).execute(resume=resume)
    if is_main_process():  # under torchrun/accelerate the first process reports
        console.print(matrix_markdown(res))
        console.print({k: round(v, 2) for k, v in res["metrics"].items()})
        console.print(f"results: {out / 'results.json'}")
    end_processes()


def compare_methods(
    methods: list[str], out: Path, config: Path | None, overrides: dict[str, Any], resume: bool
) -> str:
    """Run each method on the same stream and seed into out/<method>/; write the comparison."""
    from mmcl.config import load_config
    from mmcl.io import read_json
    from mmcl.report import write_comparison
    from mmcl.runner import Run

    results = []
    for name in methods:
        cfg = load_config(config, {**overrides, "method.name": name})
        folder = out / name
        done = folder / "results.json"
        if resume and done.exists():
            results.append(read_json(done))
            continue
        console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        res = Run(cfg, folder).execute(resume=resume or (folder / "checkpoints").exists())
        console.print(
            f"{name}: MFN {res['metrics']['mfn']:.2f}, wall {time.perf_counter() - t0:.0f} s"
        )
        results.append(res)
    return write_comparison(out, results[0]["benchmark"], results)


@app.command()
def compare(
    out: Annotated[Path, typer.Option(help="output directory")],
    methods: Annotated[str, typer.Option(help="comma-separated method names")],
    benchmark: Annotated[str | None, typer.Option(help="benchmark name")] = None,
    config: ConfigOpt = None,
    seed: SeedOpt = None,
    tasks: TasksOpt = None,
    preset: PresetOpt = None,
    resume: Annotated[bool, typer.Option(help="reuse finished methods in --out")] = False,
) -> None:
    """Run several methods on the same stream, order and seed; write comparison.md/.json/.png."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    from mmcl.methods import get_method

    for n in names:  # fail on a typo before hours of training
        get_method(n)
    text = compare_methods(
        names, out, config, _overrides(benchmark, None, seed, tasks, preset), resume
    )
    console.print(text)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("mmcl-demo"),
    preset: PresetOpt = None,
) -> None:
    """The main job: compare methods on the default `ability` stream with the tiny model."""
    t0 = time.perf_counter()
    text = compare_methods(
        DEMO_METHODS, out, None, _overrides("ability", None, 0, None, preset), resume=True
    )
    console.print(text)
    console.print(
        f"demo finished in {time.perf_counter() - t0:.0f} s; report: {out / 'comparison.md'}"
    )


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("mmcl-bench"),
    preset: Annotated[str, typer.Option(help="bench preset (micro, tiny)")] = "tiny",
    quick: Annotated[bool, typer.Option(help="fewer, smaller measurements")] = False,
    methods: Annotated[
        str | None, typer.Option(help="methods of the scaling run, comma-separated")
    ] = None,
) -> None:
    """Measure training/evaluation speed, routed inference and scaling; write bench.json/.md."""
    from mmcl.bench import run_bench

    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    res = run_bench(out, preset, quick, names)
    console.print((out / "bench.md").read_text(encoding="utf-8"), markup=False)
    console.print(f"bench finished in {res['seconds']:.0f} s: {out / 'bench.json'}")


@app.command("export")
def export(
    run_dir: Annotated[Path, typer.Argument(help="the output folder of a run")],
    out: Annotated[Path, typer.Option(help="the new export folder")],
) -> None:
    """Export a run's trained adapters as peft folders (with the embedded base model, a routing
    file for routed methods and a README on serving them with vLLM)."""
    from mmcl.export import export_run

    info = export_run(run_dir, out)
    console.print(f"exported {len(info['adapters'])} adapter(s) of {info['method']} to {out}")
    console.print(f"how to use them: {out / 'README.md'}")


@app.command()
def score(
    out: Annotated[Path, typer.Option(help="output directory (scores.jsonl, summary.json)")],
    predictions: Annotated[Path, typer.Option(help="JSONL of {question_id, text}")],
    benchmark: Annotated[
        str | None, typer.Option(help="real-data benchmark whose task's test file to score")
    ] = None,
    task: Annotated[str | None, typer.Option(help="task of --benchmark")] = None,
    data_root: Annotated[Path | None, typer.Option(help="data root of --benchmark")] = None,
    test: Annotated[Path | None, typer.Option(help="test file (instead of --benchmark)")] = None,
    scorer: Annotated[str | None, typer.Option(help="scorer (default: the task's)")] = None,
    judge_url: Annotated[
        str | None, typer.Option(help="math judge: OpenAI-compatible base URL (off by default)")
    ] = None,
    judge_model: Annotated[str | None, typer.Option(help="math judge: model name")] = None,
) -> None:
    """Score a prediction file against a test file by a published rule (`mmcl list`)."""
    from mmcl.scoring.judge import Judge
    from mmcl.scoring.score_file import score_file, task_test_records

    if (benchmark is None) == (test is None):
        raise MmclError("give either --benchmark with --task and --data-root, or --test")
    records = None
    if benchmark is not None:
        if task is None:
            raise MmclError("--benchmark needs --task")
        records, test, default = task_test_records(benchmark, task, data_root)
        scorer = scorer or default
    if scorer is None:
        raise MmclError("--test needs --scorer (`mmcl list` shows the scorers)")
    if (judge_url is None) != (judge_model is None):
        raise MmclError("a judge needs both --judge-url and --judge-model")
    judge = Judge(judge_url, judge_model) if judge_url and judge_model else None
    summary = score_file(test, predictions, scorer, out, judge, records)
    console.print(
        f"{scorer}: {summary['score']:.2f} on {summary['samples']} samples ({test}); "
        f"{out / 'scores.jsonl'}",
        highlight=False,
    )


@app.command("list")
def list_names() -> None:
    """List benchmarks, methods, scorers and model presets."""
    from mmcl.data.benchmarks import BENCHMARKS
    from mmcl.methods import all_methods
    from mmcl.models.tiny import PRESETS

    console.print("[bold]benchmarks")
    for b in BENCHMARKS.values():
        console.print(f"  {b.name:14} {b.summary}")
    console.print("[bold]methods")
    for name, cls in sorted(all_methods().items()):
        console.print(f"  {name:14} {cls.summary}")
    from mmcl.scoring import RULES

    console.print("[bold]scorers")
    for name, rule in sorted(RULES.items()):
        console.print(f"  {name:18} {rule}", highlight=False)
    console.print("[bold]model presets")
    for name, p in PRESETS.items():
        console.print(
            f"  {name:14} image {p.image_size}px/patch {p.patch_size}, "
            f"LM {p.lm_hidden}x{p.lm_layers}"
        )


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Option(help="where to write the benchmark")],
    benchmark: Annotated[str, typer.Option(help="benchmark name")] = "ability",
    seed: Annotated[int, typer.Option()] = 0,
    train_size: Annotated[int | None, typer.Option(help="training samples per task")] = None,
    test_size: Annotated[int | None, typer.Option(help="test samples per task")] = None,
) -> None:
    """Write a procedural benchmark to disk (LLaVA train JSON, MLLM-CL test JSON, media)."""
    import shutil

    from mmcl.data.benchmarks import get_benchmark

    bench = get_benchmark(benchmark)
    src = bench.materialize(seed, train_size or bench.train_size, test_size or bench.test_size)
    if out.exists():
        raise MmclError(f"{out} exists; choose a new folder")
    shutil.copytree(src, out)
    console.print(f"wrote {benchmark} ({', '.join(bench.order)}) to {out}")


@data_app.command("validate")
def data_validate(
    paths: Annotated[list[Path], typer.Argument(help="JSON files of records")],
    media_root: Annotated[
        Path | None, typer.Option(help="media folder (default: the file's)")
    ] = None,
) -> None:
    """Check data files; report every problem with its file and record index."""
    from mmcl.data.records import validate_file

    bad = 0
    for path in paths:
        n, problems = validate_file(path, media_root)
        for p in problems:
            console.print(f"[red]{p}", highlight=False)
        console.print(f"{path}: {n} records, {len(problems)} problem(s)", highlight=False)
        bad += len(problems)
    if bad:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except MmclError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
