"""Metrics as pure functions: per-sample scorers, and continual metrics on the accuracy matrix.

Scorers take (prediction, references) and return a score in [0, 1]; corpus-level scorers
(CIDEr, MSVQA) take whole lists; the published rules of mmcl.scoring also read the test
record. `score_task` applies a task's metric to all its samples.
Continual metrics follow DESIGN.md, with A[k][i] the score (0-100) on task i after step k.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import mmcl.scoring  # noqa: F401  (the published rules register into the same tables)
from mmcl.errors import MmclError
from mmcl.scoring.registry import CORPUS_SCORERS, METRIC_NAMES, RECORD_SCORERS, SCORERS

if TYPE_CHECKING:
    from mmcl.data.records import Record


def _norm(text: str) -> str:
    return " ".join(text.lower().strip().split())


def _drop_dots(text: str) -> str:
    """Dots removed, except a decimal point ("U.S." -> "US", "3.5" stays)."""
    return re.sub(r"\.(?!\d)|(?<!\d)\.", "", text)


def lenient_match(prediction: str, references: Sequence[str]) -> float:
    """mmcl's corrected variant of MLLM-CL's RS/AD rule (`mllm-cl-ai2d`): lowercased, spaces
    normalised, dots (not decimal points) removed on both sides; a multi-word truth must be a
    substring of the prediction; a one-word truth must be a whole word of a several-word
    prediction (bounded on both sides by a space, ',' or an end), else a substring."""
    pred = _drop_dots(_norm(prediction))
    for ref in references:
        truth = _drop_dots(_norm(ref))
        if not truth:
            continue
        if len(truth.split()) > 1:
            if truth in pred:
                return 1.0
            continue
        if len(pred.split()) > 1:
            if re.search(rf"(?:^|[\s,]){re.escape(truth)}(?=$|[\s,])", pred):
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


def substring_match(prediction: str, references: Sequence[str]) -> float:
    pred = _norm(prediction)
    return float(any(_norm(r) in pred for r in references if _norm(r)))


def compact_exact_match(prediction: str, references: Sequence[str]) -> float:
    """mmcl's corrected variant of MLLM-CL's Fin rule (`mllm-cl-finvis`): lowercased equality
    with every space and dot removed from both sides."""

    def squash(text: str) -> str:
        return re.sub(r"[\s.]", "", text.lower())

    pred = squash(prediction)
    return float(any(pred == squash(r) for r in references if squash(r)))


SCORERS.update(
    {
        "lenient": lenient_match,
        "number": number_match,
        "substring": substring_match,
        "compact-exact": compact_exact_match,
    }
)
METRIC_NAMES.update(
    {
        "lenient": "accuracy",
        "number": "accuracy",
        "substring": "accuracy",
        "compact-exact": "exact_match",
    }
)


def score_task(
    metric: str,
    predictions: list[str],
    references: list[list[str]],
    records: Sequence[Record] | None = None,
) -> tuple[list[float], float, dict[str, float]]:
    """Score every sample; return (per-sample scores, task score 0-100, extra corpus metrics).
    A published rule that reads test-record fields (mmcl.scoring) needs the `records`."""
    if len(predictions) != len(references):
        raise MmclError(f"{len(predictions)} predictions for {len(references)} samples")
    extra: dict[str, float] = {}
    if metric in CORPUS_SCORERS:
        scores, extra = CORPUS_SCORERS[metric](predictions, references)
        # A corpus scorer may define the task score itself (msvqa: the VQA score, F1 aside).
        if "task_score" in extra:
            extra = dict(extra)
            return scores, extra.pop("task_score"), extra
    elif metric in SCORERS:
        scores = [SCORERS[metric](p, r) for p, r in zip(predictions, references, strict=True)]
    elif metric in RECORD_SCORERS:
        if records is None or len(records) != len(predictions):
            raise MmclError(f"scorer {metric} reads the test records; pass one per prediction")
        rule = RECORD_SCORERS[metric].score
        scores = [rule(p, r) for p, r in zip(predictions, records, strict=True)]
    else:
        known = sorted(SCORERS | CORPUS_SCORERS | RECORD_SCORERS)
        raise MmclError(f"unknown metric {metric!r}; known: {known}")
    return scores, 100.0 * sum(scores) / max(1, len(scores)), extra


# --- multi-scenario VQA with grounding (MSVQA) ------------------------------------------------
Box = tuple[float, float, float, float]  # x0, y0, x1, y1
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = rf"\[{_NUM},{_NUM},{_NUM},{_NUM}\]"


def format_boxes(boxes: Sequence[Box]) -> str:
    """Boxes as answer text: "[x0,y0,x1,y1]", several separated by a space (short in tokens)."""
    return " ".join("[" + ",".join(f"{v:g}" for v in b) + "]" for b in boxes)


def parse_boxes(text: str) -> list[Box]:
    """Every "[x0, y0, x1, y1]" in a text (spaces optional), in order of appearance."""
    return [tuple(float(v) for v in m.groups()) for m in re.finditer(_BOX, text)]


def is_box_answer(text: str) -> bool:
    """True when a reference is nothing but one or more boxes (a grounding sample)."""
    return bool(parse_boxes(text)) and not re.sub(_BOX, "", text).strip(" ,;")


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes; degenerate boxes have area 0."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih

    def area(x: Box) -> float:
        return max(0.0, x[2] - x[0]) * max(0.0, x[3] - x[1])

    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def box_hits(predicted: Sequence[Box], reference: Sequence[Box], threshold: float = 0.5) -> int:
    """Predicted boxes matched one-to-one to reference boxes at IoU >= threshold (greedy, by
    decreasing IoU)."""
    pairs = sorted(
        ((box_iou(p, r), i, j) for i, p in enumerate(predicted) for j, r in enumerate(reference)),
        reverse=True,
    )
    used_p: set[int] = set()
    used_r: set[int] = set()
    for iou, i, j in pairs:
        if iou < threshold:
            break
        if i not in used_p and j not in used_r:
            used_p.add(i)
            used_r.add(j)
    return len(used_p)


def detection_f1(hits: int, n_predicted: int, n_reference: int) -> tuple[float, float, float]:
    """(precision, recall, F1) of box hits; 0 where a denominator is 0."""
    p = hits / n_predicted if n_predicted else 0.0
    r = hits / n_reference if n_reference else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def msvqa_scores(
    predictions: list[str], references: list[list[str]]
) -> tuple[list[float], dict[str, float]]:
    """MSVQA scoring: a sample whose reference is boxes is grounding (per-sample score: its box
    F1 at IoU >= 0.5; the task's grounding F1 pools hits over all its boxes), any other sample
    is a question (MICL's `vqa` rule). The task score is the VQA score (grounding F1 if there
    are no questions); all figures 0-100."""
    from mmcl.scoring.micl import vqa as vqa_rule

    scores: list[float] = []
    hits = n_pred = n_ref = 0
    vqa: list[float] = []
    for pred, refs in zip(predictions, references, strict=True):
        if refs and is_box_answer(refs[0]):
            boxes, truth = parse_boxes(pred), parse_boxes(refs[0])
            h = box_hits(boxes, truth)
            hits, n_pred, n_ref = hits + h, n_pred + len(boxes), n_ref + len(truth)
            scores.append(detection_f1(h, len(boxes), len(truth))[2])
        else:
            scores.append(vqa_rule(pred, refs))
            vqa.append(scores[-1])
    precision, recall, f1 = detection_f1(hits, n_pred, n_ref)
    extra = {
        "vqa": 100 * sum(vqa) / len(vqa) if vqa else 0.0,
        "grounding_f1": 100 * f1,
        "grounding_precision": 100 * precision,
        "grounding_recall": 100 * recall,
        "vqa_samples": float(len(vqa)),
        "grounding_samples": float(len(scores) - len(vqa)),
    }
    extra["task_score"] = extra["vqa"] if vqa else extra["grounding_f1"]
    return scores, extra


CORPUS_SCORERS["msvqa"] = msvqa_scores
METRIC_NAMES["msvqa"] = "vqa_score"


# --- captioning (CIDEr-D, BLEU-4, ROUGE-L through pycocoevalcap) -------------------------------
def caption_tokens(text: str) -> str:
    """COCO-style caption normalisation in Python (pycocoevalcap's PTBTokenizer needs Java):
    lowercased, punctuation removed, words joined by single spaces."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def caption_scores(
    predictions: list[str], references: list[list[str]]
) -> tuple[list[float], dict[str, float]]:
    """CIDEr-D over the corpus (its idf comes from these references), BLEU-4 and ROUGE-L beside
    it. CIDEr-D lies in [0, 10]; the per-sample score is CIDEr-D / 10 and the task score
    CIDEr-D x 10, both on the 0-1 / 0-100 scales of every other scorer. `cider`, `bleu4` and
    `rouge_l` in the extra figures are the conventional x100 values."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [caption_tokens(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [caption_tokens(p)] for i, p in enumerate(predictions)}
    if not gts:
        return [], {"task_score": 0.0}
    cider, per_sample = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    extra = {
        "cider": 100 * float(cider),
        "bleu4": 100 * float(bleu[3]),
        "rouge_l": 100 * float(rouge),
        "task_score": 10 * float(cider),
    }
    return [float(c) / 10 for c in per_sample], extra


CORPUS_SCORERS["cider"] = caption_scores
METRIC_NAMES["cider"] = "cider"


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
