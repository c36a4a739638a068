"""Per-question-type scores and the constant-answer baseline, worked out by hand."""

from __future__ import annotations

import pytest

from mmcl.data.records import Record
from mmcl.question_types import constant_baseline, constant_extras, constant_row, qtype_scores


def rec(i: int, answer: str, qtype: str | None) -> Record:
    meta = {"qtype": qtype} if qtype else {}
    return Record(f"r{i}", (("<image>\nq?", answer),), {}, (answer,), meta)


TRAIN = [
    rec(0, "yes", "existence"),
    rec(1, "no", "existence"),
    rec(2, "no", "existence"),
    rec(3, "2", "counting"),
    rec(4, "1", "counting"),
    rec(5, "1", "counting"),
]
TEST = [
    rec(10, "no", "existence"),
    rec(11, "yes", "existence"),
    rec(12, "no", "existence"),
    rec(13, "no", "existence"),
    rec(14, "1", "counting"),
    rec(15, "3", "counting"),
]


def test_constant_baseline_answers_each_type_with_its_most_common_training_answer():
    base = constant_baseline("exact", TRAIN, TEST)
    assert base["existence"] == {"answer": "no", "score": 75.0}
    assert base["counting"] == {"answer": "1", "score": 50.0}
    # The whole task answered so: 3 of 4 existence and 1 of 2 counting samples.
    assert base["all"] == {"answer": None, "score": pytest.approx(400 / 6, abs=1e-3)}


def test_a_task_of_one_type_is_its_own_baseline():
    train = [rec(0, "A", None), rec(1, "B", None), rec(2, "B", None)]
    test = [rec(3, "B", None), rec(4, "C", None)]
    assert constant_baseline("exact", train, test) == {"all": {"answer": "B", "score": 50.0}}
    assert qtype_scores("exact", ["B", "C"], test) == {}  # the task score says it all


def test_scores_per_type_and_the_report_rows():
    preds = ["no", "yes", "yes", "no", "3", "3"]
    assert qtype_scores("exact", preds, TEST) == {"counting": 50.0, "existence": 75.0}
    res = {
        "tasks": ["t"],
        "constant_baseline": {"t": constant_baseline("exact", TRAIN, TEST)},
    }
    assert constant_row(res) == [pytest.approx(400 / 6, abs=1e-3)]
    assert constant_extras(res) == {"t": {"qtype/existence": 75.0, "qtype/counting": 50.0}}
