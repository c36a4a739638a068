"""results.json: what a finished run reports, assembled from the runner's state."""

from __future__ import annotations

import platform
from typing import Any

import torch

from mmcl import __version__
from mmcl.config import ExperimentConfig
from mmcl.data.benchmarks import Task
from mmcl.methods.base import Method
from mmcl.metrics import METRIC_NAMES, continual_metrics
from mmcl.question_types import constant_baseline
from mmcl.scoring.judge import JUDGED, judge_of


def environment() -> dict[str, Any]:
    import peft
    import transformers

    return {
        "mmcl": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


def assemble_results(
    cfg: ExperimentConfig, tasks: list[Task], method: Method, state: dict
) -> dict[str, Any]:
    """The results of a run whose every step is in `state` (rows, counts, timings, routing)."""
    names = [t.name for t in tasks]
    matrix, zero = state["rows"], state["zero_shot"]
    res: dict[str, Any] = {
        "benchmark": cfg.benchmark,
        "method": method.name,
        "seed": cfg.seed,
        "tasks": names,
        "task_metric": {t.name: METRIC_NAMES.get(t.spec.metric, t.spec.metric) for t in tasks},
        "zero_shot": zero,
        "accuracy_matrix": matrix,
        "metrics": {k: round(v, 4) for k, v in continual_metrics(matrix, zero).items()},
        "counts": state["counts"]
        or {
            n: {"scored": len(t.test), "total": len(t.test)}
            for n, t in zip(names, tasks, strict=True)
        },
        "timing": {
            "train_s": round(state["train_s"], 2),
            "eval_s": round(state["eval_s"], 2),
            "train_samples_per_s": round(state["train_samples"] / max(state["train_s"], 1e-9), 2),
        },
        "environment": environment(),
    }
    # What answering each question type with its most common training answer scores.
    res["constant_baseline"] = {
        t.name: constant_baseline(t.spec.metric, t.train, t.test) for t in tasks
    }
    if cfg.model.backbone == "composed":  # which embedded base: check a claim on two
        res["base_seed"] = cfg.model.base_seed
    judge = judge_of(cfg.eval)
    if judge is not None and any(t.spec.metric in JUDGED for t in tasks):
        res["judge"] = judge.describe()
    if method.joint:
        res["upper_bound"] = True
        res["note"] = "joint trains once on all tasks; its one evaluation fills every row"
    if not method.trains:
        res["note"] = "zero-shot does not train; the base model's evaluation fills every row"
    routed = [r for r in state["routing"] if r]
    if routed:
        res["routing"] = {
            "accuracy": [round(100 * a, 2) for a in routed[-1]],
            "per_step": [
                [round(100 * a, 2) if a is not None else None for a in r] for r in state["routing"]
            ],
            **method.report().get("routing", {}),
        }
    task_extra = state.get("task_extra") or {}
    if task_extra:  # rows follow accuracy_matrix (one evaluation fills all for joint/zero-shot)
        tag = "zero_shot" if not method.trains else ("step0" if method.joint else None)
        res["task_extra"] = {
            "zero_shot": task_extra.get("zero_shot", {}),
            "per_step": [task_extra.get(tag or f"step{k}", {}) for k in range(len(matrix))],
        }
    extra = {k: v for k, v in method.report().items() if k != "routing"}
    if extra:
        res["method_info"] = extra
    return res
