"""`mmcl export`: trained adapters as peft folders that load with transformers + peft alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmcl.cli import app
from mmcl.config import load_config
from mmcl.errors import MmclError
from mmcl.export import export_run, standalone_modeling, trained_run
from mmcl.pretraining.base import pretrained_backbone
from mmcl.runner import Run, load_tasks
from test_tracking import read_scalars
from tiny_hf import save_tiny_llava, write_colour_stream

# Runs in a fresh interpreter where importing mmcl fails: the exported base and one adapter,
# the chat template and processor saved with the base, batched greedy generation; prints the
# answers and the logits of the first answer token.
LOAD_WITHOUT_MMCL = """
import json, sys
from pathlib import Path
sys.modules["mmcl"] = None
import torch
from peft import PeftModel
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

export, adapter, samples_file = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
max_new_tokens = int(sys.argv[4])
samples = json.loads(open(samples_file).read())
base = json.loads((export / "export.json").read_text())["base"]
base = base if Path(base).is_absolute() else export / base
model = AutoModelForImageTextToText.from_pretrained(base, trust_remote_code=True)
model = PeftModel.from_pretrained(model, export / "adapters" / adapter).eval()
processor = AutoProcessor.from_pretrained(base, trust_remote_code=True)
tok = processor.tokenizer
tok.padding_side = "left"
prompts = []
for s in samples:  # images and text in their order, as in the question
    content = []
    for k, chunk in enumerate(s["prompt"].split("<image>")):
        content += [{"type": "image"}] if k else []
        content += [{"type": "text", "text": chunk.strip()}] if chunk.strip() else []
    messages = [{"role": "user", "content": content}]
    prompts.append(processor.apply_chat_template(messages, add_generation_prompt=True))
images = [Image.open(s["image"]) for s in samples]
bos = tok.bos_token is not None and prompts[0].startswith(tok.bos_token)
inputs = processor(
    text=prompts, images=images, return_tensors="pt", padding=True, add_special_tokens=not bos
)
with torch.no_grad():
    logits = model(**inputs).logits[:, -1]
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
out = out[:, inputs["input_ids"].shape[1]:]
answers = [t.strip() for t in processor.batch_decode(out, skip_special_tokens=True)]
print(json.dumps({"answers": answers, "logits": logits.tolist()}))
"""


def load_without_mmcl(
    export: Path, adapter: str, records, max_new_tokens: int, tmp_path: Path
) -> dict:
    samples = tmp_path / f"samples-{adapter}.json"
    samples.write_text(
        json.dumps([{"prompt": r.prompt, "image": str(r.media["image"][0])} for r in records])
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_WITHOUT_MMCL,
            str(export),
            adapter,
            str(samples),
            str(max_new_tokens),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _hf_native_overrides(tmp_path: Path) -> dict:
    """A tiny LLaVA-1.5-hf on a 2-task colour stream (as the hf-native tests)."""
    stream = write_colour_stream(tmp_path / "data", ["first", "second"], n_train=16, n_test=6)
    return {
        "benchmark": str(stream),
        "model.backbone": "hf-native",
        "model.path": str(save_tiny_llava(tmp_path / "llava")),
        "train.epochs": 1,
        "train.batch_size": 8,
        "eval.max_new_tokens": 4,
    }


@pytest.mark.parametrize(
    ("backbone", "method", "adapter", "task"),
    [
        ("composed", "lora-ft", "main", "ocr"),
        ("composed", "mr-lora", "gui", "gui"),
        ("hf-native", "lora-ft", "main", "second"),
    ],
)
def test_exported_adapter_answers_as_mmcl_without_mmcl(
    tmp_path, micro_overrides, backbone, method, adapter, task
):
    overrides = micro_overrides if backbone == "composed" else _hf_native_overrides(tmp_path)
    track = ["tensorboard"] if method == "mr-lora" else []  # routing figures are logged too
    cfg = load_config(None, {**overrides, "method.name": method, "track": track})
    run_dir, export = tmp_path / "run", tmp_path / "export"
    Run(cfg, run_dir).execute()
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(export)])
    assert result.exit_code == 0, result.output

    info = json.loads((export / "export.json").read_text())
    assert info["finished"] and info["method"] == method and info["tasks_trained"] == 2
    expected = {"main"} if method == "lora-ft" else {"ocr", "gui", "router"}
    assert set(info["adapters"]) == expected
    for name in expected:
        folder = export / "adapters" / name
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA"
        assert (folder / "adapter_model.safetensors").stat().st_size > 0
        base = export / "base" if backbone == "composed" else cfg.model.path
        assert config["base_model_name_or_path"] == str(base.resolve())
    if backbone == "composed":  # the embedded base goes with the adapters
        assert {"config.json", "model.safetensors", "modeling_mmcl.py"} <= {
            p.name for p in (export / "base").iterdir()
        }
    else:
        assert not (export / "base").exists() and info["base"] == str(cfg.model.path.resolve())
    assert not list(export.rglob("*.bin")) and not list(export.rglob("*.pt"))
    if method == "mr-lora":
        routing = json.loads((export / "routing.json").read_text())
        assert [(e["task"], e["letter"], e["adapter"]) for e in routing["experts"]] == [
            ("ocr", "A", "adapters/ocr"),
            ("gui", "B", "adapters/gui"),
        ]
        assert routing["router"]["adapter"] == "adapters/router"
        assert "{question}" in routing["router"]["prompt"]
        assert routing["router"]["layers"] == 1  # the default router reads half the LM's layers
        assert routing["router"]["prompt"].startswith(routing["router"]["expert_list"])
        scalars = read_scalars(run_dir / "tensorboard")
        res = json.loads((run_dir / "results.json").read_text())
        for i, name in enumerate(res["tasks"]):
            logged = [v for _, v in scalars[f"routing/{name}"]]
            per_step = [row[i] for row in res["routing"]["per_step"] if row[i] is not None]
            assert per_step and logged == pytest.approx(per_step, abs=0.01)
        assert len(scalars["routing/fallbacks"]) == 2
    assert "vllm serve" in (export / "README.md").read_text()

    # mmcl's answers with that adapter alone, on the task's test samples.
    cfg, backbone, _, _ = trained_run(run_dir)
    records = next(t for t in load_tasks(cfg) if t.name == task).test
    batch = backbone.collate(records, train=False)
    backbone.use_adapters(None)
    base_logits = backbone.forward(batch).logits[:, -1]
    backbone.use_adapters(adapter)
    mmcl_logits = backbone.forward(batch).logits[:, -1]
    mmcl_answers = backbone.generate(batch)
    if method == "lora-ft":  # the run's own predictions after its last step
        rows = (run_dir / "predictions" / "step1" / f"{task}.jsonl").read_text().splitlines()
        assert [json.loads(r)["prediction"] for r in rows] == mmcl_answers

    plain = load_without_mmcl(export, adapter, records, cfg.eval.max_new_tokens, tmp_path)
    assert plain["answers"] == mmcl_answers
    logits = torch.tensor(plain["logits"])
    torch.testing.assert_close(logits, mmcl_logits, atol=1e-4, rtol=1e-4)
    assert (mmcl_logits - base_logits).abs().max() > 1e-2  # the adapter is really applied


def test_a_run_that_keeps_every_step_exports_the_model_after_any_step(tmp_path, micro_overrides):
    cfg = load_config(None, {**micro_overrides, "track": [], "keep_checkpoints": "all"})
    run_dir = tmp_path / "run"
    Run(cfg, run_dir).execute()
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step*"))
    assert kept == ["step-1", "step0", "step1"]
    result = CliRunner().invoke(
        app, ["export", str(run_dir), "--out", str(tmp_path / "e0"), "--step", "0"]
    )
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "e0" / "export.json").read_text())
    assert info["tasks_trained"] == 1 and not info["finished"]

    # The model as step 0 left it gives the run's own predictions after step 0, not step 1's.
    answers = {}
    for step in (0, 1):
        cfg, backbone, _, _ = trained_run(run_dir, step)
        records = next(t for t in load_tasks(cfg) if t.name == "ocr").test
        answers[step] = backbone.generate(backbone.collate(records, train=False))
        rows = (run_dir / "predictions" / f"step{step}" / "ocr.jsonl").read_text().splitlines()
        assert [json.loads(r)["prediction"] for r in rows] == answers[step]
    assert answers[0] != answers[1]
    with pytest.raises(MmclError, match=r"no committed checkpoint of step 5 \(kept: -1, 0, 1\)"):
        export_run(run_dir, tmp_path / "e5", 5)


def test_export_errors(tmp_path):
    with pytest.raises(MmclError, match="no checkpoint"):
        export_run(tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "out").mkdir()
    with pytest.raises(MmclError, match="exists"):
        export_run(tmp_path / "nothing", tmp_path / "out")


def test_a_method_peft_cannot_hold_is_refused_and_nothing_is_written(tmp_path, micro_overrides):
    overrides = {**micro_overrides, "method.name": "smolora", "tasks": ["ocr"]}
    Run(load_config(None, overrides), tmp_path / "run").execute()
    with pytest.raises(MmclError, match="smolora cannot be exported as peft adapters: its two"):
        export_run(tmp_path / "run", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_the_exported_projector_marks_what_mmcl_marks():
    """The exported model's visual words read the prompt as mmcl's do, kind words of several
    tokens included ("coloured" is four tokens of the micro tokenizer)."""
    backbone = pretrained_backbone("micro")
    proj, tok = backbone.core.projectors["image"], backbone.tokenizer
    heads = [h.out_features for h in proj.heads]
    twin = standalone_modeling().VisualWords(
        proj.heads[0].in_features,
        proj.asked.numel(),
        heads,
        proj.rows.shape[0],
        list(proj.naming.shape[1:]),
    )
    twin.load_state_dict(proj.state_dict())
    questions = [
        "how many coloured objects are there?",
        "how many red circles are there?",
        "describe the image.",
    ]
    ids = [tok(f"user: {q}").input_ids for q in questions]
    prompt = torch.full((len(ids), max(map(len, ids))), -1)
    for i, row in enumerate(ids):
        prompt[i, : len(row)] = torch.tensor(row)
    x = torch.randn(
        len(ids),
        proj.rows.shape[0] ** 2,
        proj.heads[0].in_features,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        assert torch.allclose(twin(x, prompt), proj(x, prompt), atol=1e-6)
        # the "coloured" question marks the tokens; the description marks none
        assert not torch.allclose(proj(x[:1], prompt[:1]), proj(x[:1], prompt[2:]))
