"""pretrained-parts: a composed MLLM from local pretrained parts (LLaVA's recipe).

A CLIP or SigLIP vision tower (features of its second-to-last layer, as LLaVA-1.5), optionally
a Whisper encoder for audio (features average-pooled to a fixed number of tokens), and any
Hugging Face causal LM (Llama, Qwen, ...), joined by the MLP projectors of models/composed.py.
Encoders are frozen (methods choose what trains); `dtype`, gradient checkpointing and 8/4-bit
LM loading (bitsandbytes + CUDA only) come from the config's model section.

The projectors start at random unless `model.projector_path` gives their weights (a
safetensors file with keys `image.*` / `audio.*`), so a fresh composition needs an alignment
stage before it can see: train it with `finetune` on captioning data first, or load weights.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionModel,
    SiglipVisionModel,
    WhisperFeatureExtractor,
    WhisperModel,
)

from mmcl.data.records import MODALITIES
from mmcl.errors import MmclError
from mmcl.io import load_tensors
from mmcl.models.composed import ComposedBackbone, ComposedMLLM, projector
from mmcl.models.hf_native import load_image
from mmcl.models.loading import device, finish, load_model, local_dir, quantization

if TYPE_CHECKING:
    from mmcl.config import ModelSettings

log = logging.getLogger(__name__)

VISION_MODELS = {
    "clip": CLIPVisionModel,
    "clip_vision_model": CLIPVisionModel,
    "siglip": SiglipVisionModel,
    "siglip_vision_model": SiglipVisionModel,
}
AUDIO_TOKENS = 32  # Whisper's 1500 frames per 30 s, average-pooled to this many LM tokens


class PretrainedVisionTower(nn.Module):
    """A pretrained CLIP/SigLIP vision model returning the patch tokens of one hidden layer
    (LLaVA-1.5 uses the second-to-last); CLIP's CLS token is dropped."""

    def __init__(self, model: nn.Module, layer: int = -2):
        super().__init__()
        self.model, self.layer = model, layer
        self.has_cls = model.config.model_type.startswith("clip")

    @property
    def num_tokens(self) -> int:
        cfg = self.model.config
        return (cfg.image_size // cfg.patch_size) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        feats = out.hidden_states[self.layer]
        # float32 out: the projector stays in float32 whatever the LM's dtype
        return (feats[:, 1:] if self.has_cls else feats).float()


class WhisperTower(nn.Module):
    """A pretrained Whisper encoder; its frames are average-pooled to `tokens` LM tokens."""

    def __init__(self, encoder: nn.Module, tokens: int = AUDIO_TOKENS):
        super().__init__()
        self.model, self.num_tokens = encoder, tokens

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        feats = self.model(input_features=input_features.to(dtype)).last_hidden_state
        pooled = nn.functional.adaptive_avg_pool1d(feats.transpose(1, 2).float(), self.num_tokens)
        return pooled.transpose(1, 2)


def _pixels(path: Path, processor: Any) -> torch.Tensor:
    return processor(images=load_image(path), return_tensors="pt")["pixel_values"][0]


def load_audio(path: Path, rate: int) -> np.ndarray:
    """An audio file -> mono float32 samples at `rate` Hz (decoded with PyAV)."""
    import av

    try:
        with av.open(str(path)) as container:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [
                r.to_ndarray().reshape(-1)
                for frame in container.decode(audio=0)
                for r in resampler.resample(frame)
            ]
            chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]
    except Exception as e:
        raise MmclError(f"cannot read audio {path}: {e}") from e
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def _audio_features(path: Path, extractor: WhisperFeatureExtractor) -> torch.Tensor:
    wave = load_audio(path, extractor.sampling_rate)
    feats = extractor(wave, sampling_rate=extractor.sampling_rate, return_tensors="pt")
    return feats["input_features"][0]


def _vision(path: Path, dtype: torch.dtype) -> tuple[PretrainedVisionTower, Any]:
    model_type = AutoConfig.from_pretrained(str(path), local_files_only=True).model_type
    if model_type not in VISION_MODELS:
        raise MmclError(
            f"model.vision_path = {path}: a {model_type!r} model; pretrained-parts takes a "
            f"vision tower of type {sorted(VISION_MODELS)}"
        )
    model = load_model(VISION_MODELS[model_type], path, "model.vision_path", dtype=dtype)
    processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    return PretrainedVisionTower(model), processor


def load_pretrained_parts(settings: ModelSettings) -> ComposedBackbone:
    """The `pretrained-parts` backbone of a config's model section."""
    dtype = getattr(torch, settings.dtype)
    lm_path = local_dir(settings.lm_path, "model.lm_path")
    vision_path = local_dir(settings.vision_path, "model.vision_path")
    tokenizer = AutoTokenizer.from_pretrained(str(lm_path), local_files_only=True)
    missing = [f"<{m}>" for m in MODALITIES if f"<{m}>" not in tokenizer.get_vocab()]
    if missing:  # placeholders only mark where features go; their embeddings are replaced
        tokenizer.add_tokens(missing, special_tokens=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    quant = quantization(settings.quantize, ["lm_head"], dtype)
    lm = load_model(AutoModelForCausalLM, lm_path, "model.lm_path", dtype=dtype, **quant)
    if len(tokenizer) > lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(tokenizer))
    lm = finish(lm, bool(quant), settings.gradient_checkpointing)
    hidden = lm.config.get_text_config().hidden_size

    tower, image_processor = _vision(vision_path, dtype)
    encoders: dict[str, nn.Module] = {"image": tower}
    featurizers = {"image": partial(_pixels, processor=image_processor)}
    widths = {"image": tower.model.config.hidden_size}
    if settings.audio_path is not None:
        audio_path = local_dir(settings.audio_path, "model.audio_path")
        whisper = load_model(WhisperModel, audio_path, "model.audio_path", dtype=dtype)
        encoders["audio"] = WhisperTower(whisper.get_encoder())
        extractor = WhisperFeatureExtractor.from_pretrained(str(audio_path), local_files_only=True)
        featurizers["audio"] = partial(_audio_features, extractor=extractor)
        widths["audio"] = whisper.config.d_model
    projectors = {m: projector(w, hidden) for m, w in widths.items()}
    if settings.projector_path is not None:
        _load_projectors(projectors, Path(settings.projector_path))
    else:
        log.warning("pretrained-parts: the projectors start untrained (no model.projector_path)")
    for m in encoders:
        encoders[m] = finish(encoders[m], False, False)  # frozen, on this process's device
        projectors[m].to(device())
    core = ComposedMLLM(
        lm,
        encoders,
        projectors,
        {m: tokenizer.convert_tokens_to_ids(f"<{m}>") for m in encoders},
    )
    return ComposedBackbone(
        core, tokenizer, featurizers, {m: e.num_tokens for m, e in encoders.items()}
    )


def _load_projectors(projectors: dict[str, nn.Module], path: Path) -> None:
    state = load_tensors(path)
    for m, proj in projectors.items():
        part = {k[len(m) + 1 :]: v for k, v in state.items() if k.startswith(f"{m}.")}
        try:
            proj.load_state_dict(part)
        except RuntimeError as e:
            raise MmclError(f"model.projector_path = {path}: no matching {m} projector: {e}") from e
