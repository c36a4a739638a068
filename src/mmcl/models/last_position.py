"""The last decoder layer of a pass whose only output read is each row's last position (a
router's next-token scores): it computes the keys and values of every position, which that
position attends to, but the query, attention output and MLP of the last position only. On a
Llama layer that is about a fifth of the layer's work; the output at that position is the
layer's own (the test checks it against the whole layer).

Only Llama decoder layers are known to have this structure; `reading_last` leaves any other
layer whole.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    apply_rotary_pos_emb,
    eager_attention_forward,
)


class LastPositionLayer(nn.Module):
    """`layer`, run for the last position only; returns (B, 1, hidden)."""

    def __init__(self, layer: LlamaDecoderLayer):
        super().__init__()
        self.layer = layer

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        layer, attn = self.layer, self.layer.self_attn
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        x = layer.input_layernorm(hidden_states)
        rows, length = x.shape[:2]
        q = attn.q_proj(x[:, -1:]).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(rows, length, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(rows, length, -1, attn.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, _ = apply_rotary_pos_emb(q, q, cos[:, -1:], sin[:, -1:])
        _, k = apply_rotary_pos_emb(k, k, cos, sin)
        if cache is not None:  # a shared prefix's keys and values come first
            k, v = cache.update(k, v, attn.layer_idx)
        if attention_mask is not None:
            attention_mask = attention_mask[..., -1:, :]
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(
            attn.config._attn_implementation, eager_attention_forward
        )
        out, _ = attend(attn, q, k, v, attention_mask, dropout=0.0, scaling=attn.scaling)
        h = hidden_states[:, -1:] + attn.o_proj(out.reshape(rows, 1, -1))
        return h + layer.mlp(layer.post_attention_layernorm(h))


def reading_last(layer: nn.Module) -> nn.Module:
    """`layer` computing its last position only, where its structure is known; else itself."""
    return LastPositionLayer(layer) if isinstance(layer, LlamaDecoderLayer) else layer
