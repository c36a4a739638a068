"""The tiny model's initialisation: which LM layers start as identity copies, and which heads
start matching alike tokens."""

from __future__ import annotations

import dataclasses

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mmcl.models.tiny import build_backbone, get_preset, match_init
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


def test_the_first_layers_first_heads_start_matching_alike_tokens():
    """From a token, the matching head attends to an earlier token like it more than to any
    other earlier token, dozens of positions back; the other heads and layers do not."""
    cfg = LlamaConfig(
        vocab_size=200,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    lm = LlamaForCausalLM(cfg)
    match_init(lm, layers=2)
    hits = torch.zeros(cfg.num_hidden_layers, cfg.num_attention_heads)
    for trial in range(20):
        ids = torch.randperm(cfg.vocab_size)[:40]  # 40 distinct tokens...
        ids[-1] = ids[trial]  # ...but the last repeats an earlier one, 21 to 39 positions back
        with torch.no_grad():
            attn = lm(ids[None], output_attentions=True).attentions
        for k, a in enumerate(attn):
            earlier = a[0, :, -1, :-1]  # from the last token to every earlier one, per head
            hits[k] += earlier.argmax(-1) == trial
    assert hits[:2, 0].tolist() == [20, 20]
    assert hits[:2, 1:].max() < 10 and hits[2].max() < 10
