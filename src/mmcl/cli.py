"""The `mmcl` command: run, compare, demo, base, bench, score, export, data, list."""

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

# Forgetting and the method that stops it, the costliest last. Not joint: three methods of ~3
# minutes need 6 on two cores, two need 3 (the upper bound is one `mmcl compare` away).
DEMO_METHODS = ["zero-shot", "lora-ft", "mr-lora"]

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="experiment YAML")]
SeedOpt = Annotated[int | None, typer.Option(help="seed (data, init, order of batches)")]
TasksOpt = Annotated[str | None, typer.Option(help="task order/subset, comma-separated")]
PresetOpt = Annotated[str | None, typer.Option(help="model preset (micro, tiny)")]
GeneralOpt = Annotated[
    str | None,
    typer.Option(help="general suites, never trained on: builtin, stream YAMLs (comma-separated)"),
]


def _overrides(benchmark, method, seed, tasks, preset, general=None, **extra) -> dict[str, Any]:
    return {
        "benchmark": benchmark,
        "method.name": method,
        "seed": seed,
        "tasks": tasks.split(",") if tasks else None,
        "model.preset": preset,
        "eval.general": general.split(",") if general else None,
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
    general: GeneralOpt = None,
) -> None:
    """Run one continual-learning experiment and write results.json + report."""
    from mmcl.config import load_config
    from mmcl.io import end_processes
    from mmcl.report import matrix_markdown
    from mmcl.runner import Run, is_main_process

    cfg = load_config(config, _overrides(benchmark, method, seed, tasks, preset, general))
    res = Run(cfg, out).execute(resume=resume)
    if is_main_process():  # under torchrun/accelerate the first process reports
        console.print(matrix_markdown(res))
        console.print({k: round(v, 2) for k, v in res["metrics"].items()})
        console.print(f"results: {out / 'results.json'}")
    end_processes()


@app.command()
def compare(
    out: Annotated[Path, typer.Option(help="output directory")],
    methods: Annotated[str, typer.Option(help="comma-separated method names")],
    benchmark: Annotated[str | None, typer.Option(help="benchmark name")] = None,
    config: ConfigOpt = None,
    seeds: Annotated[
        str | None, typer.Option(help="comma-separated seeds (default: the config's)")
    ] = None,
    orders: Annotated[
        str,
        typer.Option(
            help="a number of task orders (the published ones, then the given order, then "
            "seeded permutations), or orders separated by ';' (ocr,math,...;gui,...)"
        ),
    ] = "1",
    tasks: TasksOpt = None,
    preset: PresetOpt = None,
    reference: Annotated[
        str | None, typer.Option(help="method the others are compared with, cell by cell")
    ] = None,
    executor: Annotated[str, typer.Option(help="local (a process pool) or ray")] = "local",
    workers: Annotated[
        int | None, typer.Option(min=1, help="local pool size (default: cores / threads)")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads (Ray CPUs) per cell")] = 1,
    gpus: Annotated[float, typer.Option(min=0, help="Ray GPUs per cell")] = 0.0,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: a new local instance)")
    ] = None,
    general: GeneralOpt = None,
) -> None:
    """Run methods x seeds x task orders (cells in parallel; finished cells are kept, killed
    ones continue); write comparison.md/.json/.html/.png with mean ± std, 95% intervals and
    paired differences."""
    from mmcl.grid import GridSpec, parse_seeds, run_grid

    spec = GridSpec(
        out=out,
        methods=[m.strip() for m in methods.split(",") if m.strip()],
        seeds=parse_seeds(seeds) if seeds else None,
        orders=orders,
        config=config,
        overrides=_overrides(benchmark, None, None, tasks, preset, general),
        reference=reference,
        executor=executor,
        workers=workers,
        threads=threads,
        gpus=gpus,
        address=address,
    )
    res = run_grid(spec, say=lambda line: console.print(line, highlight=False, markup=False))
    console.print(res.text, markup=False)
    console.print(f"grid: {res.ran} cell(s) run in {res.seconds:.0f} s; {out / 'comparison.md'}")
    if res.failed:
        console.print(f"[red]{len(res.failed)} cell(s) failed; run the command again to retry")
        raise typer.Exit(1)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("mmcl-demo"),
    preset: PresetOpt = None,
) -> None:
    """The main job: compare methods on the default `ability` stream with the tiny model."""
    t0 = time.perf_counter()
    # With general retention, on the default stream and seed.
    from mmcl.grid import run_methods

    text = run_methods(
        DEMO_METHODS,
        out,
        _overrides("ability", None, 0, None, preset, "builtin"),
        say=lambda line: console.print(line, highlight=False, markup=False),
    )
    console.print(text)
    console.print(
        f"demo finished in {time.perf_counter() - t0:.0f} s; report: {out / 'comparison.md'}"
    )
    console.print(
        "One seed and one task order, and no upper bound: for joint training beside these, and "
        "mean ± std, intervals and paired differences over seeds and orders, run e.g. `mmcl "
        "compare --benchmark ability --methods lora-ft,joint,mr-lora --seeds 0,1,2 --orders 2 "
        "--reference lora-ft --out runs/grid`",
        markup=False,
    )


@app.command()
def base(
    out: Annotated[Path, typer.Option(help="a new folder for the trained base")],
    preset: Annotated[str, typer.Option(help="model preset (micro, tiny)")] = "tiny",
    seed: Annotated[int, typer.Option(help="the base's seed (model.base_seed)")] = 0,
) -> None:
    """Train a base model from nothing into --out (the shipped and cached ones untouched) and
    say whether it is, byte for byte, the base mmcl uses for this preset and seed."""
    from mmcl.pretraining.base import retrain_base

    if out.exists():
        raise MmclError(f"{out} exists; choose a new folder")
    t0 = time.perf_counter()
    info, used, same = retrain_base(preset, seed, out)
    forms = ", ".join(f"{k} {v:.0f}" for k, v in info["heldout_exact"].items() if "," not in k)
    console.print(
        f"base {preset}, seed {seed}: trained in {time.perf_counter() - t0:.0f} s; position "
        f"probe {info['position_probe']:.2f}; held-out exact match per form: {forms}",
        highlight=False,
    )
    if same is None:
        console.print(f"no base of it in use yet to compare with ({used})", highlight=False)
    elif same:
        console.print(f"identical to the base in use, {used}", highlight=False)
    else:
        console.print(
            f"[bold]differs[/] from the base in use, {used}: another kind of CPU rounds "
            "otherwise, or the code changed without a new key",
            highlight=False,
        )
        raise typer.Exit(1)


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
    step: Annotated[int | None, typer.Option(help="as after step N (0: the first task)")] = None,
) -> None:
    """Export a run's trained adapters as peft folders (with the embedded base model, a routing
    file for routed methods and a README on serving them with vLLM)."""
    from mmcl.export import export_run

    info = export_run(run_dir, out, step)
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
