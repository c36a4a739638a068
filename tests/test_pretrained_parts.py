"""pretrained-parts: a composed MLLM from local CLIP/SigLIP + causal LM (+ Whisper) folders, each
saved like a released checkpoint from a tiny config."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from mmcl.config import ModelSettings, load_config
from mmcl.data.records import Record
from mmcl.errors import MmclError
from mmcl.io import save_tensors
from mmcl.models.pretrained import load_pretrained_parts
from mmcl.runner import Run
from tiny_hf import colour_records, one_thread, write_colour_stream  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64)
VISION_LAYERS = 2


def _qwen_lm(folder: Path) -> Path:
    """A Qwen2-style LM whose tokenizer, like Qwen's, has no BOS, no pad and no <image>."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["what colour is the square? red green blue yes no"] * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")
    cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        eos_token_id=tokenizer.eos_token_id,
    )
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _clip(folder: Path) -> tuple[Path, CLIPModel]:
    """A full CLIP model (text + vision), as openai/clip-vit-large-patch14-336 is released."""
    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, vocab_size=99),
        vision_config=dict(**VISION, num_hidden_layers=VISION_LAYERS, num_attention_heads=2),
        projection_dim=16,
    )
    model = CLIPModel(cfg)
    model.save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    return folder, model


def _siglip(folder: Path) -> Path:
    cfg = SiglipVisionConfig(**VISION, num_hidden_layers=VISION_LAYERS, num_attention_heads=2)
    SiglipVisionModel(cfg).save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _whisper(folder: Path) -> Path:
    """A tiny Whisper reading 2 s clips (100 encoder positions)."""
    cfg = WhisperConfig(
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        vocab_size=100,
        max_source_positions=100,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    WhisperModel(cfg).save_pretrained(folder)
    WhisperFeatureExtractor(chunk_length=2).save_pretrained(folder)
    return folder


def _tone(path: Path, seconds: float = 0.5, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        n = int(seconds * rate)
        f.writeframes(
            b"".join(
                struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                for i in range(n)
            )
        )
    return path


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("parts")
    clip_dir, clip = _clip(root / "clip")
    return {
        "lm": _qwen_lm(root / "lm"),
        "clip": clip_dir,
        "clip_model": clip,
        "siglip": _siglip(root / "siglip"),
        "whisper": _whisper(root / "whisper"),
        "root": root,
    }


def _settings(parts, vision="clip", **kw) -> ModelSettings:
    return ModelSettings(
        backbone="pretrained-parts", vision_path=parts[vision], lm_path=parts["lm"], **kw
    )


def test_composes_pretrained_parts(parts):
    bb = load_pretrained_parts(_settings(parts, audio_path=parts["whisper"]))
    tower = bb.core.encoders["image"]
    saved = parts["clip_model"].vision_model.state_dict()
    loaded = tower.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)  # pretrained, not random
    assert bb.num_tokens == {"image": 16, "audio": 32}  # 4 x 4 patches, CLS dropped
    assert not any(p.requires_grad for p in bb.core.encoders.parameters())  # frozen
    assert not any(p.requires_grad for p in bb.core.lm.parameters())
    tok = bb.tokenizer
    assert tok.bos_token_id is None and tok.pad_token_id is not None
    assert bb.core.lm.get_input_embeddings().num_embeddings == len(tok)  # <image> etc. added
    assert len(bb.vision_blocks()) == VISION_LAYERS

    colours = colour_records(parts["root"] / "img", "c", 2, seed=0)
    image = Record(
        "i",
        (("<image>\nwhat colour?", "red"),),
        {"image": (parts["root"] / "img" / colours[0]["image"],)},
    )
    sound = Record(
        "a", (("<audio>\nwhat is it?", "a tone"),), {"audio": (_tone(parts["root"] / "t.wav"),)}
    )
    batch = bb.collate([image, sound])
    assert batch.media["image"].shape == (1, 3, 32, 32)
    assert batch.media["audio"].shape == (1, 80, 200)
    out = bb.forward(batch)
    assert torch.isfinite(out.loss)
    assert len(bb.generate(bb.collate([image, sound], train=False), max_new_tokens=3)) == 2


def test_siglip_tower_keeps_every_patch(parts):
    bb = load_pretrained_parts(_settings(parts, vision="siglip"))
    assert bb.num_tokens == {"image": 16}
    feats = bb.core.encoders["image"](torch.zeros(1, 3, 32, 32))
    assert feats.shape == (1, 16, 32) and feats.dtype == torch.float32


def test_projector_weights_and_bf16(parts, tmp_path):
    first = load_pretrained_parts(_settings(parts))
    path = tmp_path / "projector.safetensors"
    save_tensors(
        path, {f"image.{k}": v for k, v in first.core.projectors["image"].state_dict().items()}
    )
    again = load_pretrained_parts(
        _settings(parts, projector_path=path, dtype="bfloat16", gradient_checkpointing=True)
    )
    assert again.core.lm.is_gradient_checkpointing
    a, b = first.core.projectors["image"].state_dict(), again.core.projectors["image"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert next(again.core.lm.parameters()).dtype == torch.bfloat16
    assert next(again.core.projectors.parameters()).dtype == torch.float32
    with pytest.raises(MmclError, match="no matching image projector"):
        save_tensors(path, {"image.0.weight": torch.zeros(2)})
        load_pretrained_parts(_settings(parts, projector_path=path))


def test_errors(parts):
    with pytest.raises(MmclError, match="a 'qwen2' model; pretrained-parts takes a vision tower"):
        load_pretrained_parts(
            ModelSettings(backbone="pretrained-parts", vision_path=parts["lm"], lm_path=parts["lm"])
        )
    with pytest.raises(MmclError, match=r"needs model\.vision_path, model\.lm_path"):
        load_config(None, {"model.backbone": "pretrained-parts"})
    if not torch.cuda.is_available():
        with pytest.raises(MmclError, match="bitsandbytes and a CUDA GPU"):
            load_pretrained_parts(_settings(parts, quantize="8bit"))


def test_micro_stream_with_gradient_checkpointing(parts, tmp_path):
    stream = write_colour_stream(tmp_path / "data", ["first", "second"], n_train=8, n_test=4)
    cfg = load_config(
        None,
        {
            "benchmark": str(stream),
            "model.backbone": "pretrained-parts",
            "model.vision_path": str(parts["clip"]),
            "model.lm_path": str(parts["lm"]),
            "model.gradient_checkpointing": True,
            "method.name": "lora-ft",
            "train.epochs": 1,
            "train.batch_size": 4,
            "eval.max_new_tokens": 3,
        },
    )
    res = Run(cfg, tmp_path / "run").execute()
    assert res["counts"] == {
        "first": {"scored": 4, "total": 4},
        "second": {"scored": 4, "total": 4},
    }
