"""Micro end-to-end runs of every method, determinism, and kill-and-resume equality."""

from __future__ import annotations

import json

import pytest

from mmcl.config import load_config
from mmcl.errors import MmclError
from mmcl.methods import all_methods
from mmcl.runner import Run

CORE_METHODS = ["zero-shot", "joint", "lora-ft", "finetune"]


def _run(tmp_path, name, micro_overrides, resume=False, **extra):
    cfg = load_config(None, {**micro_overrides, "method.name": name, **extra})
    return Run(cfg, tmp_path / name).execute(resume=resume)


@pytest.mark.parametrize("name", CORE_METHODS)
def test_micro_run_writes_the_results_contract(tmp_path, micro_overrides, name):
    res = _run(tmp_path, name, micro_overrides)
    out = tmp_path / name
    assert res["tasks"] == ["ocr", "gui"] and res["method"] == name
    assert len(res["accuracy_matrix"]) == 2 and all(len(r) == 2 for r in res["accuracy_matrix"])
    assert set(res["metrics"]) == {"mft", "mfn", "maa", "bwt", "fwt", "forgetting"}
    assert res["counts"] == {"ocr": {"scored": 12, "total": 12}, "gui": {"scored": 12, "total": 12}}
    assert json.loads((out / "results.json").read_text()) == res
    assert (out / "report.md").exists() and (out / "accuracy_matrix.png").stat().st_size > 0
    lines = (out / "predictions" / "zero_shot" / "ocr.jsonl").read_text().splitlines()
    assert len(lines) == 12 and {"id", "prompt", "prediction", "reference", "score"} <= set(
        json.loads(lines[0])
    )
    if name in ("zero-shot", "joint"):
        assert res["accuracy_matrix"][0] == res["accuracy_matrix"][1]
    if name == "joint":
        assert res["upper_bound"] is True
    assert list((out / "checkpoints").rglob("*.safetensors"))
    assert not list((out / "checkpoints").rglob("*.pt")) and not list(out.rglob("*.bin"))


def test_every_registered_method_runs(tmp_path, micro_overrides):
    for name in sorted(set(all_methods()) - set(CORE_METHODS)):
        res = _run(tmp_path, name, micro_overrides)
        assert res["counts"]["gui"]["scored"] == 12, name


def test_same_seed_same_matrix(tmp_path, micro_overrides):
    a = _run(tmp_path / "a", "lora-ft", micro_overrides)
    b = _run(tmp_path / "b", "lora-ft", micro_overrides)
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    assert a["zero_shot"] == b["zero_shot"]


def test_kill_and_resume_gives_the_same_matrix(tmp_path, micro_overrides, killed_after_first_step):
    full = _run(tmp_path / "full", "lora-ft", micro_overrides)
    with killed_after_first_step():  # stops right after step 0's checkpoint
        _run(tmp_path / "killed", "lora-ft", micro_overrides)
    assert not (tmp_path / "killed" / "lora-ft" / "results.json").exists()
    with pytest.raises(MmclError, match="--resume"):
        _run(tmp_path / "killed", "lora-ft", micro_overrides)
    resumed = _run(tmp_path / "killed", "lora-ft", micro_overrides, resume=True)
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    assert resumed["zero_shot"] == full["zero_shot"]


def test_resume_refuses_another_config(tmp_path, micro_overrides):
    _run(tmp_path, "lora-ft", micro_overrides)
    with pytest.raises(MmclError, match="another configuration"):
        _run(tmp_path, "lora-ft", micro_overrides, resume=True, seed=5)
