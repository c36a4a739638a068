"""Metrics as pure functions: per-sample scorers, and continual metrics on the accuracy matrix.

Scorers take (prediction, references) and return a score in [0, 1]; corpus-level scorers
(CIDEr) take whole lists. `score_task` applies a task's metric to all its samples.
Continual metrics follow DESIGN.md, with A[k][i] the score (0-100) on task i after step k.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from mmcl.errors import MmclError


def _norm(text: str) -> str:
    return " ".join(text.lower().strip().split())


def lenient_match(prediction: str, references: Sequence[str]) -> float:
    """MLLM-CL's lenient matching (RS/AD scorer): lowercased; a multi-word truth must be a
    substring of the prediction; a one-word truth (dots removed) must appear bounded by a
    space, '.' or ',' when the prediction has several words, else as a substring."""
    pred = _norm(prediction)
    for ref in references:
        truth = _norm(ref)
        if not truth:
            continue
        if len(truth.split()) > 1:
            if truth in pred:
                return 1.0
            continue
        truth = truth.replace(".", "")
        if len(pred.split()) > 1:
            if re.search(rf"(?:^|[\s.,]){re.escape(truth)}(?=$|[\s.,])", pred):
                return 1.0
        elif truth in pred:
            return 1.0
    return 0.0


def _number(text: str) -> float | None:
    m = re.search(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    return float(m.group()) if m else None


def number_match(prediction: str, references: Sequence[str]) -> float:
    """Exact numeric match: the answer must be just the number (surrounding words fail)."""
    pred = _norm(prediction).rstrip(".")
    if not re.fullmatch(r"-?\d+(?:\.\d+)?", pred):
        return 0.0
    return float(any(_number(r) == float(pred) for r in references))


def exact_match(prediction: str, references: Sequence[str]) -> float:
    pred = _norm(prediction).rstrip(".")
    return float(any(pred == _norm(r).rstrip(".") for r in references))


def substring_match(prediction: str, references: Sequence[str]) -> float:
    pred = _norm(prediction)
    return float(any(_norm(r) in pred for r in references if _norm(r)))


Scorer = Callable[[str, Sequence[str]], float]
SCORERS: dict[str, Scorer] = {
    "lenient": lenient_match,
    "number": number_match,
    "exact": exact_match,
    "substring": substring_match,
}
# The name a results.json reports for each scorer.
METRIC_NAMES = {
    "lenient": "accuracy",
    "number": "accuracy",
    "exact": "exact_match",
    "substring": "accuracy",
}
CorpusScorer = Callable[[list[str], list[list[str]]], tuple[list[float], dict[str, float]]]
CORPUS_SCORERS: dict[str, CorpusScorer] = {}


def score_task(
    metric: str, predictions: list[str], references: list[list[str]]
) -> tuple[list[float], float, dict[str, float]]:
    """Score every sample; return (per-sample scores, task score 0-100, extra corpus metrics)."""
    if len(predictions) != len(references):
        raise MmclError(f"{len(predictions)} predictions for {len(references)} samples")
    if metric in CORPUS_SCORERS:
        scores, extra = CORPUS_SCORERS[metric](predictions, references)
    elif metric in SCORERS:
        scores, extra = (
            [SCORERS[metric](p, r) for p, r in zip(predictions, references, strict=True)],
            {},
        )
    else:
        raise MmclError(f"unknown metric {metric!r}; known: {sorted(SCORERS | CORPUS_SCORERS)}")
    return scores, 100.0 * sum(scores) / max(1, len(scores)), extra


# --- continual metrics on the accuracy matrix -------------------------------------------------
Matrix = Sequence[Sequence[float]]


def _check(a: Matrix) -> int:
    t = len(a)
    if t == 0 or any(len(row) != t for row in a):
        raise ValueError("the accuracy matrix must be T x T with T >= 1")
    return t


def mft(a: Matrix) -> float:
    """Mean fine-tune accuracy: each task right after it was learned."""
    t = _check(a)
    return sum(a[i][i] for i in range(t)) / t


def mfn(a: Matrix) -> float:
    """Mean final accuracy: every task after the last step."""
    t = _check(a)
    return sum(a[-1]) / t


def maa(a: Matrix) -> float:
    """Mean average accuracy: over steps, the mean over the tasks seen so far."""
    t = _check(a)
    return sum(sum(a[k][: k + 1]) / (k + 1) for k in range(t)) / t


def bwt(a: Matrix) -> float:
    """Backward transfer: mean change on earlier tasks between learning them and the end."""
    t = _check(a)
    return sum(a[-1][i] - a[i][i] for i in range(t - 1)) / (t - 1) if t > 1 else 0.0


def fwt(a: Matrix, zero_shot: Sequence[float]) -> float:
    """Forward transfer: score on a task just before learning it, against the base model."""
    t = _check(a)
    return sum(a[i - 1][i] - zero_shot[i] for i in range(1, t)) / (t - 1) if t > 1 else 0.0


def forgetting(a: Matrix) -> float:
    """Mean drop from each earlier task's best score (before the last step) to its final one."""
    t = _check(a)
    if t == 1:
        return 0.0
    return sum(max(a[k][i] for k in range(i, t - 1)) - a[-1][i] for i in range(t - 1)) / (t - 1)


def continual_metrics(a: Matrix, zero_shot: Sequence[float]) -> dict[str, float]:
    return {
        "mft": mft(a),
        "mfn": mfn(a),
        "maa": maa(a),
        "bwt": bwt(a),
        "fwt": fwt(a, zero_shot),
        "forgetting": forgetting(a),
    }
