"""The checkpoint format: any key, nested state, and the commit protocol."""

from __future__ import annotations

import json

import pytest
import torch

from mmcl import checkpoint
from mmcl.errors import MmclError


def _state() -> dict:
    return {
        "fisher": {"lm.model.layers.0.mlp.lora_A.task.weight": torch.ones(2, 3)},
        "odd keys": {"a%2Eb": torch.zeros(1), "100%.": torch.full((2,), 7.0), "x%y": 3},
        "nested": {"0": {"w.1": torch.arange(3)}, "empty": {}, "n": [1, 2]},
        "experts": ["ocr", "gui"],
    }


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


def test_any_key_and_nested_state_come_back():
    tensors, rest = checkpoint.split_state(_state())
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    again = checkpoint.join_state(tensors, json.loads(json.dumps(rest)))
    assert _equal(again, _state())


def test_save_commits_keeps_two_steps_and_falls_back_when_the_newest_is_corrupt(tmp_path):
    root = tmp_path / "checkpoints"
    weights = {"lm.head.weight": torch.ones(2)}
    for step in (-1, 0, 1):
        checkpoint.save(root, step, {"next_step": step + 1}, weights, _state())
    assert sorted(p.name for p in root.glob("step*")) == ["step0", "step1"]
    found = checkpoint.find(root)
    assert found.folder.name == "step1" and found.state == {"next_step": 2}
    assert _equal(found.method_state, _state()) and _equal(found.model, weights)

    (root / "step1" / "method.safetensors").write_bytes(b"partial")
    assert checkpoint.find(root).folder.name == "step0"
    (root / "step0" / "state.json").write_text("{")
    with pytest.raises(MmclError, match="no usable checkpoint"):
        checkpoint.find(root)
    assert checkpoint.find(tmp_path / "none") is None


def test_keep_all_keeps_every_step_and_any_committed_one_reads_back(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (-1, 0, 1, 2):
        weights = {"lm.head.weight": torch.full((2,), float(step))}
        checkpoint.save(root, step, {"next_step": step + 1}, weights, {}, keep_all=True)
    assert sorted(p.name for p in root.glob("step*")) == ["step-1", "step0", "step1", "step2"]
    assert checkpoint.at_step(root, 0).model["lm.head.weight"].tolist() == [0.0, 0.0]
    checkpoint.save(root, 3, {"next_step": 4}, {}, {})  # the default prunes what came before
    assert sorted(p.name for p in root.glob("step*")) == ["step2", "step3"]
    with pytest.raises(MmclError, match=r"step 0 \(kept: 2, 3\).*keep_checkpoints: all"):
        checkpoint.at_step(root, 0)
