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
