import pytest

from mmcl.errors import MmclError
from mmcl.metrics import (
    SCORERS,
    bwt,
    continual_metrics,
    forgetting,
    fwt,
    lenient_match,
    maa,
    mfn,
    mft,
    number_match,
    score_task,
    substring_match,
)

A = [[80.0, 10.0, 5.0], [60.0, 90.0, 20.0], [50.0, 70.0, 85.0]]
Z = [5.0, 10.0, 15.0]


def test_continual_metrics_by_hand():
    assert mft(A) == pytest.approx((80 + 90 + 85) / 3)
    assert mfn(A) == pytest.approx((50 + 70 + 85) / 3)
    assert maa(A) == pytest.approx((80 + (60 + 90) / 2 + (50 + 70 + 85) / 3) / 3)
    assert bwt(A) == pytest.approx(((50 - 80) + (70 - 90)) / 2)
    assert fwt(A, Z) == pytest.approx(((10 - 10) + (20 - 15)) / 2)
    # task 0: best before the end is max(80, 60) = 80 -> 80-50; task 1: 90 -> 90-70
    assert forgetting(A) == pytest.approx((30 + 20) / 2)
    assert set(continual_metrics(A, Z)) == {"mft", "mfn", "maa", "bwt", "fwt", "forgetting"}


def test_single_task_and_bad_shape():
    assert bwt([[70.0]]) == 0.0 and forgetting([[70.0]]) == 0.0 and fwt([[70.0]], [0.0]) == 0.0
    with pytest.raises(ValueError):
        mft([[1.0, 2.0]])


def test_lenient_is_the_corrected_rs_ad_rule():
    assert lenient_match("The answer is Yes.", ["yes"]) == 1.0
    assert lenient_match("eyes are blue", ["yes"]) == 0.0  # one word must be bounded
    assert lenient_match("yes", ["Yes."]) == 1.0
    assert lenient_match("click K now", ["click k"]) == 1.0  # multi-word: substring
    assert lenient_match("click", ["click k"]) == 0.0
    assert lenient_match("KTP", ["ktp"]) == 1.0
    assert lenient_match("ktpx", ["ktp"]) == 1.0  # single-word prediction: substring


def test_number_exact_and_substring():
    assert number_match("7", ["7"]) == 1.0
    assert number_match("7.", ["7"]) == 1.0
    assert number_match("17", ["7"]) == 0.0
    assert number_match("the digit 7", ["7"]) == 0.0
    assert SCORERS["exact"]("A red Circle.", ["a red circle"]) == 1.0
    assert SCORERS["exact"]("a red circle here", ["a red circle"]) == 0.0
    assert substring_match("I see a red circle here", ["Red circle"]) == 1.0


def test_score_task_counts_every_sample():
    scores, total, _ = score_task("number", ["1", "2", "x"], [["1"], ["3"], ["x"]])
    assert scores == [1.0, 0.0, 0.0] and total == pytest.approx(100 / 3)
    with pytest.raises(MmclError):
        score_task("number", ["1"], [["1"], ["2"]])
    with pytest.raises(MmclError):
        score_task("nope", ["1"], [["1"]])
