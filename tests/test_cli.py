import json

from typer.testing import CliRunner

from mmcl.cli import app

runner = CliRunner()


def test_list_names_everything():
    out = runner.invoke(app, ["list"]).output
    for name in ("ability", "lora-ft", "joint", "zero-shot", "finetune", "micro", "tiny"):
        assert name in out


def test_validate_reports_problems_and_exits_nonzero(tmp_path):
    bad = tmp_path / "d.json"
    bad.write_text(
        json.dumps(
            [
                {
                    "id": "a",
                    "image": "x.png",
                    "conversations": [
                        {"from": "human", "value": "<image>\nq"},
                        {"from": "gpt", "value": "a"},
                    ],
                }
            ]
        )
    )
    res = runner.invoke(app, ["data", "validate", str(bad)])
    assert res.exit_code == 1
    assert "record 0" in res.output and "x.png" in res.output


def test_unknown_names_are_clear_errors(tmp_path):
    res = runner.invoke(app, ["compare", "--out", str(tmp_path), "--methods", "lora-ft,nope"])
    assert res.exit_code != 0 and "unknown method 'nope'" in str(res.exception)
    res = runner.invoke(app, ["run", "--out", str(tmp_path / "r"), "--benchmark", "nope"])
    assert "unknown benchmark 'nope'" in str(res.exception)


def test_bad_config_value_names_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  lr: -1\n")
    res = runner.invoke(app, ["run", "--out", str(tmp_path / "r"), "--config", str(cfg)])
    assert "train.lr" in str(res.exception)
    cfg.write_text("train: [oops\n")
    res = runner.invoke(app, ["run", "--out", str(tmp_path / "r"), "--config", str(cfg)])
    assert "not valid YAML" in str(res.exception)


def test_generate_writes_the_benchmark(tmp_path):
    out = tmp_path / "ability"
    res = runner.invoke(
        app, ["data", "generate", "--out", str(out), "--train-size", "3", "--test-size", "2"]
    )
    assert res.exit_code == 0, res.output
    assert (out / "ocr" / "train.json").exists() and (out / "gui" / "test.json").exists()
    res = runner.invoke(app, ["data", "validate", str(out / "ocr" / "train.json")])
    assert res.exit_code == 0


def test_misspelt_method_option_fails_before_any_model_is_built(tmp_path, monkeypatch):
    import pytest

    from mmcl import runner
    from mmcl.config import load_config
    from mmcl.errors import MmclError

    def no_loading(*args, **kwargs):
        raise AssertionError("the data or the model was loaded before the config was checked")

    monkeypatch.setattr(runner, "load_tasks", no_loading)
    monkeypatch.setattr(runner, "load_backbone", no_loading)
    cfg = load_config(None, {"method.name": "lora-ft", "method.rnak": 3})
    with pytest.raises(MmclError, match="rnak"):
        runner.Run(cfg, tmp_path / "run").execute()


def test_written_files_follow_the_umask(tmp_path):
    import os
    import stat

    from mmcl.io import save_tensors, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "results.json", {"a": 1})
        save_tensors(tmp_path / "w.safetensors", {})
    finally:
        os.umask(old)
    for name in ("results.json", "w.safetensors"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o644, (name, oct(mode))


def test_base_seed_is_a_setting_cached_apart():
    from mmcl.config import load_config
    from mmcl.pretraining.base import base_key

    assert load_config(None, {"model.base_seed": 1}).model.base_seed == 1
    assert base_key("micro", 0) != base_key("micro", 1)
