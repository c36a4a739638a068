"""The embedded default model: presets, a locally trained tokenizer, and base pretraining.

`micro` (~1M parameters, for tests) and `tiny` (~5M, the default) are real `transformers`
architectures (a CLIP vision transformer and a Llama LM) built from configs. Base pretraining
on the general synthetic corpus (data/synth/pretrain.py) stands in for the pretrained MLLM; its
result is cached by a hash of everything that defines it.
"""

from __future__ import annotations

import string
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib.resources import files
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from mmcl.errors import MmclError
from mmcl.io import cache_dir, load_tensors, save_tensors, seed_everything, stable_hash, write_json
from mmcl.models.composed import ComposedBackbone, ComposedMLLM, VisionTower, load_image, projector
from mmcl.train import TrainSettings

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<audio>", "<video>"]
# Bump when the architecture code or the pretraining corpus changes meaning.
BASE_VERSION = 2


@dataclass(frozen=True)
class Preset:
    """Sizes of the tiny composed MLLM and of its base-pretraining stage."""

    image_size: int
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    lm_hidden: int
    lm_layers: int
    lm_heads: int
    lm_intermediate: int
    vocab_size: int
    vision_samples: int  # stage 1: per-cell classification (stands in for CLIP pretraining)
    align_samples: int  # stage 2: projector + LM on questions about scenes (as LLaVA)
    pretrain: dict = field(default_factory=dict)  # TrainSettings fields of stage 2


PRESETS: dict[str, Preset] = {
    "micro": Preset(
        32, 8, 64, 2, 2, 96, 2, 2, 192, 600, 3000, 3000, {"epochs": 1, "batch_size": 32, "lr": 3e-3}
    ),
    "tiny": Preset(
        64,
        16,
        128,
        3,
        4,
        256,
        4,
        4,
        512,
        1000,
        20000,
        12000,
        {"epochs": 1, "batch_size": 32, "lr": 2e-3},
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise MmclError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def tokenizer_corpus(n_scenes: int = 2000) -> list[str]:
    """Text the tokenizer is trained on: the built-in vocabulary and pretraining prompts."""
    from mmcl.data.synth import sample_rng
    from mmcl.data.synth.pretrain import make_scene

    vocab = files("mmcl.assets").joinpath("vocabulary.txt").read_text()
    texts = [vocab]
    for i in range(n_scenes):
        s = make_scene(sample_rng(0, "tokenizer", "train", i), "train")
        texts.append(f"user: {s.question}\nassistant: {s.answers[0]}")
    return texts


def train_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained offline; capitals and digits are always single tokens, so that
    reading text and numbers is compositional."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(),
            pre_tokenizers.Split(Regex(r"[A-Z0-9]|[^\w\s▁]"), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace()
    alphabet = sorted(set(string.printable) - set(" \t\r\x0b\x0c")) + ["▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens=["<image>", "<audio>", "<video>"],
    )


def build_backbone(preset: Preset, tokenizer, seed: int = 0) -> ComposedBackbone:
    """A randomly initialised composed MLLM of the preset's size."""
    seed_everything(seed)
    vcfg = CLIPVisionConfig(
        image_size=preset.image_size,
        patch_size=preset.patch_size,
        hidden_size=preset.vision_hidden,
        intermediate_size=preset.vision_hidden * 2,
        num_hidden_layers=preset.vision_layers,
        num_attention_heads=preset.vision_heads,
        projection_dim=8,
    )
    lcfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.lm_hidden,
        intermediate_size=preset.lm_intermediate,
        num_hidden_layers=preset.lm_layers,
        num_attention_heads=preset.lm_heads,
        num_key_value_heads=preset.lm_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    tower = VisionTower(CLIPVisionModel(vcfg))
    lm = LlamaForCausalLM(lcfg)
    core = ComposedMLLM(
        lm,
        {"image": tower},
        {"image": projector(preset.vision_hidden, preset.lm_hidden)},
        {"image": tokenizer.convert_tokens_to_ids("<image>")},
    )
    return ComposedBackbone(
        core,
        tokenizer,
        {"image": partial(load_image, size=preset.image_size)},
        {"image": tower.num_tokens},
    )


def pretrain_vision(
    backbone: ComposedBackbone,
    records: list,
    seed: int,
    epochs: int = 2,
    batch_size: int = 64,
    lr: float = 2e-3,
) -> float:
    """Stage 1: teach the vision encoder to see, by classifying each grid cell's content and
    colour from its patch token (linear heads, discarded afterwards). Returns the accuracy of
    the last epoch."""
    from mmcl.data.synth.pretrain import CELL_CLASSES, CELL_COLOURS

    tower = backbone.core.encoders["image"]
    width = tower.model.config.hidden_size
    heads = nn.ModuleList(
        [nn.Linear(width, len(CELL_CLASSES)), nn.Linear(width, len(CELL_COLOURS))]
    )
    what_ix = {c: i for i, c in enumerate(CELL_CLASSES)}
    colour_ix = {c: i for i, c in enumerate(CELL_COLOURS)}
    pixels = torch.stack([backbone.featurizers["image"](r.media["image"][0]) for r in records])
    labels = torch.tensor(
        [[[what_ix[w], colour_ix[c]] for w, c in r.meta["cells"]] for r in records]
    )  # (N, cells, 2)
    if tower.num_tokens != labels.shape[1]:
        raise MmclError(
            f"vision pretraining needs one patch per grid cell; the preset has "
            f"{tower.num_tokens} patches for {labels.shape[1]} cells"
        )
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    tower.train()
    correct = total = 0
    for _ in range(epochs):
        correct = total = 0
        for idx in torch.randperm(len(records), generator=gen).split(batch_size):
            feats = tower(pixels[idx])
            y = labels[idx]
            logits = [h(feats) for h in heads]
            loss = sum(
                F.cross_entropy(lg.flatten(0, 1), y[..., k].flatten())
                for k, lg in enumerate(logits)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += (logits[0].argmax(-1) == y[..., 0]).sum().item()
            total += y[..., 0].numel()
    tower.eval()
    with torch.no_grad():
        backbone.core.projectors["image"][0].fit(tower(pixels[:2048]))
    return correct / total


def base_key(preset_name: str, seed: int) -> str:
    preset = get_preset(preset_name)
    vocab = files("mmcl.assets").joinpath("vocabulary.txt").read_text()
    return stable_hash([asdict(preset), seed, BASE_VERSION, vocab])


def pretrained_backbone(preset_name: str = "tiny", seed: int = 0) -> ComposedBackbone:
    """The base-pretrained model of a preset: loaded from the cache, or trained once and cached."""
    from mmcl.data.benchmarks import PRETRAIN
    from mmcl.train import train

    preset = get_preset(preset_name)
    folder = cache_dir() / "base" / f"{preset_name}-{base_key(preset_name, seed)}"
    weights = folder / "model.safetensors"
    if weights.exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder / "tokenizer"))
        backbone = build_backbone(preset, tokenizer, seed)
        backbone.load_state_dict(load_tensors(weights))
        return backbone
    tokenizer = train_tokenizer(preset.vocab_size)
    backbone = build_backbone(preset, tokenizer, seed)
    (task,) = PRETRAIN.load(seed, train_size=preset.vision_samples, test_size=50)
    t0 = time.perf_counter()
    vision_acc = pretrain_vision(backbone, task.train, seed)
    # Stage 2 as LLaVA: the encoder stays frozen, projector and LM learn to use it.
    backbone.set_trainable(
        {n: p for n, p in backbone.core.named_parameters() if not n.startswith("encoders.")}
    )
    stats = train(
        backbone,
        task.train[: preset.align_samples],
        TrainSettings(**preset.pretrain),
        seed,
        desc=f"base pretraining ({preset_name})",
    )
    stats.seconds = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    write_json(
        folder / "info.json",
        {
            "preset": asdict(preset),
            "seed": seed,
            "vision_cell_accuracy": vision_acc,
            "pretrain_seconds": stats.seconds,
            "pretrain_loss": stats.loss,
        },
    )
    save_tensors(weights, backbone.state_dict())  # last: its presence marks a complete cache
    return backbone


def cached_base_info(preset_name: str, seed: int) -> Path:
    return cache_dir() / "base" / f"{preset_name}-{base_key(preset_name, seed)}" / "info.json"
