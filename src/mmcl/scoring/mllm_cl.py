"""MLLM-CL's scorers as its published evaluation scripts compute them (ETrain/Eval/LLaVA/CoIN/).

One scorer per script, named after it; REFERENCES.md says which task each script scores.
The scripts read one `answer` string per record; with a list of references, a sample scores
its best reference. In ai2d, pvqa, sci and finvis a prediction containing "Unanswerable"
counts as wrong (the scripts skip it but keep it in the denominator).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from mmcl.data.records import Record
from mmcl.scoring.registry import RecordScorer, question_text, register

UNANSWERABLE = "Unanswerable"
# eval_sci.py: images whose file name starts with one of these are scored by exact equality.
SCI_EXACT_SOURCES = frozenset({"AI2D", "TQA", "VQA", "SciVerse"})
HMER = "Handwritten Mathematical Expression Recognition"


def _best(rule: Callable[[str], float], references: Sequence[str]) -> float:
    return max((rule(r) for r in references), default=0.0)


def ai2d(prediction: str, references: Sequence[str]) -> float:
    """eval_ai2d.py (RS, AD): lowercase, nothing stripped. A truth with a space must be a
    substring; else its dots are removed (from the truth only) and, when the prediction has
    a space, it must appear preceded by a space or followed by a space, '.' or ','; a
    prediction without a space needs only contain it."""
    if UNANSWERABLE in prediction:
        return 0.0
    pred = prediction.lower()

    def one(truth: str) -> float:
        gt = truth.lower()
        if " " in gt:
            return float(gt in pred)
        gt = gt.replace(".", "")
        if " " in pred:
            return float(any(s in pred for s in (" " + gt, gt + " ", gt + ".", gt + ",")))
        return float(gt in pred)

    return _best(one, references)


def pvqa(prediction: str, references: Sequence[str]) -> float:
    """eval_pvqa.py (Med): the lowercased truth is a substring of the lowercased prediction."""
    if UNANSWERABLE in prediction:
        return 0.0
    return _best(lambda t: float(t.lower() in prediction.lower()), references)


def finvis(prediction: str, references: Sequence[str]) -> float:
    """eval_finvis.py (Fin): the prediction, lowercased with spaces and dots removed, equals
    the lowercased truth (whose own spaces and dots stay: such a truth never matches)."""
    if UNANSWERABLE in prediction:
        return 0.0
    pred = prediction.lower().replace(" ", "").replace(".", "")
    return _best(lambda t: float(pred == t.lower()), references)


def sat(prediction: str, references: Sequence[str]) -> float:
    """eval_sat.py (VP, counting): both sides lowercased, stripped, with spaces, newlines and
    dots removed; the truth must be a substring."""

    def squash(text: str) -> str:
        return text.lower().strip().replace(" ", "").replace("\n", "").replace(".", "")

    pred = squash(prediction)
    return _best(lambda t: float(squash(t) in pred), references)


def ocr(prediction: str, record: Record) -> float:
    """eval_ocr.py (OCRBench): a truth of the list is a substring of the prediction; both
    lowercased and stripped, newlines removed; for the "Handwritten Mathematical Expression
    Recognition" category (`answer_type`) case kept and spaces removed too."""
    if record.meta["answer_type"] == HMER:

        def squash(text: str) -> str:
            return text.strip().replace(" ", "").replace("\n", "")
    else:

        def squash(text: str) -> str:
            return text.lower().strip().replace("\n", "")

    pred = squash(prediction)
    return _best(lambda t: float(squash(t) in pred), record.references)


def _sci_source(record: Record) -> str:
    return Path(record.media["image"][0]).name.split("_")[0]


def sci(prediction: str, record: Record) -> float:
    """eval_sci.py (Sci), by the image's file-name prefix: AI2D/TQA/VQA/SciVerse images need
    the lowercased prediction to equal the lowercased truth (nothing stripped); other (MapQA)
    images: for a "Which states" question, the share of the truth's comma-separated items
    found among the prediction's (items not stripped); else the truth must be a substring."""
    if UNANSWERABLE in prediction:
        return 0.0
    pred = prediction.lower()
    if _sci_source(record) in SCI_EXACT_SOURCES:
        return _best(lambda t: float(pred == t.lower()), record.references)
    if "Which states" in question_text(record):
        items = pred.split(",")
        return _best(
            lambda t: sum(g in items for g in t.lower().split(",")) / len(t.split(",")),
            record.references,
        )
    return _best(lambda t: float(t.lower() in pred), record.references)


def _clean(text: str) -> str:
    """Lowercase, stripped of surrounding spaces, brackets and end punctuation."""
    return re.sub(r"^[\s(\[]+|[\s)\].,;:!]+$", "", text.lower())


def sci_fixed(prediction: str, record: Record) -> float:
    """mllm-cl-sci with the quirks fixed: "(A)", "A." and " a" equal "A"; MapQA items are
    stripped and counted once."""
    if UNANSWERABLE in prediction:
        return 0.0
    pred = _clean(prediction)
    if _sci_source(record) in SCI_EXACT_SOURCES:
        return _best(lambda t: float(pred == _clean(t)), record.references)
    if "Which states" in question_text(record):
        items = {_clean(p) for p in pred.split(",")}

        def share(truth: str) -> float:
            wanted = {_clean(g) for g in truth.split(",")}
            return len(wanted & items) / len(wanted)

        return _best(share, record.references)
    return _best(lambda t: float(_clean(t) in pred), record.references)


def _on_references(rule: Callable[[str, Sequence[str]], float]) -> RecordScorer:
    return RecordScorer(lambda prediction, record: rule(prediction, record.references))


register(
    "mllm-cl-ai2d",
    "MLLM-CL RS/AD: lowercase; a one-word truth (dots removed from it only) bounded by a space "
    "on one side or followed by '.'/',', a longer truth a substring",
    _on_references(ai2d),
)
register(
    "mllm-cl-pvqa",
    "MLLM-CL Med: lowercase substring; 'Unanswerable' is wrong",
    _on_references(pvqa),
)
register(
    "mllm-cl-finvis",
    "MLLM-CL Fin: prediction lowercased without spaces/dots equals the lowercased truth",
    _on_references(finvis),
)
register(
    "mllm-cl-sat",
    "MLLM-CL VP: both sides lowercased without spaces, newlines and dots; substring",
    _on_references(sat),
)
register(
    "mllm-cl-ocr",
    "MLLM-CL OCR: lowercase substring of any truth; the HMER category (answer_type) "
    "case-sensitive without spaces",
    RecordScorer(ocr, lambda record: ("answer_type",)),
)
register(
    "mllm-cl-sci",
    "MLLM-CL Sci, by image source: AI2D/TQA/VQA/SciVerse exact lowercase equality; MapQA "
    "'Which states' share of comma items; other MapQA substring",
    RecordScorer(sci, lambda record: ("image",)),
)
register(
    "mllm-cl-sci-fixed",
    "mllm-cl-sci with answers stripped of brackets, spaces and end punctuation, items once",
    RecordScorer(sci_fixed, lambda record: ("image",)),
)
