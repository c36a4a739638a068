"""The scorer tables every scorer registers into (mmcl.metrics' generic ones, mmcl.scoring's
published rules), and the record helpers the rules share. Imports nothing of the scorers, so
that they import it without a cycle; `mmcl.metrics` loads them all."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mmcl.data.records import MODALITIES, Record

Scorer = Callable[[str, Sequence[str]], float]
CorpusScorer = Callable[[list[str], list[list[str]]], tuple[list[float], dict[str, float]]]
SCORERS: dict[str, Scorer] = {}  # (prediction, references) -> [0, 1]
CORPUS_SCORERS: dict[str, CorpusScorer] = {}  # whole lists at once (CIDEr, MSVQA)
METRIC_NAMES: dict[str, str] = {}  # the name a results.json reports for each scorer


@dataclass(frozen=True)
class RecordScorer:
    """A per-sample rule on (prediction, test record) -> score in [0, 1].

    `needs(record)` lists the record fields the rule reads besides the answer (media keys such
    as `image` count as fields)."""

    score: Callable[[str, Record], float]
    needs: Callable[[Record], Sequence[str]] = lambda record: ()


RECORD_SCORERS: dict[str, RecordScorer] = {}
# One line per scorer name, for `mmcl list` and error messages; every scorer has one.
RULES: dict[str, str] = {
    "lenient": "mmcl's corrected mllm-cl-ai2d: lowercase, dots removed on both sides; a one-word "
    "truth must be a whole word of the prediction, a longer one a substring",
    "number": "the prediction must be just a number equal to a reference's",
    "substring": "lowercase, whitespace-normalised substring (mllm-cl-pvqa without the "
    "Unanswerable rule)",
    "compact-exact": "mmcl's corrected mllm-cl-finvis: lowercase equality with spaces and dots "
    "removed on both sides",
    "msvqa": "MSVQA: VQA score on questions, box F1 at IoU 0.5 on grounding samples",
    "cider": "mmcl's CIDEr-D: both sides lowercased without punctuation, every reference",
}


def register(name: str, rule: str, scorer: RecordScorer | None = None) -> None:
    """Name a rule (and register a record scorer, whose results.json metric is accuracy)."""
    RULES[name] = rule
    if scorer is not None:
        RECORD_SCORERS[name] = scorer
        METRIC_NAMES[name] = "accuracy"


def has_field(record: Record, key: str) -> bool:
    """True when a test record carries `key` (a media key or any extra field)."""
    return key in record.media if key in MODALITIES else key in record.meta


def missing_fields(metric: str, records: Sequence[Record], where: str) -> list[str]:
    """One problem per record that lacks a field the scorer `metric` reads."""
    scorer = RECORD_SCORERS.get(metric)
    if scorer is None:
        return []
    problems = []
    for r in records:
        lacking = [k for k in scorer.needs(r) if not has_field(r, k)]
        if lacking:
            problems.append(
                f"{where} record {r.id!r}: scorer {metric} needs field(s) {lacking}"
                f" ({RULES[metric]})"
            )
    return problems


def question_text(record: Record) -> str:
    """The question as the test file's `text` holds it (without mmcl's media placeholders)."""
    lines = record.prompt.split("\n")
    while lines and lines[0].strip() in {f"<{m}>" for m in MODALITIES}:
        lines.pop(0)
    return "\n".join(lines)
