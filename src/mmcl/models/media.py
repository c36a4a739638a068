"""Audio and video for the embedded default model: encoders, projectors and featurizers
(their pretraining: mmcl.pretraining.media).

The image base (tiny.py) is extended, not changed: audio gets Whisper-style log-mel features
(`transformers.WhisperFeatureExtractor`, built from arguments) through a small Whisper encoder
whose frames are average-pooled to a few tokens; video samples VIDEO_FRAMES frames through the
image tower and pools them over time into two segments (start and end, so that motion shows).
Each has its own projector, as in MoInCL: an MLP, plus one "word" token per attribute of the
clip (a sound's kind, pitch, repetitions, rising or falling, loudness; a clip's moving shape,
its colour, direction and speed) — a linear head's distribution over the attribute's values,
mapped through a table initialised with the LM's embeddings of their names, as the image
base's visual words. A 5M LM reads new modalities from continuous features too slowly for a
stream of a few hundred samples per task; with the words it starts by copying what it hears.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from mmcl.data.media import AUDIO_RATE, VIDEO_FRAMES, load_audio, read_video, sample_frames
from mmcl.data.synth.draw import COLOURS, SHAPES
from mmcl.data.synth.media import DIRECTIONS, SOUND_KINDS, SPEED_CELLS
from mmcl.io import seed_everything
from mmcl.models.composed import ComposedBackbone, image_tensor, projector
from mmcl.models.pretrained import WhisperTower
from mmcl.models.tiny import get_preset


@dataclass(frozen=True)
class MediaSizes:
    """Sizes of the audio encoder and video pooling, and of the extension's pretraining."""

    n_mels: int
    audio_hidden: int
    audio_layers: int
    audio_heads: int
    audio_tokens: int  # LM tokens per clip after pooling
    video_segments: int  # temporal segments the sampled frames are pooled into
    head_samples: int  # stage A: sounds and clips (each) for the attribute heads
    head_epochs: int  # audio (the encoder learns too)
    video_head_epochs: int  # video (on fixed features: cheap)
    align_samples: int  # stage B: sounds and clips (each) for the projectors
    align: dict  # TrainSettings fields of stage B


MEDIA_SIZES: dict[str, MediaSizes] = {
    "micro": MediaSizes(
        32, 64, 2, 2, 8, 2, 800, 3, 10, 300, {"epochs": 1, "batch_size": 32, "lr": 3e-3}
    ),
    "tiny": MediaSizes(
        32, 128, 2, 4, 8, 2, 2000, 6, 30, 2000, {"epochs": 1, "batch_size": 32, "lr": 2e-3}
    ),
}
CLIP_SECONDS = 1  # Whisper pads or cuts every clip to this length (its chunk_length)
# Attribute -> (the words naming its values, the value index of a generated clip's meta).
AUDIO_WORDS = {
    "kind": (list(SOUND_KINDS), lambda a: SOUND_KINDS.index(a["kind"])),
    "pitch": (["low", "high"], lambda a: int(a["pitch"] == "high")),
    "count": (["one", "two", "three", "four"], lambda a: a["count"] - 1),
    "rising": (["falling", "rising"], lambda a: int(a["rising"]) if a["kind"] == "chirp" else -100),
    "loudness": (["quiet", "loud"], lambda a: int(a["loudness"] == "loud")),
}
VIDEO_WORDS = {
    "shape": (list(SHAPES), lambda w: SHAPES.index(w["shape"])),
    "colour": (list(COLOURS), lambda w: list(COLOURS).index(w["colour"])),
    "direction": (list(DIRECTIONS), lambda w: list(DIRECTIONS).index(w["direction"])),
    "speed": (list(SPEED_CELLS), lambda w: list(SPEED_CELLS).index(w["speed"])),
}


class AttributeWords(nn.Module):
    """A projector that adds one word token per attribute to the MLP's tokens: a linear head
    on the whole clip gives a distribution over the attribute's values, which a table (rows:
    the LM's embeddings of the values' names) turns into an input embedding."""

    def __init__(self, in_dim: int, out_dim: int, tokens: int, classes: list[int]):
        super().__init__()
        self.mlp = projector(in_dim, out_dim)
        self.heads = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(in_dim * tokens, out_dim), nn.GELU(), nn.Linear(out_dim, n))
                for n in classes
            ]
        )
        self.words = nn.ModuleList([nn.Linear(n, out_dim, bias=False) for n in classes])

    def head_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [h(x.flatten(1)) for h in self.heads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        words = [w(lg.softmax(-1)) for w, lg in zip(self.words, self.head_logits(x), strict=True)]
        return torch.cat([self.mlp(x), torch.stack(words, dim=1)], dim=1)

    @torch.no_grad()
    def init_words(self, names: list[list[str]], embeddings: torch.Tensor, tokenizer) -> None:
        """Point each value at the LM's embedding of (the last token of) its name."""
        for table, vocab in zip(self.words, names, strict=True):
            for j, word in enumerate(vocab):
                ids = tokenizer(f" {word}", add_special_tokens=False)["input_ids"]
                table.weight[:, j] = embeddings[ids[-1]]


class VideoTower(nn.Module):
    """Sampled frames through the image tower, mean-pooled over time into segments; a learned
    embedding per segment tells the LM which is which. The image tower is shared, not owned:
    its weights stay under `encoders.image` (and frozen, as the LM is in pretraining)."""

    def __init__(self, image_tower: nn.Module, segments: int):
        super().__init__()
        self._image = [image_tower]  # a list: not registered as a submodule, no duplicate keys
        self.segments = segments
        self.segment = nn.Parameter(torch.zeros(segments, 1, image_tower.model.config.hidden_size))
        self.num_tokens = segments * image_tower.num_tokens

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, f = frames.shape[:2]
        feats = self._image[0](frames.flatten(0, 1))
        feats = feats.view(b, f, *feats.shape[1:])
        pooled = torch.stack([c.mean(1) for c in feats.chunk(self.segments, dim=1)], dim=1)
        return (pooled + self.segment).flatten(1, 2)


def audio_features(path: Path, extractor: WhisperFeatureExtractor) -> torch.Tensor:
    """An audio file -> (n_mels, frames) Whisper log-mel features."""
    samples = load_audio(path, extractor.sampling_rate)
    feats = extractor(samples, sampling_rate=extractor.sampling_rate, return_tensors="np")
    return torch.from_numpy(feats["input_features"][0])


def video_frames(path: Path, size: int, k: int = VIDEO_FRAMES) -> torch.Tensor:
    """A video file -> (k, 3, size, size) tensor of uniformly sampled frames in [-1, 1] (kept
    across epochs by the backbone's MediaCache, as every modality's features)."""
    return torch.stack([image_tensor(im, size) for im in sample_frames(read_video(path), k)])


def add_media_encoders(backbone: ComposedBackbone, preset_name: str, seed: int) -> None:
    """Give a composed image backbone (randomly initialised) audio and video encoders,
    projectors and featurizers."""
    preset, sizes = get_preset(preset_name), MEDIA_SIZES[preset_name]
    seed_everything(seed)
    extractor = WhisperFeatureExtractor(
        feature_size=sizes.n_mels,
        sampling_rate=AUDIO_RATE,
        hop_length=160,
        chunk_length=CLIP_SECONDS,
        n_fft=400,
    )
    frames = CLIP_SECONDS * AUDIO_RATE // 160
    wcfg = WhisperConfig(
        num_mel_bins=sizes.n_mels,
        d_model=sizes.audio_hidden,
        encoder_layers=sizes.audio_layers,
        encoder_attention_heads=sizes.audio_heads,
        encoder_ffn_dim=2 * sizes.audio_hidden,
        max_source_positions=frames // 2,  # the encoder's second convolution has stride 2
    )
    core = backbone.core
    audio = WhisperTower(WhisperEncoder(wcfg), sizes.audio_tokens)
    video = VideoTower(core.encoders["image"], sizes.video_segments)
    core.encoders.update({"audio": audio, "video": video})
    emb = core.lm.get_input_embeddings().weight
    for m, enc, width, vocab in (
        ("audio", audio, sizes.audio_hidden, AUDIO_WORDS),
        ("video", video, preset.vision_hidden, VIDEO_WORDS),
    ):
        proj = AttributeWords(
            width, preset.lm_hidden, enc.num_tokens, [len(v) for v, _ in vocab.values()]
        )
        proj.init_words([v for v, _ in vocab.values()], emb, backbone.tokenizer)
        core.projectors[m] = proj
        core.token_ids[m] = backbone.tokenizer.convert_tokens_to_ids(f"<{m}>")
        backbone.num_tokens[m] = enc.num_tokens + len(vocab)
    backbone.featurizers.update(
        {
            "audio": partial(audio_features, extractor=extractor),
            "video": partial(video_frames, size=preset.image_size),
        }
    )
    # Every adapter also trains copies (peft's modules_to_save) of the projectors, as MoInCL
    # does, and of the LM's output layer: it is tied to the embeddings, which a LoRA cannot
    # change, and the image base never said "bell" or "left". Measured at lr 2e-3: audio QA
    # (1000 samples x 4 epochs) 52% with the LoRA alone, 95% with the projectors; video QA
    # (400 x 5) 17% with LoRA and projectors, 35% with the output layer too.
    backbone.lora_modules_to_save = (*(f"projectors.{m}" for m in core.projectors), "lm_head")
