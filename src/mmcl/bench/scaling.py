"""Cost against the step index: every continual method through one long stream, measuring at
each step its training seconds (the task's training plus the method's own work after it, as a
run counts it), its evaluation seconds on a fixed probe, its trainable and total parameters
and its peak memory; then the growth of each cost with the step index, as a number.

A method whose cost per step grows with the number of earlier tasks (a router retrained on
every seen task, a penalty against every earlier adapter) shows a positive slope and a ratio
of its last step to its second step above 1. Each method runs in a fresh process, so that the
memory figures are its own. Times are this process's CPU seconds (one thread), which other
processes on a shared machine barely disturb; wall-clock seconds are kept beside them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcl.bench.common import (
    BenchPreset,
    ability_tasks,
    count,
    fixed_length,
    peak_rss_mb,
    peak_rss_reset,
    random_backbone,
)
from mmcl.data.benchmarks import Task, TaskSpec
from mmcl.evaluate import evaluate_task
from mmcl.io import read_json, write_json
from mmcl.learn import learn_task
from mmcl.train import TrainSettings

# Every method that trains task after task (zero-shot trains nothing, joint trains once).
NOT_SCALED = ("zero-shot", "joint")
# A method's own inner training is cut down like the tasks' (a few batches, one epoch), or it
# alone would take the bench's time; its per-step budget stays fixed as in a full run.
SCALING_OPTIONS: dict[str, dict[str, Any]] = {
    "mr-lora": {
        "router_samples": 8,
        "router_replay": 16,
        "router_train": {"epochs": 2, "batch_size": 8, "lr": 2e-3},
    }
}
PROBE_RECORDS = 16  # test samples evaluated after every step (the same ones each time)


def _stream(p: BenchPreset) -> list[Task]:
    """`p.steps` + 1 tasks cycling through the ability stream's four (names t01, t02, ...)."""
    base = ability_tasks(p.scaling_records, PROBE_RECORDS // 4)
    specs = [t.spec for t in base]
    return [
        Task(
            TaskSpec(f"t{i + 1:02d}", "image", specs[i % 4].metric, specs[i % 4].description),
            base[i % 4].train,
            base[i % 4].test,
        )
        # One task more than are trained: work a method does once at the end of the stream
        # (MR-LoRA measures its inference cost there) is not per-task work.
        for i in range(p.steps + 1)
    ]


def _cpu_and_wall(fn, *args, **kw) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    fn(*args, **kw)
    return time.process_time() - c0, time.perf_counter() - t0


def growth(values: list[float]) -> dict[str, float]:
    """The growth of a per-step cost with the step index, from the second step on (the first
    pays one-time costs): the least-squares slope per added task, the fitted line's ratio of
    the last step to the second, and the measured ratio of the last step to the second."""
    steps = np.arange(2, len(values) + 1, dtype=float)
    ys = np.asarray(values[1:], dtype=float)
    slope, icpt = np.polyfit(steps, ys, 1) if len(ys) > 1 else (0.0, float(ys.mean()))
    first, last = icpt + slope * steps[0], icpt + slope * steps[-1]
    return {
        "slope_per_task": round(float(slope), 5),
        "fit_last_vs_2": round(float(last / first), 3) if first > 0 else float("nan"),
        "last_vs_2": round(float(ys[-1] / ys[0]), 3),
    }


def _worker(method_name: str, p: BenchPreset, threads: int) -> dict:
    """Run `method_name` through the stream; measure every step."""
    from mmcl.methods import make_method

    torch.set_num_threads(threads)
    backbone = random_backbone(p.model)
    backbone.max_new_tokens = p.new_tokens
    tasks = _stream(p)
    # The probe: the same test samples of the four kinds after every step.
    probe = Task(tasks[0].spec, [], [r for t in tasks[:4] for r in t.test])
    options = SCALING_OPTIONS.get(method_name, {})
    method = make_method(method_name, options, backbone, [t.spec for t in tasks], 0)
    method.setup()
    settings = TrainSettings(epochs=1, batch_size=p.batch_size)
    points = []
    for step, task in enumerate(tasks[: p.steps]):
        peak_rss_reset()
        # warm-up: the very first batches pay one-time costs
        stats = learn_task(
            method,
            task,
            step,
            settings,
            0,
            desc=f"{method_name} t{step + 1}",
            warmup=p.batch_size if step == 0 else 0,
        )
        trained = set(stats.trained)
        trainable = count(q for n, q in backbone.core.named_parameters() if n in trained)
        with fixed_length(backbone, p.new_tokens):
            c_eval, w_eval = _cpu_and_wall(evaluate_task, backbone, probe, method, p.eval_batch)
        points.append(
            {
                "step": step + 1,
                "train_s": round(stats.train_cpu_s + stats.after_cpu_s, 4),
                "after_task_s": round(stats.after_cpu_s, 4),
                "eval_s": round(c_eval, 4),
                "train_wall_s": round(stats.seconds, 4),
                "eval_wall_s": round(w_eval, 4),
                "trainable_params": trainable,
                "total_params": count(backbone.core.parameters()),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            }
        )
    return {
        "options": options,
        "train_records_per_task": p.scaling_records,
        "probe_records": len(probe.test),
        "points": points,
        "growth": {
            k: growth([pt[k] for pt in points])
            for k in ("train_s", "eval_s", "total_params", "peak_rss_mb")
        },
    }


def worker_main(method_name: str, preset_json: str, threads: str, out: str) -> None:
    """Entry point of the worker process: figures go to the JSON file `out`."""
    p = BenchPreset(**json.loads(preset_json))
    write_json(out, _worker(method_name, p, int(threads)))


def scaling(p: BenchPreset, methods: list[str] | None = None) -> dict[str, Any]:
    """Each method in its own fresh process; by default every method that trains per task."""
    from mmcl.methods import all_methods

    available = all_methods()
    names = methods or [n for n in available if n not in NOT_SCALED]
    out: dict[str, Any] = {}
    for name in names:
        if name not in available:
            out[name] = {"skipped": "method not implemented in this version"}
            continue
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "scaling.json"
            code = "import sys; from mmcl.bench.scaling import worker_main as w; w(*sys.argv[1:])"
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


def scaling_markdown(scaling_res: dict[str, Any], steps: int, records: int) -> list[str]:
    """Lines of bench.md: each method's cost at the second and the last step, and its growth."""
    from mmcl.report import markdown_table

    rows = []
    for name, r in scaling_res.items():
        if "points" not in r:
            rows.append([name, r.get("skipped") or r.get("error"), *[""] * 8])
            continue
        pts, g = r["points"], r["growth"]
        second, last = pts[min(1, len(pts) - 1)], pts[-1]
        rows.append(
            [
                name,
                f"{second['train_s']:.2f} / {last['train_s']:.2f}",
                f"{g['train_s']['slope_per_task']:+.4f}",
                f"**{g['train_s']['fit_last_vs_2']:.2f}** ({g['train_s']['last_vs_2']:.2f})",
                f"{second['eval_s']:.2f} / {last['eval_s']:.2f}",
                f"{g['eval_s']['fit_last_vs_2']:.2f} ({g['eval_s']['last_vs_2']:.2f})",
                f"{last['trainable_params']:,}",
                f"{second['total_params']:,} / {last['total_params']:,}",
                f"{second['peak_rss_mb']:.0f} / {last['peak_rss_mb']:.0f}",
            ]
        )
    header = [
        "method",
        f"train s, step 2 / {steps}",
        "slope s/task",
        f"train {steps}/2: fit (measured)",
        f"eval s, step 2 / {steps}",
        f"eval {steps}/2: fit (measured)",
        "trainable",
        f"total params, step 2 / {steps}",
        f"peak RSS MB, step 2 / {steps}",
    ]
    return [
        markdown_table(header, rows),
        "",
        f"Each method learns a {steps}-task stream (the ability tasks in turn, "
        f"{records} training samples per task, one epoch) in a fresh "
        "process; after each step it is evaluated on the same probe of test samples. Train s: "
        "CPU seconds of the task's training plus the method's work after it (e.g. MR-LoRA's "
        "router); slope: least-squares seconds per added task from step 2 on; fit: the fitted "
        "line's ratio of the last step to step 2 (target <= 1.5), the measured ratio beside it. "
        f"Options changed for this run: {SCALING_OPTIONS}. Per-step figures are in bench.json.",
        "",
    ]
