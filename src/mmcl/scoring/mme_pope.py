"""General-ability benchmarks scored by their published rules: POPE (its evaluate.py, as
LLaVA's eval_pope.py copies it) and MME (its eval_tool/calculation.py, per question; the
per-image accuracy+ and the subtask sums are in mmcl.general)."""

from __future__ import annotations

from collections.abc import Sequence

from mmcl.errors import MmclError
from mmcl.scoring.registry import CORPUS_SCORERS, METRIC_NAMES, SCORERS, register


def _yes_no_truth(reference: str, where: str) -> str:
    truth = reference.strip().lower()
    if truth not in ("yes", "no"):
        raise MmclError(f"{where}: the reference must be yes or no, got {reference!r}")
    return truth


def pope_answer(prediction: str) -> str:
    """POPE's reading of an answer: its first sentence, commas removed, is "no" when one of its
    space-separated words is `No`, `not` or `no` (case as written), else "yes"."""
    words = prediction.split(".")[0].replace(",", "").split(" ")
    return "no" if {"No", "not", "no"} & set(words) else "yes"


def pope_scores(
    predictions: list[str], references: list[list[str]]
) -> tuple[list[float], dict[str, float]]:
    """POPE: accuracy, precision, recall and F1 of "yes" (the positive class) and the share of
    "yes" answers, all 0-100; a precision or recall with no case to count is 0. The task score
    is the accuracy: a model that says yes to everything keeps an F1 of 66.7 on POPE's balanced
    questions, and yet knows nothing."""
    said = [pope_answer(p) for p in predictions]
    truth = [_yes_no_truth(r[0], f"sample {i}") for i, r in enumerate(references)]
    tp = sum(s == t == "yes" for s, t in zip(said, truth, strict=True))
    fp = sum(s == "yes" != t for s, t in zip(said, truth, strict=True))
    fn = sum(s == "no" != t for s, t in zip(said, truth, strict=True))
    scores = [float(s == t) for s, t in zip(said, truth, strict=True)]
    n = max(1, len(scores))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    extra = {
        "accuracy": 100 * sum(scores) / n,
        "precision": 100 * precision,
        "recall": 100 * recall,
        "f1": 100 * f1,
        "yes_ratio": 100 * said.count("yes") / n,
    }
    return scores, {**extra, "task_score": extra["accuracy"]}


def mme_answer(prediction: str) -> str:
    """MME's reading of an answer (eval_tool/calculation.py): lowercased; "yes" or "no" as it
    stands, else whichever of them its first four characters hold (yes first), else "other"."""
    pred = prediction.lower()
    if pred in ("yes", "no"):
        return pred
    return "yes" if "yes" in pred[:4] else "no" if "no" in pred[:4] else "other"


def mme_match(prediction: str, references: Sequence[str]) -> float:
    """One MME question: 1 when MME's reading of the answer is the reference (Yes/No)."""
    return float(mme_answer(prediction) == _yes_no_truth(references[0], "MME question"))


CORPUS_SCORERS["pope"] = pope_scores
METRIC_NAMES["pope"] = "accuracy"
SCORERS["mme"] = mme_match
METRIC_NAMES["mme"] = "accuracy"
register(
    "pope",
    "POPE: a first sentence with the word No, no or not is no, any other answer yes; accuracy "
    "(the score), precision, recall, F1 and yes-ratio",
)
register(
    "mme",
    "MME, per question: lowercased yes or no, else the one of them in the first four characters, "
    "else wrong",
)
