"""Scores per question type, and the constant-answer baseline they must beat.

A task's score averages question types of very different chance levels (yes/no, a count, one
of 16 positions, boxes). A method that answers one type with its most common answer can look
competent; so every evaluation also scores each question type apart (record meta `qtype`; a
task without it is one type, `all`), and each task gets the constant-answer baseline of every
type: the most common training answer of that type, given to every test sample of it. A type
whose score is near its baseline has not been learned from the image.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from mmcl.data.records import Record
from mmcl.metrics import score_task

ALL = "all"
PREFIX = "qtype/"  # how per-type scores are named among a task's extra figures


def qtype(record: Record) -> str:
    return str(record.meta.get("qtype", ALL))


def _groups(records: Sequence[Record]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(qtype(r), []).append(i)
    return groups


def _score_by_type(
    metric: str,
    predictions: Sequence[str],
    records: Sequence[Record],
    groups: dict[str, list[int]],
) -> dict[str, float]:
    """The task's scorer applied to each question type's samples apart: {qtype: 0-100}."""
    out = {}
    for name, idx in sorted(groups.items()):
        recs = [records[i] for i in idx]
        refs = [list(r.references) for r in recs]
        out[name] = score_task(metric, [predictions[i] for i in idx], refs, recs)[1]
    return out


def qtype_scores(
    metric: str, predictions: Sequence[str], records: Sequence[Record]
) -> dict[str, float]:
    """Each question type's score {qtype: 0-100}; empty when the task has one type only (its
    score is the task score)."""
    groups = _groups(records)
    return _score_by_type(metric, predictions, records, groups) if len(groups) > 1 else {}


def constant_baseline(metric: str, train: Sequence[Record], test: Sequence[Record]) -> dict:
    """Per question type: the most common training answer of the type (ties: the first seen in
    training) and its score when given to every test sample of the type; `all` scores the
    task answered that way."""
    seen: dict[str, Counter] = {}
    for r in train:
        seen.setdefault(qtype(r), Counter())[r.turns[-1][1]] += 1
    everything = sum(seen.values(), Counter())
    groups = _groups(test)
    answers = {
        name: (seen.get(name) or everything or Counter([""])).most_common(1)[0][0]
        for name in groups
    }
    given = [answers[qtype(r)] for r in test]
    out: dict[str, Any] = {
        name: {"answer": answers[name], "score": round(score, 4)}
        for name, score in _score_by_type(metric, given, test, groups).items()
    }
    if len(out) > 1:
        score = score_task(metric, given, [list(r.references) for r in test], test)[1]
        out[ALL] = {"answer": None, "score": round(score, 4)}
    else:
        out[ALL] = out.pop(next(iter(out)))
    return out


def constant_row(res: dict[str, Any]) -> list[float] | None:
    """Per task of a results.json, the task score of its constant answers (None if absent)."""
    base = res.get("constant_baseline")
    return [base[t][ALL]["score"] for t in res["tasks"]] if base else None


def constant_extras(res: dict[str, Any]) -> dict[str, dict[str, float]]:
    """A results.json's constant-answer baselines as extra scores (`qtype/<type>`, per task),
    beside the methods' own per-type scores in reports. Empty for single-type tasks."""
    return {
        task: {f"{PREFIX}{name}": b["score"] for name, b in types.items() if name != ALL}
        for task, types in (res.get("constant_baseline") or {}).items()
        if len(types) > 1
    }
