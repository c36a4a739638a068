"""The base's own record of what it learned: held-out accuracy per question form."""

from __future__ import annotations

import json

import torch

from mmcl.data.records import Record
from mmcl.data.synth.pretrain import SCENE_QUESTIONS
from mmcl.io import torch_threads
from mmcl.pretraining import base
from mmcl.pretraining.base import cached_base_info, heldout_accuracy, pretrained_backbone


class Echo:
    """A backbone stand-in that answers from a table (prompt -> answer)."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def collate(self, records, train):
        return records

    def generate(self, batch, max_new_tokens):
        return [self.answers[r.prompt] for r in batch]


def test_heldout_accuracy_is_exact_match_per_form_and_on_single_objects():
    one, two = [["letter:A", "red", "plain"]], [["letter:A", "red", "plain"]] * 2
    recs = [
        Record(f"r{i}", ((f"q{i}", a),), meta={"qtype": f, "cells": c}, references=(a,))
        for i, (f, a, c) in enumerate(
            [
                ("describe", "the letter A.", one),
                ("describe", "a red circle.", two),
                ("presence", "yes", one),
                ("presence", "no", one),
            ]
        )
    ]
    echo = Echo(
        {"q0": "the letter A.", "q1": "a red circle; a red circle.", "q2": "yes", "q3": "yes"}
    )
    assert heldout_accuracy(echo, recs) == {
        "describe": 50.0,
        "presence": 50.0,
        "describe, one object": 100.0,
        "presence, one object": 50.0,
    }


def micro_info() -> dict:
    """The info.json of the micro base (built once per test session)."""
    pretrained_backbone("micro")
    return json.loads(cached_base_info("micro", 0).read_text())


def test_base_info_records_heldout_accuracy_of_every_form():
    info = micro_info()
    forms = {form for form, _ in SCENE_QUESTIONS}
    assert forms <= set(info["heldout_exact"]) <= forms | {f"{f}, one object" for f in forms}
    assert all(0 <= v <= 100 for v in info["heldout_exact"].values())


def test_base_info_records_vision_accuracy_on_object_cells():
    info = micro_info()
    every, objects = info["vision_cell_accuracy"], info["vision_object_accuracy"]
    assert set(objects) == set(every) == {"what", "colour", "frame"}
    assert all(0 <= v <= 1 for v in objects.values())
    # Most cells are empty and easy, so object cells score no better than every cell.
    assert objects["colour"] <= every["colour"]


def test_the_base_trains_on_one_thread_whatever_the_callers_setting(tmp_path, monkeypatch):
    """How a sum is split among threads changes its rounding: a base built with 2 threads and
    one built with 1 differed under the same cache key. A base trains on one thread, so its key
    names one set of weights, and the caller's setting is restored after."""
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path))  # an empty cache: the base is trained
    threads = []
    monkeypatch.setattr(base, "_train_base", lambda *a: threads.append(torch.get_num_threads()))
    with torch_threads(2):
        pretrained_backbone("micro", 0)
        assert threads == [1]
        assert torch.get_num_threads() == 2
