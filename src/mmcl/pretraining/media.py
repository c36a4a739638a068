"""Audio and video pretraining of the embedded base (models/media.py has the parts).

The extension trains only these new parts on the general audio/video corpus
(synth/pretrain_av.py) with the LM and the vision tower frozen: stage A trains the heads (and
the audio encoder) on the corpus's attribute labels, stage B the projectors' MLPs through the
frozen LM (LLaVA's alignment stage). The result is cached beside the image base, keyed by the
image base and the extension's own sizes and version.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

from mmcl.errors import MmclError
from mmcl.io import (
    cache_dir,
    load_tensors,
    run_alone,
    save_tensors,
    stable_hash,
    torch_threads,
    write_json,
)
from mmcl.models.composed import ComposedBackbone
from mmcl.models.media import AUDIO_WORDS, MEDIA_SIZES, VIDEO_WORDS, add_media_encoders
from mmcl.pretraining import recipe_settings
from mmcl.pretraining.base import base_key, pretrained_backbone

# Bump when the extension's architecture or corpus changes meaning.
MEDIA_VERSION = 3
NEW_PARTS = ("encoders.audio.", "projectors.audio.", "encoders.video.", "projectors.video.")
META_KEY = {"audio": "sound", "video": "clip"}


def _new_parts(backbone: ComposedBackbone) -> dict[str, torch.Tensor]:
    return {k: v for k, v in backbone.state_dict().items() if k.startswith(NEW_PARTS)}


def pretrain_heads(
    backbone: ComposedBackbone, modality: str, records: list, seed: int, epochs: int
) -> dict[str, float]:
    """Stage A: train a projector's attribute heads on the corpus's labels — with the audio
    encoder, which learns to hear here; the video tower stays frozen, so its features are
    computed once. Trains on 90% of the records; returns each head's accuracy on the rest."""
    vocab = AUDIO_WORDS if modality == "audio" else VIDEO_WORDS
    encoder, proj = backbone.core.encoders[modality], backbone.core.projectors[modality]
    y = torch.tensor(
        [[fn(r.meta[META_KEY[modality]]) for _, fn in vocab.values()] for r in records]
    )
    x = torch.stack([backbone.media_cache(modality, r.media[modality][0]) for r in records])
    params = list(proj.heads.parameters())
    if modality == "audio":
        params += list(encoder.parameters())
    else:
        with torch.no_grad():
            x = torch.cat([encoder(c) for c in x.split(64)])

    def logits(idx: torch.Tensor) -> list[torch.Tensor]:
        return proj.head_logits(encoder(x[idx]) if modality == "audio" else x[idx])

    n_train = len(records) - len(records) // 10
    opt = torch.optim.AdamW(params, lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    encoder.train()
    for _ in range(epochs):
        for idx in torch.randperm(n_train, generator=gen).split(64):
            loss = sum(
                F.cross_entropy(lg, y[idx, k], ignore_index=-100)
                for k, lg in enumerate(logits(idx))
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    encoder.eval()
    with torch.no_grad():
        held = torch.arange(n_train, len(records))
        acc = {}
        for k, (name, lg) in enumerate(zip(vocab, logits(held), strict=True)):
            keep = y[held, k] != -100
            acc[name] = round((lg.argmax(-1)[keep] == y[held, k][keep]).float().mean().item(), 4)
    return acc


@torch.no_grad()
def _fit_standardizers(backbone: ComposedBackbone, records: dict[str, list]) -> None:
    core = backbone.core
    for m, recs in records.items():
        x = torch.stack([backbone.media_cache(m, r.media[m][0]) for r in recs[:512]])
        core.projectors[m].mlp[0].fit(core.encoders[m](x))


def extend_modalities(backbone: ComposedBackbone, preset_name: str, seed: int) -> dict:
    """Add audio and video to an image base and pretrain only the new parts; returns figures
    of the pretraining."""
    from mmcl.data.benchmarks import PRETRAIN_AV
    from mmcl.train import train

    sizes = MEDIA_SIZES[preset_name]
    add_media_encoders(backbone, preset_name, seed)
    n = max(sizes.head_samples, sizes.align_samples)
    sounds, clips = PRETRAIN_AV.load(seed, train_size=n, test_size=20)
    t0 = time.perf_counter()
    heads = {
        m: pretrain_heads(backbone, m, t.train[: sizes.head_samples], seed, epochs)
        for m, t, epochs in (
            ("audio", sounds, sizes.head_epochs),
            ("video", clips, sizes.video_head_epochs),
        )
    }
    align = {
        "audio": sounds.train[: sizes.align_samples],
        "video": clips.train[: sizes.align_samples],
    }
    _fit_standardizers(backbone, align)
    core = backbone.core
    backbone.set_trainable(
        {
            n: p
            for n, p in core.named_parameters()
            if n.startswith(("projectors.audio.mlp.", "projectors.video.mlp.", "encoders.video."))
        }
    )
    stats = train(
        backbone,
        [r for pair in zip(*align.values(), strict=True) for r in pair],
        recipe_settings(sizes.align),
        seed,
        desc=f"audio/video pretraining ({preset_name})",
    )
    backbone.set_trainable(None)
    return {
        "head_accuracy": heads,
        "align_loss": stats.loss,
        "seconds": time.perf_counter() - t0,
    }


def media_key(preset_name: str, seed: int) -> str:
    return stable_hash(
        [base_key(preset_name, seed), asdict(MEDIA_SIZES[preset_name]), MEDIA_VERSION]
    )


def media_backbone(preset_name: str = "tiny", seed: int = 0) -> ComposedBackbone:
    """The image base of a preset extended to audio and video: from the cache, or trained once."""
    if preset_name not in MEDIA_SIZES:
        raise MmclError(f"preset {preset_name!r} has no audio/video sizes; use {list(MEDIA_SIZES)}")
    folder = cache_dir() / "base" / f"{preset_name}-av-{media_key(preset_name, seed)}"
    weights = folder / "media.safetensors"
    # Under a launch, a miss is trained outside it, before this process loads any base.
    if not weights.exists() and run_alone(media_backbone, preset_name, seed):
        return media_backbone(preset_name, seed)
    backbone = pretrained_backbone(preset_name, seed)
    if weights.exists():
        add_media_encoders(backbone, preset_name, seed)
        state = backbone.state_dict()
        state.update(load_tensors(weights))
        backbone.load_state_dict(state)
        return backbone
    with torch_threads(1):  # as the image base, so the key names one set of weights
        info = extend_modalities(backbone, preset_name, seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "info.json", {"sizes": asdict(MEDIA_SIZES[preset_name]), **info})
    save_tensors(weights, _new_parts(backbone))  # last: its presence marks a complete cache
    return backbone
