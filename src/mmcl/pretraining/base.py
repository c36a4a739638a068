"""Base pretraining of the embedded default model: its tokenizer, then two stages on the
general corpus (data/synth/pretrain.py), as CLIP then LLaVA: the vision encoder learns to see
(per-cell classification), then projector and LM learn to answer about scenes. The result is
cached by a hash of everything that defines it (`base_key`); the default base ships with the
package under that key (assets/bases/), so every machine starts from the same weights.
"""

from __future__ import annotations

import filecmp
import string
import time
from dataclasses import asdict
from importlib.resources import files
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import PreTrainedTokenizerFast

from mmcl.data.synth import sample_rng
from mmcl.data.synth.draw import NUMBER_WORDS
from mmcl.data.synth.pretrain import (
    CELL_CLASSES,
    CELL_VOCABS,
    cell_word,
    make_scene,
    object_count,
)
from mmcl.errors import MmclError
from mmcl.io import (
    cache_dir,
    load_tensors,
    read_json,
    run_alone,
    save_tensors,
    stable_hash,
    torch_threads,
    write_json,
)
from mmcl.models.composed import ComposedBackbone
from mmcl.models.tiny import SPECIALS, build_backbone, get_preset
from mmcl.pretraining import recipe_settings
from mmcl.question_types import qtype_scores

# Bump when the architecture code or the pretraining corpus changes meaning.
BASE_VERSION = 13


def tokenizer_corpus(n_scenes: int = 2000) -> list[str]:
    """Text the tokenizer is trained on: the built-in vocabulary and pretraining prompts."""
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


def cell_labels(backbone: ComposedBackbone, records: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels (N, 3, H, W) of the pretraining scenes and their per-cell labels (N, cells, 3):
    indices into CELL_CLASSES, CELL_COLOURS and CELL_FRAMES."""
    index = [{c: i for i, c in enumerate(v)} for v in CELL_VOCABS.values()]
    pixels = torch.stack([backbone.featurizers["image"](r.media["image"][0]) for r in records])
    labels = torch.tensor(
        [
            [[ix[v] for ix, v in zip(index, cell, strict=True)] for cell in r.meta["cells"]]
            for r in records
        ]
    )
    patches = backbone.core.encoders["image"].num_tokens
    if patches != labels.shape[1]:
        raise MmclError(
            f"vision pretraining needs one patch per grid cell; the preset has "
            f"{patches} patches for {labels.shape[1]} cells"
        )
    return pixels, labels


def pretrain_vision(
    backbone: ComposedBackbone,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    epochs: int = 2,
    batch_size: int = 64,
    lr: float = 2e-3,
) -> tuple[dict[str, float], dict[str, float]]:
    """Stage 1: teach the vision encoder to see, by classifying each grid cell's content, colour
    and frame from its patch token with the projector's visual-word heads (as CLIP's
    pretraining, on our corpus). Returns the last epoch's accuracy per head on every cell, and
    on the cells that hold an object: most cells are empty, and an empty cell's colour ("none")
    is easy, so the first hides what the second shows (a letter's colour is the hard part)."""
    tower = backbone.core.encoders["image"]
    proj = backbone.core.projectors["image"]
    heads = proj.heads
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    tower.train()
    for _ in range(epochs):
        correct, total = torch.zeros(len(heads), 2), torch.zeros(2)  # every cell, objects
        for idx in torch.randperm(len(pixels), generator=gen).split(batch_size):
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
            objects = y[..., 0] != CELL_CLASSES.index("empty")
            for k, lg in enumerate(logits):
                hit = lg.argmax(-1) == y[..., k]
                correct[k] += torch.stack([hit.sum(), hit[objects].sum()])
            total += torch.tensor([objects.numel(), objects.sum()])
    tower.eval()
    with torch.no_grad():
        proj.mlp[0].fit(torch.cat([tower(x) for x in pixels[:2048].split(256)]))
    every, objects = (correct / total).T.tolist()
    return dict(zip(CELL_VOCABS, every, strict=True)), dict(zip(CELL_VOCABS, objects, strict=True))


@torch.no_grad()
def position_probe(backbone: ComposedBackbone, pixels: torch.Tensor, seed: int) -> float:
    """How often a linear probe finds an image token's grid cell from what the LM receives for
    it (the projected token), on images held out from the probe's training (80/20 split)."""
    core = backbone.core
    feats = torch.cat([core.encode("image", x) for x in pixels.split(256)])
    n, tokens, dim = feats.shape
    x, y = feats.flatten(0, 1), torch.arange(tokens).repeat(n)
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-4)
    split = int(0.8 * n) * tokens
    probe = nn.Linear(dim, tokens)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    torch.manual_seed(seed)
    with torch.enable_grad():
        for _ in range(200):
            loss = F.cross_entropy(probe(x[:split]), y[:split])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return (probe(x[split:]).argmax(-1) == y[split:]).float().mean().item()


@torch.no_grad()
def heldout_accuracy(backbone: ComposedBackbone, records: list) -> dict[str, float]:
    """Exact-match accuracy (%) of the base's answers per question form (`qtype`), on held-out
    scenes of its own corpus: how well it does what it was taught. `describe` lists every
    object in reading order, each once, which `ability`'s OCR builds on. Each form is scored
    on the scenes of a single object too ("colour, one object"): there the answer needs no
    search among objects, only reading the one there is."""
    answers = []
    for i in range(0, len(records), 64):
        batch = backbone.collate(records[i : i + 64], train=False)
        answers += backbone.generate(batch, max_new_tokens=64)  # six objects described
    single = [k for k, r in enumerate(records) if object_count(r.meta["cells"]) == 1]
    one = qtype_scores("compact-exact", [answers[k] for k in single], [records[k] for k in single])
    return {
        **qtype_scores("compact-exact", answers, records),
        **{f"{form}, one object": score for form, score in one.items()},
    }


def init_visual_words(backbone: ComposedBackbone) -> None:
    """Point each class of the visual-word heads at the LM's embedding of the word that names it
    ("letter:A" -> "A", "red", "button"); classes that name nothing stay at zero. Point the
    position code of row r and of column c at the number words that name them ("row two column
    three"), so that copying a token also says where it is. Measured on base seed 0, the same
    corpus: held-out scenes described in reading order 60% of the time with a random code, 94%
    with the words."""
    proj = backbone.core.projectors["image"]
    emb = backbone.core.lm.get_input_embeddings().weight
    tok = backbone.tokenizer

    def embedding(word: str) -> torch.Tensor:
        return emb[tok(f" {word}", add_special_tokens=False).input_ids[-1]]

    words = [cell_word(c) for v in CELL_VOCABS.values() for c in v]
    numbers = torch.stack([embedding(w) for w in NUMBER_WORDS[: proj.rows.shape[0]]])
    with torch.no_grad():
        proj.words.weight.zero_()
        for j, w in enumerate(words):
            if w is not None:
                proj.words.weight[:, j] = embedding(w)
        proj.rows.copy_(numbers[:, None, :])
        proj.cols.copy_(numbers[None, :, :])


def base_key(preset_name: str, seed: int) -> str:
    preset = get_preset(preset_name)
    vocab = files("mmcl.assets").joinpath("vocabulary.txt").read_text()
    return stable_hash([asdict(preset), seed, BASE_VERSION, vocab])


def shipped_bases() -> Path:
    """The folder of the bases that ship with the package (`<preset>-<key>` each)."""
    return Path(str(files("mmcl").joinpath("assets", "bases")))


def base_folder(preset_name: str, seed: int) -> Path:
    """Where the base of a preset and seed is: shipped with the package, or in the cache."""
    name = f"{preset_name}-{base_key(preset_name, seed)}"
    shipped = shipped_bases() / name
    return shipped if (shipped / "model.safetensors").is_file() else cache_dir() / "base" / name


def pretrained_backbone(preset_name: str = "tiny", seed: int = 0) -> ComposedBackbone:
    """The base-pretrained model of a preset: the shipped one, or the cached one, or trained once
    and cached."""
    preset = get_preset(preset_name)
    folder = base_folder(preset_name, seed)
    weights = folder / "model.safetensors"
    if weights.exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder / "tokenizer"))
        backbone = build_backbone(preset, tokenizer, seed)
        backbone.load_state_dict(load_tensors(weights))
        return backbone
    if run_alone(pretrained_backbone, preset_name, seed):  # under a launch: trained outside it
        return pretrained_backbone(preset_name, seed)
    return train_base(preset_name, seed, folder)


def train_base(preset_name: str, seed: int, folder: Path) -> ComposedBackbone:
    """Train the base of a preset and seed from nothing into `folder` (weights, tokenizer and
    info.json). On one thread whatever the caller's setting: how a sum is split among threads
    changes its rounding, and bases built with 2 threads and with 1 differed under the same key.
    So a key names one set of weights (on a kind of CPU), whichever command built it."""
    with torch_threads(1):
        return _train_base(preset_name, seed, folder)


def retrain_base(preset_name: str, seed: int, out: Path) -> tuple[dict, Path, bool | None]:
    """Train the base of a preset and seed from nothing into `out`, apart from the one in use.
    Returns its info.json, the folder of the base in use, and whether their weights are the
    same bytes (None: no base of it in use yet)."""
    used = base_folder(preset_name, seed) / "model.safetensors"
    train_base(preset_name, seed, out)
    same = filecmp.cmp(used, out / "model.safetensors", shallow=False) if used.exists() else None
    return read_json(out / "info.json"), used.parent, same


def _train_base(preset_name: str, seed: int, folder: Path) -> ComposedBackbone:
    from mmcl.data.benchmarks import PRETRAIN
    from mmcl.train import train

    preset = get_preset(preset_name)
    weights = folder / "model.safetensors"
    tokenizer = train_tokenizer(preset.vocab_size)
    backbone = build_backbone(preset, tokenizer, seed)
    (task,) = PRETRAIN.load(seed, train_size=preset.vision_samples, test_size=1000)
    t0 = time.perf_counter()
    pixels, labels = cell_labels(backbone, task.train)
    vision_acc, object_acc = pretrain_vision(backbone, pixels, labels, seed)
    init_visual_words(backbone)
    # Stage 2 as LLaVA: the encoder stays frozen, projector and LM learn to use it, on scenes
    # of every look: an LM taught on the clean renders alone answered the streams' looks with
    # nothing or a word repeated (base v11: `scenario` zero-shot MFN 3.0 and 12.9, bases 0, 1).
    backbone.set_trainable(backbone.non_encoder_parameters())
    stats = train(
        backbone,
        task.train[: preset.align_samples],
        recipe_settings(preset.pretrain),
        seed,
        desc=f"base pretraining ({preset_name})",
    )
    stats.seconds = time.perf_counter() - t0
    probe = position_probe(backbone, pixels[-1000:], seed)
    heldout = heldout_accuracy(backbone, [r for r in task.test if r.meta["clean"]])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    write_json(
        folder / "info.json",
        {
            "preset": asdict(preset),
            "seed": seed,
            "vision_cell_accuracy": vision_acc,
            "vision_object_accuracy": object_acc,
            "position_probe": probe,
            "heldout_exact": heldout,
            "pretrain_seconds": stats.seconds,
            "pretrain_loss": stats.loss,
        },
    )
    save_tensors(weights, backbone.state_dict())  # last: its presence marks a complete cache
    return backbone


def base_info(preset_name: str, seed: int) -> Path:
    """The info.json of the base of a preset and seed (shipped or cached)."""
    return base_folder(preset_name, seed) / "info.json"
