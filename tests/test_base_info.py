"""The base's own record of what it learned: held-out accuracy per question form."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from typer.testing import CliRunner

from mmcl.cli import app
from mmcl.data.records import Record
from mmcl.data.synth.pretrain import SCENE_QUESTIONS
from mmcl.io import torch_threads
from mmcl.models.tiny import get_preset
from mmcl.pretraining import base
from mmcl.pretraining.base import (
    base_info,
    base_key,
    heldout_accuracy,
    pretrained_backbone,
    shipped_bases,
)


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
    return json.loads(base_info("micro", 0).read_text())


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


def test_the_default_base_ships_with_the_package_and_loads_without_training(tmp_path, monkeypatch):
    """The default base (tiny, seed 0) ships under the key of this code, so a fresh machine
    skips its minutes of pretraining and every machine starts from the same weights. A change
    of the base's code or preset changes the key and leaves it unused: rebuild it then."""
    key = base_key("tiny", 0)
    assert {p.name for p in shipped_bases().iterdir()} == {f"tiny-{key}"}, (
        f"the shipped base is stale: mmcl base --preset tiny --seed 0 --out "
        f"{shipped_bases() / f'tiny-{key}'} (and remove the old folder)"
    )
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setattr(base, "_train_base", lambda *a: pytest.fail("trained a shipped base"))
    pretrained_backbone("tiny", 0)
    info = json.loads(base_info("tiny", 0).read_text())
    assert info["seed"] == 0 and info["preset"] == asdict(get_preset("tiny"))
    assert info["position_probe"] >= 0.9
    assert not (tmp_path / "base").exists()


def fake_build(payload: bytes):
    """A stand-in for training a base: writes `payload` as its weights."""

    def build(preset_name, seed, folder):
        folder.mkdir(parents=True)
        (folder / "info.json").write_text(json.dumps({"position_probe": 1.0, "heldout_exact": {}}))
        (folder / "model.safetensors").write_bytes(payload)

    return build


def test_mmcl_base_trains_apart_and_says_whether_it_is_the_base_in_use(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "base" / f"micro-{base_key('micro', 1)}"

    def mmcl_base(out: str):
        args = ["base", "--preset", "micro", "--seed", "1", "--out", str(tmp_path / out)]
        return CliRunner().invoke(app, args)

    monkeypatch.setattr(base, "_train_base", fake_build(b"same"))
    res = mmcl_base("a")
    assert res.exit_code == 0 and "no base of it in use yet" in res.output
    fake_build(b"same")("micro", 1, cached)
    res = mmcl_base("b")
    assert res.exit_code == 0 and "identical to the base in use" in res.output
    monkeypatch.setattr(base, "_train_base", fake_build(b"other"))
    res = mmcl_base("c")
    assert res.exit_code == 1 and "differs" in res.output
    assert (cached / "model.safetensors").read_bytes() == b"same"  # the base in use untouched
