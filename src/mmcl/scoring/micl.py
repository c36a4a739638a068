"""MICL's scorers as MICL_TMLR's `train.py` computes them, and corrected variants.

QA: the prediction goes through the VQA normalisation (newlines and tabs to spaces, strip,
punctuation, then number words, articles and contractions); a reference goes through the
caption pre-processing (`pre_caption`) and the number/article/contraction step only, not the
punctuation step. Image QA scores min(1, matches / 3) over its references (0/1 with one);
audio and video QA is exact match. Captions: pycocoevalcap CIDEr-D of the raw prediction
against one reference passed through `pre_caption`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mmcl.scoring.registry import CORPUS_SCORERS, METRIC_NAMES, SCORERS, register

# The VQA evaluation's tables (VQA API; LAVIS `vqa_eval.py`, which MICL_TMLR uses).
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# Contractions written without their apostrophes get them back; most keys are the value with
# every apostrophe removed, the rest are listed as they are.
_REGULAR = (
    "ain't", "aren't", "can't", "could've", "couldn't", "didn't", "doesn't", "don't",
    "hadn't", "hasn't", "haven't", "he'd", "he's", "how'd", "how'll", "how's", "I'm", "I've",
    "isn't", "it'd", "it'll", "ma'am", "mightn't", "might've", "mustn't", "must've",
    "needn't", "not've", "o'clock", "oughtn't", "shan't", "should've", "shouldn't",
    "somebody'll", "somebody's", "someone'd", "someone'll", "someone's", "something'd",
    "something'll", "that's", "there'd", "there're", "there's", "they'd", "they'll",
    "they're", "they've", "'twas", "wasn't", "we've", "weren't", "what'll", "what're",
    "what's", "what've", "when's", "where'd", "where's", "where've", "who'd", "who'll",
    "who's", "who've", "why'll", "why're", "why's", "won't", "would've", "wouldn't", "y'all",
    "you'd", "you'll", "you're", "you've",
)  # fmt: skip
_IRREGULAR = {
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've", "hed've": "he'd've", "he'dve": "he'd've", "Id've": "I'd've",
    "I'dve": "I'd've", "itd've": "it'd've", "it'dve": "it'd've", "let's": "let's",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "somethingd've": "something'd've",
    "something'dve": "something'd've", "thered've": "there'd've", "there'dve": "there'd've",
    "theyd've": "they'd've", "they'dve": "they'd've", "wed've": "we'd've", "we'dve": "we'd've",
    "whod've": "who'd've", "who'dve": "who'd've", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd've": "you'd've", "you'dve": "you'd've",
}  # fmt: skip
CONTRACTIONS = {w.replace("'", ""): w for w in _REGULAR} | _IRREGULAR
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
               "@", "`", ",", "?", "!")  # fmt: skip
# The published pattern as written: its "(?!<=\d)" is a look-ahead, so every '.' not followed
# by a digit goes, after a digit too.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_CAPTION_PUNCT = re.compile(r"([.!\"()*#:;~])")
MAX_WORDS = 50  # the text processor's max_words (its default; MICL's config keeps it)


def process_punctuation(text: str) -> str:
    """VQA punctuation step: a mark next to a space (or any mark, when the text has a digit
    comma digit) is deleted, another becomes a space; then '.' not before a digit goes."""
    out = text
    digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The published call passes re.UNICODE where `count` goes: at most 32 periods are removed.
    return _PERIOD.sub("", out, count=int(re.UNICODE))


def process_digit_article(text: str) -> str:
    """VQA word step: lowercase, number words to digits, articles dropped, contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def pre_caption(caption: str, max_words: int = MAX_WORDS) -> str:
    """MICL's (LAVIS's) caption pre-processing: lowercase, .!"()*#:;~ to spaces, runs of
    spaces to one, stripped, at most `max_words` words."""
    text = _CAPTION_PUNCT.sub(" ", caption.lower())
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def normalise_answer(prediction: str) -> str:
    """The VQA normalisation of a prediction."""
    text = prediction.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def normalise_reference(reference: str) -> str:
    """A reference as MICL's test loader and `evaluate_qa` prepare it (no punctuation step)."""
    return process_digit_article(pre_caption(reference))


def vqa(prediction: str, references: Sequence[str]) -> float:
    """MICL image QA: min(1, matches / 3) over the references; 0/1 with a single one."""
    pred = normalise_answer(prediction)
    matches = sum(pred == normalise_reference(r) for r in references)
    return float(matches) if len(references) == 1 else min(1.0, matches / 3)


def exact(prediction: str, references: Sequence[str]) -> float:
    """MICL audio/video QA: the normalised prediction equals the reference (any of several)."""
    pred = normalise_answer(prediction)
    return float(any(pred == normalise_reference(r) for r in references))


def vqa_fixed(prediction: str, references: Sequence[str]) -> float:
    """`vqa` with references normalised as predictions are (so "t-shirt" can match), and full
    credit for a match when there are fewer than three references."""
    pred = normalise_answer(prediction)
    matches = sum(pred == normalise_answer(r) for r in references)
    return min(1.0, matches / 3) if len(references) >= 3 else float(matches > 0)


def exact_fixed(prediction: str, references: Sequence[str]) -> float:
    """`exact` with references normalised as predictions are."""
    pred = normalise_answer(prediction)
    return float(any(pred == normalise_answer(r) for r in references))


def cider_one_reference(
    predictions: list[str], references: list[list[str]]
) -> tuple[list[float], dict[str, float]]:
    """MICL's CIDEr-D: each raw prediction against its first reference after `pre_caption`
    (the published loader takes one caption per sample). Per-sample CIDEr-D / 10; task score
    CIDEr-D x 10 (0-100 like every task); `cider` in the extras is the paper's CIDEr x 100."""
    from pycocoevalcap.cider.cider import Cider

    if not predictions:
        return [], {"task_score": 0.0}
    gts = {i: [pre_caption(refs[0])] for i, refs in enumerate(references)}
    res = {i: [p] for i, p in enumerate(predictions)}
    cider, per_sample = Cider().compute_score(gts, res)
    return [float(c) / 10 for c in per_sample], {
        "cider": 100 * float(cider),
        "task_score": 10 * float(cider),
    }


for _name, _fn, _metric in (
    ("vqa", vqa, "vqa_score"),
    ("exact", exact, "exact_match"),
    ("vqa-fixed", vqa_fixed, "vqa_score"),
    ("exact-fixed", exact_fixed, "exact_match"),
):
    SCORERS[_name] = _fn
    METRIC_NAMES[_name] = _metric
CORPUS_SCORERS["cider-micl"] = cider_one_reference
METRIC_NAMES["cider-micl"] = "cider"
register(
    "vqa",
    "MICL image QA: VQA-normalised prediction vs pre_caption'd references, min(1, matches/3), "
    "0/1 with one reference",
)
register("exact", "MICL audio/video QA: VQA-normalised prediction equals a pre_caption'd reference")
register("vqa-fixed", "vqa with references normalised like predictions; one match of < 3 is 1")
register("exact-fixed", "exact with references normalised like predictions")
register(
    "cider-micl",
    "MICL captions: CIDEr-D of the raw prediction against its first reference after pre_caption",
)
