"""The composed MLLM as a module: per-modality encoders and projectors spliced into any HF
causal LM (LLaVA's design). `ComposedBackbone` (composed.py) runs it."""

from __future__ import annotations

import torch
from torch import nn


class VisionTower(nn.Module):
    """A CLIP-style vision transformer returning its patch tokens (no CLS)."""

    def __init__(self, vision_model: nn.Module):
        super().__init__()
        self.model = vision_model

    @property
    def num_tokens(self) -> int:
        cfg = self.model.config
        return (cfg.image_size // cfg.patch_size) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 1:]


class Standardize(nn.Module):
    """Per-feature standardisation with fixed statistics (identity until `fit`).

    Encoder features share a large constant offset across tokens; removing it lets the LM see
    how tokens differ from the first step instead of having to learn to cancel the offset."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, feats: torch.Tensor) -> None:
        flat = feats.reshape(-1, feats.shape[-1]).float()
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp(min=1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def projector(in_dim: int, out_dim: int) -> nn.Sequential:
    """LLaVA-1.5's two-layer MLP projector, after a fixed standardisation of the features."""
    return nn.Sequential(
        Standardize(in_dim), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)
    )


class ComposedMLLM(nn.Module):
    def __init__(
        self,
        lm: nn.Module,
        encoders: dict[str, nn.Module],
        projectors: dict[str, nn.Module],
        token_ids: dict[str, int],
    ):
        super().__init__()
        self.lm = lm
        self.encoders = nn.ModuleDict(encoders)
        self.projectors = nn.ModuleDict(projectors)
        self.token_ids = token_ids

    def encode(
        self, modality: str, x: torch.Tensor, input_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Media tensors -> projected features, one per placeholder token. A projector that
        reads the prompt (`reads_prompt`) gets each item's: the tokens of its row of
        `input_ids` before that row's first placeholder (the question, which comes first;
        never the answer, which comes after the media); without `input_ids`, none."""
        feats = self.encoders[modality](x)
        proj = self.projectors[modality]
        if not getattr(proj, "reads_prompt", False):
            return proj(feats)
        return proj(
            feats, None if input_ids is None else self._prompts(input_ids, modality, len(x))
        )

    def _prompts(self, input_ids: torch.Tensor, modality: str, items: int) -> torch.Tensor:
        """(items, L): for each media item, its row's tokens before the row's first
        placeholder of the modality, -1 elsewhere (rows hold items in order)."""
        mask = input_ids == self.token_ids[modality]
        before = (
            torch.arange(input_ids.shape[1], device=input_ids.device)
            < mask.int().argmax(1)[:, None]
        )
        per_row = mask.sum(1) * items // max(int(mask.sum()), 1)
        return input_ids.masked_fill(~before, -1).repeat_interleave(per_row, dim=0)

    def embed(
        self,
        input_ids: torch.Tensor,
        media: dict[str, torch.Tensor],
        encoded: dict[str, torch.Tensor] | None = None,
        prompt_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with each media placeholder's replaced by the media's features
        (`encoded` ones as given, the others encoded here, with the prompts of `prompt_ids`
        if given: the whole rows of which `input_ids` continue a cached prefix)."""
        emb = self.lm.get_input_embeddings()(input_ids)
        prompts = input_ids if prompt_ids is None else prompt_ids
        for m, x in media.items():
            feats = encoded[m] if encoded and m in encoded else self.encode(m, x, prompts)
            mask = (input_ids == self.token_ids[m]).unsqueeze(-1)
            emb = emb.masked_scatter(mask, feats.to(emb.dtype))
        return emb

    def forward(
        self,
        input_ids,
        attention_mask,
        media=None,
        output_hidden_states=False,
        encoded=None,
        cache=None,
        position_ids=None,
        logits_to_keep=0,
        prompt_ids=None,
    ):
        """The LM over the embedded prompt; with `cache`, the tokens after a prefix whose keys
        and values it holds (`attention_mask` then covers both, `position_ids` are given)."""
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.lm(
            inputs_embeds=self.embed(input_ids, media or {}, encoded, prompt_ids),
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=logits_to_keep,
        )

    def generate(self, input_ids, attention_mask, media=None, encoded=None, **kw):
        return self.lm.generate(
            inputs_embeds=self.embed(input_ids, media or {}, encoded),
            attention_mask=attention_mask,
            **kw,
        )
