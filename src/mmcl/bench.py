"""`mmcl bench`: speed and scale figures of the library, all measured in one run on this machine.

- training: the mmcl loop (`train.train`) against a bare PyTorch loop on the same model, batch
  size and data (same collate, AdamW, clipping and schedule), as a ratio of samples/s, and the
  loop's achieved FLOP/s as a fraction of the machine's matmul throughput;
- evaluation: greedy generation samples/s with the KV cache (the `Backbone.generate` path) and
  without it (a loop that recomputes the whole sequence for every new token);
- routed inference: MR-LoRA's two-stage inference (router, then experts in mixed-adapter
  batches) against one adapter answering the whole batch;
- scaling with the number of tasks: step time, trainable and total parameters and peak memory
  of each continual method, each method in a fresh process so that memory figures are its own.

The model is the preset's architecture with random weights (speed does not depend on their
values) and the generated ability stream's data. Generation is forced to a fixed length, so that
every configuration does the same work, except in MR-LoRA's own cost measurement, which runs
its router and experts as they are. Results go to bench.json and bench.md.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from mmcl.data.benchmarks import Task, TaskSpec, get_benchmark
from mmcl.data.records import Record
from mmcl.errors import MmclError
from mmcl.io import read_json, write_json, write_text
from mmcl.models.base import Backbone, LoraSpec
from mmcl.train import TrainSettings, train

SCALING_METHODS = ("lora-ft", "o-lora", "moe-lora", "mr-lora", "unifier")
# Every task of the scaling run trains on a few batches for one epoch; a method's own inner
# training is cut down alike, or it alone would take the whole time budget: after each task
# MR-LoRA retrains its router on 20 samples of every seen task for 8 epochs, and its routing
# prompt lists every expert, so that this work grows with the square of the number of tasks.
SCALING_OPTIONS: dict[str, dict[str, Any]] = {
    "mr-lora": {"router_samples": 4, "router_train": {"epochs": 1, "batch_size": 8, "lr": 2e-3}}
}


@dataclass(frozen=True)
class BenchPreset:
    """Sizes of one benchmark run."""

    model: str  # model preset (models/tiny.py)
    train_records: int  # samples per training measurement
    batch_size: int
    repeats: int  # measurements per loop, alternated (the best and the median are reported)
    eval_records: int
    eval_batch: int
    new_tokens: int  # generated tokens per sample
    adapters: int  # experts in the routed-inference measurement (at most 4: ability's tasks)
    task_counts: tuple[int, ...]  # points of the scaling curve
    scaling_records: int  # training samples per task in the scaling run


BENCH_PRESETS = {
    "micro": BenchPreset("micro", 128, 16, 5, 64, 32, 16, 4, (1, 2, 5, 10, 20), 32),
    "tiny": BenchPreset("tiny", 128, 16, 5, 64, 32, 16, 4, (1, 2, 5, 10, 20), 32),
}


def bench_preset(name: str, quick: bool = False) -> BenchPreset:
    if name not in BENCH_PRESETS:
        raise MmclError(f"unknown bench preset {name!r}; choose one of {sorted(BENCH_PRESETS)}")
    p = BENCH_PRESETS[name]
    if quick:
        p = replace(
            p, train_records=64, repeats=1, eval_records=32, new_tokens=8, task_counts=(1, 2, 4)
        )
    return p


# --- helpers ----------------------------------------------------------------------------------
def _backbone(model: str) -> Backbone:
    """The preset's architecture with random weights and the locally trained tokenizer."""
    from mmcl.models.tiny import build_backbone, get_preset, train_tokenizer

    preset = get_preset(model)
    return build_backbone(preset, train_tokenizer(preset.vocab_size), seed=0)


def _tasks(n_train: int, n_test: int) -> list[Task]:
    return get_benchmark("ability").load(0, n_train, n_test)


def _mixed(tasks: list[Task], split: str, n: int) -> list[Record]:
    """`n` records taken round-robin from every task (a realistic mix of prompt lengths)."""
    pools = [getattr(t, split) for t in tasks]
    return [pools[i % len(pools)][i // len(pools)] for i in range(n)]


def _timed(fn, *args, **kw) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def _count(params) -> int:
    return sum(p.numel() for p in params)


@contextmanager
def _fixed_length(backbone: Backbone, n: int):
    """Make generate produce exactly `n` tokens (EOS suppressed until then)."""
    cfg = backbone.core.lm.generation_config
    old = cfg.min_new_tokens
    cfg.min_new_tokens = n
    try:
        yield
    finally:
        cfg.min_new_tokens = old


def peak_rss_reset() -> None:
    """Reset the process's peak resident memory (Linux); elsewhere the peak is lifetime."""
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """Peak resident memory since the last reset, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
    return rss / (1024 * 1024 if platform.system() == "Darwin" else 1024)


# --- the machine ------------------------------------------------------------------------------
def matmul_gflops(sizes: tuple[int, ...] = (256, 512, 1024), seconds: float = 0.5) -> dict:
    """float32 matmul throughput of this machine with torch's current thread count."""
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        reps, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            torch.mm(a, b)
            reps += 1
        out[str(n)] = round(2 * n**3 * reps / elapsed / 1e9, 2)
    return {"gflops_by_size": out, "peak_gflops": max(out.values())}


# --- training throughput ----------------------------------------------------------------------
def bare_loop(backbone: Backbone, records: list[Record], settings: TrainSettings, seed: int):
    """The same training as `train.train`, written as a plain PyTorch loop (one epoch)."""
    params = [p for p in backbone.core.parameters() if p.requires_grad]
    loader = DataLoader(
        records,
        batch_size=settings.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=lambda rs: backbone.collate(rs, train=True),
    )
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    total = len(loader)
    sched = get_cosine_schedule_with_warmup(opt, int(settings.warmup_ratio * total), total)
    backbone.model.train()
    for batch in loader:
        loss = backbone.forward(batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    backbone.model.eval()


def flops_per_sample(backbone: Backbone, records: list[Record]) -> tuple[float, float]:
    """Training FLOPs per sample, 6 x parameters x tokens, counting each part of the model
    with the tokens it processes (LM: the padded sequence; vision encoder: its patches).
    Returns (FLOPs, mean LM tokens per sample)."""
    core = backbone.core
    batch = backbone.collate(records, train=True)
    lm_tokens = batch.input_ids.shape[1]  # every position is computed, padding included
    vis_tokens = sum(len(r.media.get("image", ())) for r in records) / len(records)
    tower = core.encoders["image"]
    n_vis = _count(tower.parameters())
    n_proj = _count(core.projectors["image"].parameters())
    n_lm = _count(core.lm.parameters())  # the tied embedding stands for the LM head's matmul
    patches = tower.num_tokens + 1  # + CLS
    flops = 6 * (n_lm * lm_tokens + vis_tokens * (n_vis + n_proj) * patches)
    return flops, lm_tokens


def train_throughput(backbone: Backbone, records: list[Record], p: BenchPreset) -> dict:
    """samples/s of the mmcl loop and of the bare loop, measured alternately."""
    from mmcl.methods import make_method

    specs = [TaskSpec("bench", "image", "lenient", "benchmark")]
    method = make_method("lora-ft", {}, backbone, specs, 0)
    method.setup()
    settings = TrainSettings(epochs=1, batch_size=p.batch_size)
    warm = records[: 2 * p.batch_size]
    train(backbone, warm, settings, 0, method, desc="bench warm-up")
    bare_loop(backbone, warm, settings, 0)
    wall: dict[str, list[float]] = {"mmcl": [], "bare": []}  # samples per wall-clock second
    cpu: dict[str, list[float]] = {"mmcl": [], "bare": []}  # samples per CPU second
    for r in range(p.repeats):
        # Alternate the order so that drift in the machine's load hits both loops alike.
        for name in ("bare", "mmcl") if r % 2 == 0 else ("mmcl", "bare"):
            c0 = time.process_time()
            if name == "mmcl":
                s, _ = _timed(train, backbone, records, settings, r, method, desc="bench mmcl")
            else:
                s, _ = _timed(bare_loop, backbone, records, settings, r)
            wall[name].append(len(records) / s)
            cpu[name].append(len(records) / (time.process_time() - c0))
    # Other processes only ever slow a run down, so the best run is the closest to the loop's
    # own cost. This process's CPU time hardly depends on them at all: on a busy machine the
    # CPU-time ratio is the steadier estimate of the loop's overhead.
    best = {k: max(v) for k, v in wall.items()}
    med = {k: statistics.median(v) for k, v in wall.items()}
    best_cpu = {k: max(v) for k, v in cpu.items()}
    flops, tokens = flops_per_sample(backbone, records[: p.batch_size])
    trainable = _count(p for p in backbone.core.parameters() if p.requires_grad)
    return {
        "method": "lora-ft",
        "batch_size": p.batch_size,
        "samples": len(records),
        "repeats": p.repeats,
        "mmcl_samples_per_s": round(best["mmcl"], 2),
        "bare_samples_per_s": round(best["bare"], 2),
        "ratio": round(best["mmcl"] / best["bare"], 3),
        "median_ratio": round(med["mmcl"] / med["bare"], 3),
        "cpu_time_ratio": round(best_cpu["mmcl"] / best_cpu["bare"], 3),
        "all_samples_per_s": {k: [round(x, 2) for x in v] for k, v in wall.items()},
        "all_samples_per_cpu_s": {k: [round(x, 2) for x in v] for k, v in cpu.items()},
        "total_params": _count(backbone.core.parameters()),
        "trainable_params": trainable,
        "lm_tokens_per_sample": tokens,
        "gflop_per_sample": round(flops / 1e9, 4),
        "achieved_gflops": round(best["mmcl"] * flops / 1e9, 2),
    }


# --- evaluation throughput --------------------------------------------------------------------
@torch.no_grad()
def generate_without_cache(backbone: Backbone, records: list[Record], n: int) -> torch.Tensor:
    """Greedy decoding that recomputes the whole sequence for each new token (no KV cache);
    EOS is suppressed so that exactly `n` tokens come out, as under `_fixed_length`."""
    core = backbone.core
    batch = backbone.collate(records, train=False)
    emb = core.embed(batch.input_ids, batch.media)
    mask = batch.attention_mask
    out = []
    for _ in range(n):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = core.lm(
            inputs_embeds=emb, attention_mask=mask, position_ids=pos, use_cache=False
        ).logits[:, -1]
        logits[:, backbone.eos] = -math.inf
        nxt = logits.argmax(-1)
        out.append(nxt)
        emb = torch.cat([emb, core.lm.get_input_embeddings()(nxt)[:, None]], 1)
        mask = torch.cat([mask, mask.new_ones(len(nxt), 1)], 1)
    return torch.stack(out, 1)


def _generate_all(backbone: Backbone, records: list[Record], bs: int, n: int, names=None):
    answers = []
    for s in range(0, len(records), bs):
        batch = backbone.collate(records[s : s + bs], train=False)
        answers += backbone.generate(
            batch, adapter_names=names[s : s + bs] if names else None, max_new_tokens=n
        )
    return answers


def eval_throughput(backbone: Backbone, records: list[Record], p: BenchPreset) -> dict:
    """Generation samples/s with the KV cache (the evaluator's path) and without it."""
    n, bs = p.new_tokens, p.eval_batch
    backbone.use_adapters(None)
    with _fixed_length(backbone, n):
        _generate_all(backbone, records[:bs], bs, n)  # warm-up
        t_cache, answers = _timed(_generate_all, backbone, records, bs, n)

        def no_cache():
            return [
                t
                for s in range(0, len(records), bs)
                for t in generate_without_cache(backbone, records[s : s + bs], n)
            ]

        t_plain, tokens = _timed(no_cache)
    texts = backbone.tokenizer.batch_decode(torch.stack(tokens), skip_special_tokens=True)
    same = sum(a == t.strip() for a, t in zip(answers, texts, strict=True))
    return {
        "samples": len(records),
        "batch_size": bs,
        "new_tokens": n,
        "kv_cache_samples_per_s": round(len(records) / t_cache, 2),
        "no_cache_samples_per_s": round(len(records) / t_plain, 2),
        "speedup": round(t_plain / t_cache, 2),
        "same_answers": f"{same}/{len(records)}",
    }


# --- routed inference -------------------------------------------------------------------------
def routed_inference(backbone: Backbone, tasks: list[Task], p: BenchPreset) -> dict:
    """MR-LoRA routed inference (router, then experts) against one adapter answering everything.

    With the mr-lora method, its experts and router are trained for a few batches (speed, not
    accuracy) and its own `measure_cost` compares the two paths on the same batches. Without it,
    this measures what routing costs at the model level: batches whose rows go to different
    LoRA experts (peft `adapter_names`) against single-adapter batches."""
    from mmcl.methods import all_methods, make_method

    n, bs = p.new_tokens, p.eval_batch
    tasks = tasks[: p.adapters]
    records = _mixed(tasks, "test", p.eval_records)
    backbone.max_new_tokens = n
    if "mr-lora" in all_methods():
        settings = TrainSettings(epochs=1, batch_size=p.batch_size)
        method = make_method(
            "mr-lora", {"cost_batch_size": bs}, backbone, [t.spec for t in tasks], 0
        )
        method.setup()
        for step, task in enumerate(tasks):
            small = Task(task.spec, task.train[: p.batch_size], task.test)
            method.before_task(small, step)
            train(backbone, method.train_records(small), settings, step, method, desc="expert")
            method.after_task(small, step)
        _, failed = method.route(records[:bs])
        cost = method.measure_cost(records)
        return {
            "how": "mr-lora: one router forward pass scores the letters, then experts answer "
            "in mixed batches",
            "samples": len(records),
            "single_samples_per_s": cost["single_adapter_samples_per_s"],
            "router_samples_per_s": cost["router_samples_per_s"],
            "routed_samples_per_s": cost["routed_samples_per_s"],
            "time_ratio": round(1 / cost["routed_vs_single"], 3),
            # An unparsable router answer costs an extra scoring pass: a barely trained router
            # (random base weights) makes this a worst case.
            "router_fallbacks": f"{failed}/{min(bs, len(records))}",
            "target": "<= 1.5",
        }
    names = [f"expert{i}" for i in range(p.adapters)]
    for name in names:
        backbone.add_lora(name, LoraSpec())
    mixed = [names[i % len(names)] for i in range(len(records))]

    def routed():
        backbone.use_adapters(names)
        return _generate_all(backbone, records, bs, n, mixed)

    def single():
        backbone.use_adapters(names[0])
        return _generate_all(backbone, records, bs, n)

    with _fixed_length(backbone, n):
        routed()
        single()  # warm-up of both paths
        t_single, _ = _timed(single)
        t_routed, _ = _timed(routed)
    return {
        "how": f"mr-lora not available: {p.adapters} LoRA experts mixed in each batch "
        "(peft adapter_names) vs one adapter",
        "samples": len(records),
        "single_samples_per_s": round(len(records) / t_single, 2),
        "routed_samples_per_s": round(len(records) / t_routed, 2),
        "time_ratio": round(t_routed / t_single, 3),
        "target": "<= 1.5",
    }


# --- scaling with the number of tasks ---------------------------------------------------------
def _scaling_worker(method_name: str, p: BenchPreset, threads: int) -> dict:
    """Run `method_name` through max(task_counts) small tasks; measure at each count."""
    from mmcl.methods import make_method

    torch.set_num_threads(threads)
    backbone = _backbone(p.model)
    base = _tasks(p.scaling_records, 4)
    n_max = max(p.task_counts)
    tasks = [
        Task(
            TaskSpec(f"t{i:02d}", "image", base[i % 4].spec.metric, base[i % 4].spec.description),
            base[i % 4].train,
            base[i % 4].test,
        )
        # One task more than are trained: work a method does once at the end of the stream
        # (MR-LoRA measures its inference cost there) is not per-task work.
        for i in range(n_max + 1)
    ]
    options = SCALING_OPTIONS.get(method_name, {})
    method = make_method(method_name, options, backbone, [t.spec for t in tasks], 0)
    method.setup()
    settings = TrainSettings(epochs=1, batch_size=p.batch_size)
    points = []
    for step, task in enumerate(tasks[:n_max]):
        measure = step + 1 in p.task_counts
        if measure:
            peak_rss_reset()
        method.before_task(task, step)
        records = method.train_records(task)
        if step == 0:  # warm-up: the very first batches pay one-time costs
            train(backbone, records[: p.batch_size], settings, step, method, desc="warm-up")
        t_train, stats = _timed(
            train, backbone, records, settings, step, method, desc=f"{method_name} t{step}"
        )
        trainable = _count(p for p in backbone.core.parameters() if p.requires_grad)
        t_after, _ = _timed(method.after_task, task, step)
        if measure:
            batches = math.ceil(len(records) / settings.batch_size)
            points.append(
                {
                    "tasks": step + 1,
                    "step_s": round(t_train / batches, 4),
                    "after_task_s": round(t_after, 3),
                    "trainable_params": trainable,
                    "total_params": _count(backbone.core.parameters()),
                    "peak_rss_mb": round(peak_rss_mb(), 1),
                }
            )
    return {"options": options, "points": points}


def _scaling_main(method_name: str, preset_json: str, threads: str, out: str) -> None:
    """Entry point of the worker process: figures go to the JSON file `out`."""
    raw = json.loads(preset_json)
    p = BenchPreset(**{**raw, "task_counts": tuple(raw["task_counts"])})
    write_json(out, _scaling_worker(method_name, p, int(threads)))


def scaling(p: BenchPreset, methods: list[str] | None = None) -> dict[str, Any]:
    """Each method in its own fresh process (memory figures are then its own)."""
    from mmcl.methods import all_methods

    available = all_methods()
    out: dict[str, Any] = {}
    for name in methods or SCALING_METHODS:
        if name not in available:
            out[name] = {"skipped": "method not implemented in this version"}
            continue
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "scaling.json"
            code = "import sys; from mmcl.bench import _scaling_main; _scaling_main(*sys.argv[1:])"
            args = [name, json.dumps(asdict(p)), str(torch.get_num_threads()), str(result)]
            proc = subprocess.run(
                [sys.executable, "-c", code, *args], capture_output=True, text=True
            )
            if proc.returncode == 0:
                out[name] = read_json(result)
            else:  # one method failing must not lose the other figures
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                out[name] = {"error": f"worker failed: {last}"}
    return out


# --- the whole run ----------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    from mmcl.runner import environment as run_env

    return {**run_env(), "machine": platform.machine(), "cpu_count": os.cpu_count()}


def run_bench(
    out: Path,
    preset: str | BenchPreset = "tiny",
    quick: bool = False,
    methods: list[str] | None = None,
) -> dict[str, Any]:
    """Measure everything, write out/bench.json and out/bench.md, return the figures."""
    p = preset if isinstance(preset, BenchPreset) else bench_preset(preset, quick)
    t0 = time.perf_counter()
    res: dict[str, Any] = {"preset": p.model, "quick": quick, "sizes": asdict(p)}
    res["environment"] = environment()
    phases: dict[str, float] = {}

    def phase(name: str, fn, *args):
        phases[name], res[name] = _timed(fn, *args)

    phase("matmul", matmul_gflops, (256, 512, 1024), 0.25 if quick else 0.5)
    # enough test records per task for the routed measurement, which uses `adapters` tasks
    n_test = math.ceil(p.eval_records / min(p.adapters, 4))
    tasks = _tasks(max(math.ceil(p.train_records / 4), p.batch_size), n_test)
    backbone = _backbone(p.model)
    phase("eval", eval_throughput, backbone, _mixed(tasks, "test", p.eval_records), p)
    phase("train", train_throughput, backbone, _mixed(tasks, "train", p.train_records), p)
    res["train"]["fraction_of_matmul_peak"] = round(
        res["train"]["achieved_gflops"] / res["matmul"]["peak_gflops"], 4
    )
    phase("routing", routed_inference, _backbone(p.model), tasks, p)
    phase("scaling", scaling, p, methods)
    res["phase_seconds"] = {k: round(v, 1) for k, v in phases.items()}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(out)
    write_json(out / "bench.json", res)
    write_text(out / "bench.md", bench_markdown(res))
    return res


def bench_markdown(res: dict[str, Any]) -> str:
    from mmcl.report import _table

    tr, ev, ro, mm = res["train"], res["eval"], res["routing"], res["matmul"]
    env = res["environment"]
    lines = [
        f"# mmcl bench ({res['preset']}{', quick' if res['quick'] else ''})",
        "",
        f"{env['cpu_count']} CPU(s), {env['threads']} torch threads, torch {env['torch']}, "
        f"transformers {env['transformers']}, peft {env['peft']}; total {res['seconds']} s ("
        + ", ".join(f"{k} {v} s" for k, v in res["phase_seconds"].items())
        + ").",
        "",
        "## Training throughput (lora-ft, same model, batch and data)",
        "",
        _table(
            ["loop", "samples/s"],
            [
                ["mmcl (train.train)", tr["mmcl_samples_per_s"]],
                ["bare PyTorch", tr["bare_samples_per_s"]],
            ],
        ),
        "",
        f"ratio mmcl / bare: **{tr['ratio']:.3f}** (target >= 0.9): best of {tr['repeats']} "
        f"alternated runs of {tr['samples']} samples each, batch {tr['batch_size']}; median "
        f"ratio {tr['median_ratio']:.3f}; ratio of samples per CPU second (which other "
        f"processes on the machine barely disturb) **{tr['cpu_time_ratio']:.3f}**.",
        "",
        f"Machine matmul throughput: {mm['peak_gflops']:.1f} GFLOP/s (float32, best of sizes "
        f"{', '.join(mm['gflops_by_size'])}). The loop achieves {tr['achieved_gflops']:.2f} "
        f"GFLOP/s = **{100 * tr['fraction_of_matmul_peak']:.1f}%** of it, counting "
        f"6 x parameters x tokens = {tr['gflop_per_sample']} GFLOP per sample "
        f"({tr['total_params']:,} parameters, {tr['lm_tokens_per_sample']} LM tokens; LoRA "
        "skips the frozen weights' gradients, so the true work is nearer 4/6 of that).",
        "",
        "## Evaluation throughput (greedy generation)",
        "",
        _table(
            ["", "samples/s"],
            [
                ["with KV cache (Backbone.generate)", ev["kv_cache_samples_per_s"]],
                ["without KV cache", ev["no_cache_samples_per_s"]],
            ],
        ),
        "",
        f"{ev['new_tokens']} tokens per sample, batch {ev['batch_size']}; speed-up "
        f"{ev['speedup']:.2f}x; identical answers: {ev['same_answers']}.",
        "",
        "## Routed inference",
        "",
        f"{ro['how']}: {ro['routed_samples_per_s']:.1f} samples/s routed vs "
        f"{ro['single_samples_per_s']:.1f} single-adapter; time ratio **{ro['time_ratio']:.2f}** "
        "(target <= 1.5)"
        + (
            f"; router alone {ro['router_samples_per_s']:.1f} samples/s, router answers that "
            f"named no expert (best-letter fallback): {ro['router_fallbacks']}."
            if "router_fallbacks" in ro
            else "."
        ),
        "",
        "## Scaling with the number of tasks",
        "",
    ]
    rows = []
    for name, r in res["scaling"].items():
        if "points" not in r:
            rows.append([name, r.get("skipped") or r.get("error"), "", "", "", "", ""])
            continue
        for pt in r["points"]:
            rows.append(
                [
                    name,
                    pt["tasks"],
                    f"{pt['step_s']:.3f}",
                    f"{pt['after_task_s']:.2f}",
                    f"{pt['trainable_params']:,}",
                    f"{pt['total_params']:,}",
                    pt["peak_rss_mb"],
                ]
            )
    lines += [
        _table(
            ["method", "tasks", "s/step", "after_task s", "trainable", "total", "peak RSS MB"],
            rows,
        ),
        "",
        "s/step: seconds per training batch while learning the N-th task; after_task s: the "
        "method's work after it (e.g. MR-LoRA retrains its router); peak RSS: the process's "
        "peak resident memory during that task (each method in a fresh process). Each task "
        f"trains on {res['sizes']['scaling_records']} samples for one epoch; options changed "
        f"for this run: {SCALING_OPTIONS}.",
        "",
    ]
    return "\n".join(lines)
