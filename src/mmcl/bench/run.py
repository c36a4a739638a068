"""The whole `mmcl bench` run: every measurement, bench.json and bench.md."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mmcl.bench.common import (
    BenchPreset,
    ability_tasks,
    bench_preset,
    mixed,
    random_backbone,
    timed,
)
from mmcl.bench.machine import environment, matmul_gflops
from mmcl.bench.routing import routed_inference
from mmcl.bench.scaling import scaling, scaling_markdown
from mmcl.bench.throughput import eval_throughput, train_throughput
from mmcl.io import write_json, write_text


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
        phases[name], res[name] = timed(fn, *args)

    phase("matmul", matmul_gflops, (256, 512, 1024), 0.25 if quick else 0.5)
    # enough test records per task for the routed measurement, which uses `adapters` tasks
    n_test = math.ceil(p.eval_records / min(p.adapters, 4))
    tasks = ability_tasks(max(math.ceil(p.train_records / 4), p.batch_size), n_test)
    backbone = random_backbone(p.model)
    phase("eval", eval_throughput, backbone, mixed(tasks, "test", p.eval_records), p)
    phase("train", train_throughput, backbone, mixed(tasks, "train", p.train_records), p)
    res["train"]["fraction_of_matmul_peak"] = round(
        res["train"]["achieved_gflops"] / res["matmul"]["peak_gflops"], 4
    )
    phase("routing", routed_inference, random_backbone(p.model), tasks, p)
    phase("scaling", scaling, p, methods)
    res["phase_seconds"] = {k: round(v, 1) for k, v in phases.items()}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(out)
    write_json(out / "bench.json", res)
    write_text(out / "bench.md", bench_markdown(res))
    return res


def bench_markdown(res: dict[str, Any]) -> str:
    from mmcl.report import markdown_table

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
        markdown_table(
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
        markdown_table(
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
        + (f"(CPU-time ratio {ro['cpu_time_ratio']:.2f}) " if "cpu_time_ratio" in ro else "")
        + "(target <= 1.5)"
        + (
            f"; router alone {ro['router_samples_per_s']:.1f} samples/s, router answers that "
            f"named no expert (best-letter fallback): {ro['router_fallbacks']}."
            if "router_fallbacks" in ro
            else "."
        ),
        "",
        "## Cost against the step index",
        "",
    ]
    sizes = res["sizes"]
    lines += scaling_markdown(res["scaling"], sizes["steps"], sizes["scaling_records"])
    return "\n".join(lines)
