"""A grid's numbers: per method the mean, spread and 95% interval of every continual metric over
its cells (seeds x task orders), per task too, and paired differences against a reference.

Everything is computed from the cells' results.json alone: a cell is identified by its seed and
its task order, which pair the cells of two methods; matrices of different orders are aligned
by task name. Intervals are percentile bootstraps of the mean over cells, with a fixed seed, so
the same cells always give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmcl.errors import MmclError
from mmcl.report import METRIC_KEYS, final_extras, mean_over_tasks

BOOTSTRAP_SAMPLES = 10_000
# Fewer paired cells establish no difference, whatever their interval: the bootstrap interval of
# two values is just their range.
MIN_CELLS_TO_ESTABLISH = 3
LOWER_IS_BETTER = {"forgetting"}


def bootstrap_interval(
    values: Sequence[float], level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (a point when there is one value)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(0)
    means = x[rng.integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, sample standard deviation (0 for one value) and the 95% bootstrap interval."""
    x = np.asarray(values, dtype=float)
    lo, hi = bootstrap_interval(x)
    return {
        "n": len(x),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
        "ci95": [lo, hi],
    }


def cell_key(res: dict[str, Any]) -> tuple[int, tuple[str, ...]]:
    """What pairs the cells of two methods: the seed and the task order."""
    return res["seed"], tuple(res["tasks"])


def task_scores(res: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per task name: its score right after it was learned, after the last step, zero-shot,
    and the routing accuracy after the last step for methods that route."""
    a = res["accuracy_matrix"]
    routing = (res.get("routing") or {}).get("accuracy")
    return {
        t: {
            "learned": a[i][i],
            "final": a[-1][i],
            "zero_shot": res["zero_shot"][i],
            **({"routing": routing[i]} if routing else {}),
        }
        for i, t in enumerate(res["tasks"])
    }


def aligned_matrix(res: dict[str, Any], tasks: Sequence[str]) -> list[list[float]]:
    """The accuracy matrix with rows and columns in the order `tasks`: row x is the evaluation
    right after x was learned, whichever step that was in this cell's order."""
    pos = {t: i for i, t in enumerate(res["tasks"])}
    a = res["accuracy_matrix"]
    return [[a[pos[x]][pos[y]] for y in tasks] for x in tasks]


def _check_tasks(results: list[dict[str, Any]], tasks: Sequence[str]) -> None:
    for r in results:
        if sorted(r["tasks"]) != sorted(tasks):
            raise MmclError(
                f"{r['method']} seed {r['seed']}: tasks {r['tasks']} are not an order of "
                f"{list(tasks)}; a grid's cells must share one task set"
            )


def _method_summary(cells: list[dict[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
    scores = [task_scores(r) for r in cells]
    matrices = np.array([aligned_matrix(r, tasks) for r in cells])
    kinds = [k for k in ("learned", "final", "routing") if all(k in s[tasks[0]] for s in scores)]
    # Scores beside the main one (grounding F1, BLEU-4, ...), after the last step, mean over tasks
    extras = [mean_over_tasks(final_extras(r)) for r in cells]
    extra_keys = sorted(set.intersection(*(set(e) for e in extras)))
    # What each cell keeps of the base's general skill after the last step (--general), in %
    retention = [(r.get("general") or {}).get("final_retention") for r in cells]
    return {
        "n": len(cells),
        "upper_bound": any(r.get("upper_bound", False) for r in cells),
        "general_retention": summarize([100 * v for v in retention])
        if all(v is not None for v in retention)
        else None,
        "metrics": {k: summarize([r["metrics"][k] for r in cells]) for k in METRIC_KEYS},
        "train_s": summarize([r["timing"]["train_s"] for r in cells]),
        "tasks": {t: {k: summarize([s[t][k] for s in scores]) for k in kinds} for t in tasks},
        "other_scores": {k: summarize([e[k] for e in extras]) for k in extra_keys},
        "mean_matrix": matrices.mean(axis=0).round(4).tolist(),
        "mean_zero_shot": [float(np.mean([s[t]["zero_shot"] for s in scores])) for t in tasks],
    }


def _paired(
    cells: dict[tuple, dict[str, Any]], ref: dict[tuple, dict[str, Any]], tasks: Sequence[str]
) -> dict[str, Any] | None:
    """Differences method - reference over the cells both have (same seed and order)."""
    keys = sorted(set(cells) & set(ref))
    if not keys:
        return None

    def diff(values: list[float], lower_is_better: bool) -> dict[str, Any]:
        s = summarize(values)
        lo, hi = s["ci95"]
        wins = sum(d < 0 if lower_is_better else d > 0 for d in values)
        established = len(values) >= MIN_CELLS_TO_ESTABLISH and (lo > 0 or hi < 0)
        return {**s, "wins": wins, "established": established}

    out: dict[str, Any] = {
        "n": len(keys),
        "metrics": {
            k: diff(
                [cells[c]["metrics"][k] - ref[c]["metrics"][k] for c in keys],
                k in LOWER_IS_BETTER,
            )
            for k in METRIC_KEYS
        },
    }
    finals = {c: task_scores(cells[c]) for c in keys}
    ref_finals = {c: task_scores(ref[c]) for c in keys}
    out["final"] = {
        t: diff([finals[c][t]["final"] - ref_finals[c][t]["final"] for c in keys], False)
        for t in tasks
    }
    return out


def aggregate(
    results: list[dict[str, Any]], tasks: Sequence[str], reference: str | None = None
) -> dict[str, Any]:
    """The grid's aggregate from its cells' results (any order of cells; methods keep the order
    in which they first appear). `tasks` orders the per-task columns."""
    if not results:
        raise MmclError("no finished cell to aggregate")
    _check_tasks(results, tasks)
    by_method: dict[str, dict[tuple, dict[str, Any]]] = {}
    for r in results:
        cells = by_method.setdefault(r["method"], {})
        if cell_key(r) in cells:
            raise MmclError(
                f"{r['method']}: two cells with seed {r['seed']} and order {r['tasks']}"
            )
        cells[cell_key(r)] = r
    if reference is not None and reference not in by_method:
        raise MmclError(
            f"reference method {reference!r} has no finished cell; methods: {list(by_method)}"
        )
    out: dict[str, Any] = {
        "tasks": list(tasks),
        "reference": reference,
        "methods": {
            m: _method_summary([cells[k] for k in sorted(cells)], tasks)
            for m, cells in by_method.items()
        },
        "paired": {},
    }
    if reference is not None:
        for m, cells in by_method.items():
            if m != reference:
                out["paired"][m] = _paired(cells, by_method[reference], tasks)
    return out
