"""The tiny model's initialisation: which LM layers start as identity copies."""

from __future__ import annotations

import dataclasses

import torch

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
