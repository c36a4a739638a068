"""hf-native: tiny LLaVA and Qwen2-VL checkpoints built from configs, loaded from a folder, run
through the backbone interface and a 2-task micro stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mmcl.config import ModelSettings, load_config
from mmcl.data.records import Record
from mmcl.errors import MmclError
from mmcl.methods import all_methods
from mmcl.models.base import IGNORE, LoraSpec
from mmcl.models.hf_native import load_hf_native
from mmcl.runner import Run
from tiny_hf import (
    colour_records,
    micro_stream_config,
    one_thread,  # noqa: F401 (a fixture)
    save_tiny_llava,
    save_tiny_qwen2vl,
)

ARCHS = ["llava", "qwen2vl"]
# mr-lora is written by another helper; run it too once it is registered.
STREAM_METHODS = ["lora-ft"] + (["mr-lora"] if "mr-lora" in all_methods() else [])
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {
        "llava": save_tiny_llava(root / "llava"),
        "qwen2vl": save_tiny_qwen2vl(root / "qwen2vl"),
    }


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[Record]:
    folder = tmp_path_factory.mktemp("imgs")
    rows = colour_records(folder, "r", 3, seed=0)
    one = Record(
        "short",
        ((f"<image>\n{rows[0]['q']}", rows[0]["a"]),),
        {"image": (folder / rows[0]["image"],)},
    )
    longer = Record(
        "two-turns",
        (
            (f"<image>\nlook closely at this picture. {rows[1]['q']}", rows[1]["a"]),
            ("and is it a square?", "yes"),
        ),
        {"image": (folder / rows[1]["image"],)},
    )
    return [one, longer]


def _backbone(model_dirs, arch):
    return load_hf_native(ModelSettings(backbone="hf-native", path=model_dirs[arch]))


@pytest.mark.parametrize("arch", ARCHS)
def test_labels_cover_exactly_the_answers(model_dirs, records, arch):
    bb = _backbone(model_dirs, arch)
    batch = bb.collate(records, train=True)
    end = {"llava": "</s>", "qwen2vl": "<|im_end|>"}[arch]
    decode = bb.tokenizer.decode
    for i, rec in enumerate(records):
        lab = batch.labels[i]
        answers = [a for _, a in rec.turns]
        # every answer is labelled with the end of its turn, nothing else is
        assert decode(lab[lab != IGNORE]).replace(" ", "") == "".join(a + end for a in answers)
        real = batch.attention_mask[i].bool()
        assert (lab[~real] == IGNORE).all()
        assert (batch.input_ids[i][real][: len(lab)] != bb.pad).any()
    assert batch.attention_mask[:, 0].all()  # training batches are right-padded
    prompt = bb.collate(records, train=False)
    assert prompt.labels is None and prompt.attention_mask[:, -1].all()  # left-padded
    text = decode(prompt.input_ids[1][prompt.attention_mask[1].bool()])
    assert "yes" not in text.split("is it a square?")[-1]  # the last answer is not in the prompt
    assert records[1].turns[0][1] + end in text.replace(" ", "")  # earlier ones end as in training
    assert "pixel_values" in batch.media
    if arch == "qwen2vl":  # processor extras travel in Batch.media, per-token ones padded
        assert batch.media["image_grid_thw"].shape == (2, 3)
        assert batch.media["mm_token_type_ids"].shape == batch.input_ids.shape
    out = bb.forward(batch, hidden=True)
    assert torch.isfinite(out.loss) and out.hidden.shape[0] == 2


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_generation_equals_one_by_one(model_dirs, records, arch):
    bb = _backbone(model_dirs, arch)
    together = bb.generate(bb.collate(records, train=False), max_new_tokens=5)
    alone = [bb.generate(bb.collate([r], train=False), max_new_tokens=5)[0] for r in records]
    assert together == alone


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_targets_the_language_model_only(model_dirs, arch):
    bb = _backbone(model_dirs, arch)
    lm_linear = {
        n for n, m in bb.core.named_modules() if isinstance(m, nn.Linear) and "language_model" in n
    }
    bb.add_lora("main", LoraSpec(r=2))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in bb.core.named_modules() if "lora_A" in n}
    assert adapted == lm_linear and len(adapted) == 2 * 7  # q k v o gate up down, 2 layers
    assert not [n for n in adapted if "vision" in n or "visual" in n]
    assert set(bb.trainable_parameters()) <= set(bb.adapter_parameters("main"))
    both = _backbone(model_dirs, arch)
    both.add_lora("main", LoraSpec(r=2, vision=True))
    names = [n for n, _ in both.core.named_modules() if n.endswith("lora_A")]
    assert len(names) > len(adapted) and any("vision" in n or "visual" in n for n in names)


@pytest.mark.parametrize("arch", ARCHS)
def test_finetune_leaves_the_vision_encoder_frozen(model_dirs, arch):
    from mmcl.methods import make_method

    bb = _backbone(model_dirs, arch)
    vision = bb.encoder_parameters()
    assert vision and all("vision" in n or "visual" in n for n in vision)
    make_method("finetune", {}, bb, [], 0).setup()
    trainable = set(bb.trainable_parameters())
    assert trainable and not trainable & set(vision)
    assert any("language_model" in n for n in trainable)


def test_vision_blocks_or_a_clear_error(model_dirs):
    # the tiny LLaVA has 2 vision blocks and feeds the LM the first one's output
    # (vision_feature_layer -2, as LLaVA-1.5): the second is not part of the model
    assert len(_backbone(model_dirs, "llava").vision_blocks()) == 1
    with pytest.raises(MmclError, match="packed patches"):
        _backbone(model_dirs, "qwen2vl").vision_blocks()


def test_loading_errors_name_the_key(tmp_path, model_dirs):
    with pytest.raises(MmclError, match="model.path = .*not a folder"):
        load_hf_native(ModelSettings(backbone="hf-native", path=tmp_path / "nowhere"))
    with pytest.raises(MmclError, match="no config.json"):
        load_hf_native(ModelSettings(backbone="hf-native", path=tmp_path))
    with pytest.raises(MmclError, match=r"needs model\.path"):
        load_config(None, {"model.backbone": "hf-native"})
    if not torch.cuda.is_available():
        with pytest.raises(MmclError, match="bitsandbytes and a CUDA GPU"):
            load_hf_native(
                ModelSettings(backbone="hf-native", path=model_dirs["llava"], quantize="4bit")
            )


@pytest.mark.parametrize("method", STREAM_METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_micro_stream(tmp_path, model_dirs, arch, method):
    cfg = micro_stream_config(tmp_path / "data", model_dirs[arch], method)
    res = Run(cfg, tmp_path / "run").execute()
    assert res["tasks"] == ["first", "second"]
    assert res["counts"] == {n: {"scored": 6, "total": 6} for n in res["tasks"]}
    assert len(res["accuracy_matrix"]) == 2 and all(len(r) == 2 for r in res["accuracy_matrix"])
    lines = (tmp_path / "run" / "predictions" / "step1" / "second.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["reference"]
    saved = list((tmp_path / "run" / "checkpoints").rglob("model.safetensors"))
    assert saved and not list((tmp_path / "run").rglob("*.bin"))
