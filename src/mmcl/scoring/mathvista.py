"""MLLM-CL's math scorer (eval_math.py, MathVista's rule from VLMEvalKit) without a GPT judge.

The published pipeline: if the raw prediction already passes the comparison ("prefetch"),
it is scored as is; otherwise a GPT judge extracts the answer from it and the extracted
answer is compared. The comparison (`post_check`): a multiple-choice answer is mapped to an
option letter (a lone letter among the words, else the one choice whose text it contains)
and must equal `answer_option`; an `integer` / `float` answer must equal the truth after
Python's `int()` / `float()` of both; a `text` or `list` answer never matches (the published
code compares the truth with the string "None" there). `mllm-cl-math-fixed` compares those
as lowercase stripped strings and parsed lists.

Here a deterministic extractor plays the judge (`extract_answer`); `Judge` (judge.py) can
take its place.
"""

from __future__ import annotations

import ast
import re

from mmcl.data.records import Record
from mmcl.errors import MmclError
from mmcl.scoring.registry import RecordScorer, register

# VLMEvalKit's refusals, which map to the non-option "Z".
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_OPTION_MARKS = ".()[],:;!*#{}"
_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"


def choices_of(record: Record) -> dict[str, str]:
    """The options {A: text, B: ...} from `choices` (a list, or its Python text as in the
    published TSV)."""
    raw = record.meta["choices"]
    if isinstance(raw, str):
        try:
            raw = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise MmclError(
                f"record {record.id!r}: 'choices' is not a list: {raw[:80]!r}"
            ) from None
    if not isinstance(raw, list):
        raise MmclError(f"record {record.id!r}: 'choices' must be a list, got {raw!r}")
    return {chr(65 + i): str(c) for i, c in enumerate(raw)}


def infer_option(answer: str, choices: dict[str, str]) -> str | None:
    """The option letter an answer gives (VLMEvalKit's `can_infer`): exactly one option letter
    among its words (brackets and marks split words), "Z" for a refusal, else the one option
    whose text the lowercased answer contains; None when it stays ambiguous."""
    if "Failed to obtain answer via API" in answer:
        return None
    if any(r in answer for r in REFUSALS):
        return "Z"
    words = answer
    for c in _OPTION_MARKS:
        words = words.replace(c, " ")
    split = words.split()
    hits = [c for c in choices if c in split]
    if len(hits) == 1:
        return hits[0]
    if not hits and "Z" in split:
        return "Z"
    lowered = answer.lower()
    by_text = [k for k, v in choices.items() if v.lower() in lowered]
    return by_text[0] if len(by_text) == 1 else None


def post_check(response: str, record: Record, fixed: bool = False) -> bool:
    """The published comparison of an (extracted) answer with the record's truth."""
    meta = record.meta
    if meta["question_type"] == "multi_choice":
        return infer_option(response, choices_of(record)) == meta["answer_option"]
    kind, truth = meta["answer_type"], str(record.references[0])
    try:
        if kind == "integer":
            return int(response) == int(truth)
        if kind == "float":
            return float(response) == float(truth)
    except ValueError:
        return False
    if not fixed:
        return truth == "None"  # the published code compares the truth with str(None)
    if kind == "list":
        try:
            return ast.literal_eval(response.strip()) == ast.literal_eval(truth)
        except (ValueError, SyntaxError):
            return False
    return _plain(response) == _plain(truth)


def _plain(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .")


def extract_answer(prediction: str, record: Record) -> str:
    """A deterministic stand-in for the judge: the answer a response gives, in the form the
    comparison reads (an option letter, a bare number, a list, or the text)."""
    text = prediction.strip()
    meta = record.meta
    stated = re.search(r"answer\s*(?:is|:)\s*(.+)", text, re.IGNORECASE)
    tail = stated.group(1).strip() if stated else text
    if meta["question_type"] == "multi_choice":
        choices = choices_of(record)
        for candidate in (tail, text):
            letter = infer_option(candidate, choices)
            if letter is not None:
                return letter
        return text
    kind = meta["answer_type"]
    if kind in ("integer", "float"):
        numbers = re.findall(_NUMBER, tail)
        if not numbers:
            return text
        # the first number after "answer is", else the last one of the response
        value = (numbers[0] if stated else numbers[-1]).replace(",", "")
        if kind == "integer" and re.fullmatch(r"-?\d+\.0*", value):
            value = value.split(".")[0]  # "14.0" is the integer 14, as a judge would write it
        return value
    if kind == "list":
        lists = re.findall(r"\[[^\[\]]*\]", tail)
        return lists[-1] if lists else text
    return tail.rstrip(".")


def prefetch_passes(prediction: str, record: Record) -> bool:
    """The published prefetch: the raw prediction passes the comparison without a judge."""
    return post_check(prediction, record)


def math(prediction: str, record: Record) -> float:
    """mllm-cl-math: the raw prediction if it passes, else the extracted answer, compared."""
    if prefetch_passes(prediction, record):
        return 1.0
    return float(post_check(extract_answer(prediction, record), record))


def math_fixed(prediction: str, record: Record) -> float:
    """mllm-cl-math with text and list answers compared (see the module docstring)."""
    if post_check(prediction, record, fixed=True):
        return 1.0
    return float(post_check(extract_answer(prediction, record), record, fixed=True))


def needs(record: Record) -> tuple[str, ...]:
    """MathVista's fields: the question type, the answer type, and for multiple choice the
    choices and the right option's letter."""
    if record.meta.get("question_type") == "multi_choice":
        return ("question_type", "choices", "answer_option")
    return ("question_type", "answer_type")


register(
    "mllm-cl-math",
    "MLLM-CL math (MathVista): answer extracted (deterministic, or a judge), then option "
    "letter or int()/float() equality; text/list answers never match",
    RecordScorer(math, needs),
)
register(
    "mllm-cl-math-fixed",
    "mllm-cl-math with text answers compared as lowercase strings and list answers as lists",
    RecordScorer(math_fixed, needs),
)
