"""The tiny model's initialisation (which LM layers start as identity copies) and its image
tokens' marks of what the prompt asks about."""

from __future__ import annotations

import dataclasses

import torch

from mmcl.data.synth.pretrain import CELL_VOCABS
from mmcl.models.tiny import build_backbone, get_preset
from mmcl.pretraining.base import pretrained_backbone


def _is_copy(layer) -> bool:
    attn = layer.self_attn
    eye = torch.eye(*attn.v_proj.weight.shape)
    return torch.equal(attn.v_proj.weight, eye) and torch.equal(attn.o_proj.weight, eye)


def test_only_the_presets_last_layers_start_as_identity_copies():
    micro = get_preset("micro")
    tok = pretrained_backbone("micro").tokenizer  # the session's cached micro base
    for copies in (0, 1, 2):
        preset = dataclasses.replace(micro, copy_layers=copies)
        layers = build_backbone(preset, tok).core.lm.model.layers
        assert [_is_copy(layer) for layer in layers] == [False] * (micro.lm_layers - copies) + [
            True
        ] * copies
    assert get_preset("tiny").copy_layers == 1 and micro.copy_layers == 2


def _micro():
    tok = pretrained_backbone("micro").tokenizer
    return build_backbone(get_preset("micro"), tok), tok


def _one_hot(labels: list[tuple[str, str, str]]) -> list[torch.Tensor]:
    """Head probabilities (1, tokens, classes) per head, each token sure of its labels."""
    return [
        torch.nn.functional.one_hot(
            torch.tensor([vocab.index(lab[k]) for lab in labels]), len(vocab)
        ).float()[None]
        for k, vocab in enumerate(CELL_VOCABS.values())
    ]


def test_marks_are_what_the_prompt_names_of_each_token():
    backbone, tok = _micro()
    proj = backbone.core.projectors["image"]
    probs = _one_hot(
        [
            ("shape:circle", "red", "plain"),
            ("shape:circle", "blue", "plain"),
            ("shape:square", "red", "plain"),
            ("letter:A", "red", "button"),
            ("empty", "none", "plain"),
        ]
    )
    expected = {
        "how many red circles are there?": [1, 0, 0, 0, 0],
        "is there a circle in the image?": [1, 1, 0, 0, 0],
        "how many red objects are there?": [1, 0, 1, 1, 0],
        "how many shapes are there?": [1, 1, 1, 0, 0],
        # a kind word of several tokens: any colour but black
        "how many coloured objects are there?": [1, 1, 1, 1, 0],
        "is there a colored square in the image?": [0, 0, 1, 0, 0],
        "is there a red button labelled A in the image?": [0, 0, 0, 1, 0],
        "describe the image.": [0, 0, 0, 0, 0],
    }
    for question, marks in expected.items():
        prompt = torch.tensor([tok(f"user: {question}").input_ids])
        assert proj.marks(probs, prompt)[0].tolist() == marks, question


def test_image_tokens_read_the_prompt_before_them_never_the_answer():
    backbone, tok = _micro()
    core = backbone.core
    image = core.token_ids["image"]
    n = core.encoders["image"].num_tokens

    def row(question: str, answer: str) -> list[int]:
        return tok(f"user: {question}").input_ids + [image] * n + tok(answer).input_ids

    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        embeds = {
            (q, a): core.embed(torch.tensor([row(q, a)]), {"image": pixels})
            for q in ("how many red circles are there?", "how many blue squares are there?")
            for a in (" 1", " 3")
        }
    at = slice(len(tok("user: how many red circles are there?").input_ids), None)
    red, blue = (q for q in {q for q, _ in embeds})
    for q in (red, blue):  # the answer after the image changes none of its tokens
        assert torch.equal(embeds[q, " 1"][0, at][:n], embeds[q, " 3"][0, at][:n])
    assert not torch.equal(embeds[red, " 1"][0, at][:n], embeds[blue, " 1"][0, at][:n])
    # Each item of a row reads the row's prompt; a row without the modality has no item.
    ids = torch.tensor([row("a", " b"), [tok.pad_token_id] * len(row("a", " b"))])
    prompts = core._prompts(ids, "image", 1)
    assert prompts.shape == (1, ids.shape[1])
    assert (prompts[0, : len(tok("user: a").input_ids)] >= 0).all()
    assert (prompts[0, len(tok("user: a").input_ids) :] == -1).all()
