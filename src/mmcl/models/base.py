"""The backbone interface every model sits behind, and what is shared by all backbones.

A backbone turns records into a Batch, computes the answer-only token loss, generates answers
(batched, greedy, KV-cached), and exposes the few things methods need: LoRA adapters (through
peft, so that one batch can mix adapters with `adapter_names`), pooled hidden states, and the
vision-encoder blocks. Subclasses implement `collate`, `_forward` and `_generate`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import BaseModel, Field
from torch import nn

from mmcl.data.records import Record
from mmcl.errors import MmclError

IGNORE = -100


def is_per_token(t: torch.Tensor, input_ids: torch.Tensor) -> bool:
    """Whether a processor output has one entry per input token (e.g. Qwen2-VL's token types),
    rather than per image."""
    return t.dim() >= 2 and t.shape[:2] == input_ids.shape


@dataclass
class Batch:
    """Model inputs for a list of records. `labels` is -100 everywhere but answer tokens."""

    records: list[Record]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None
    media: dict[str, torch.Tensor] = field(default_factory=dict)
    # The media already encoded and projected (see `Backbone.encode_media`): the model reads
    # these instead of running its encoders again.
    encoded: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def with_suffix(self, tokens: list[int]) -> Batch:
        """The batch with the same text tokens appended to every prompt (a test batch: left
        padded, so they follow each prompt directly). Per-token extras among the media (e.g.
        Qwen2-VL's token types) get 0, a text token's value, as the backbones' collate gives."""
        ids = self.input_ids
        b, n = len(ids), len(tokens)
        extra = torch.tensor(tokens, dtype=ids.dtype, device=ids.device).expand(b, -1)

        def grow(t: torch.Tensor) -> torch.Tensor:
            if not is_per_token(t, ids):
                return t
            return torch.cat([t, t.new_zeros((b, n, *t.shape[2:]))], 1)

        return Batch(
            self.records,
            torch.cat([ids, extra], 1),
            torch.cat([self.attention_mask, self.attention_mask.new_ones((b, n))], 1),
            None,
            {k: grow(v) for k, v in self.media.items()},
            self.encoded,
        )

    def to(self, device: torch.device | str) -> Batch:
        def move(t):
            return None if t is None else t.to(device)

        return Batch(
            self.records,
            move(self.input_ids),
            move(self.attention_mask),
            move(self.labels),
            {k: v.to(device) for k, v in self.media.items()},
            {k: v.to(device) for k, v in self.encoded.items()},
        )


@dataclass
class Outputs:
    loss: torch.Tensor
    logits: torch.Tensor  # (B, L, V), position t predicts token t + 1
    labels: torch.Tensor  # (B, L)
    hidden: torch.Tensor | None = None  # (B, H): mean of the last hidden layer over the prompt

    @property
    def answer_mask(self) -> torch.Tensor:
        """(B, L-1) mask of the positions whose next token is an answer token."""
        return self.labels[:, 1:] != IGNORE


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over answer tokens only."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE
    )


class LoraSpec(BaseModel, extra="forbid"):
    """LoRA settings; `targets` is a regex on module names (full match)."""

    r: int = Field(16, ge=1, description="rank")
    alpha: int = Field(32, ge=1, description="scale alpha / r; 2r keeps it as the rank changes")
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: str | None = Field(None, description="default: all linear layers of the LM")
    vision: bool = Field(False, description="also adapt the vision encoder")


class Backbone(ABC):
    """Shared behaviour of backbones; `core` is the plain nn.Module, `model` what trains.
    A backbone implements `collate`, `_forward` and `_generate`; the rest is shared."""

    lm_lora_targets: str  # regex of the language model's linear layers
    vision_lora_targets: str | None = None
    # Modules every adapter trains a full copy of (peft's modules_to_save), e.g. projectors.
    lora_modules_to_save: tuple[str, ...] = ()

    def __init__(self, core: nn.Module, tokenizer, max_new_tokens: int = 24):
        self.core = core
        self.model: nn.Module = core
        # While a task trains, `model` is what accelerate made of the model (a DDP wrapper, or
        # under FSDP a sharded copy) and `plain` the model itself; otherwise None.
        self.plain: nn.Module | None = None
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        # Training forward passes run the prefix that every row of a batch shares once (see
        # `sharing_prefix`); backbones that cannot ignore it.
        self.share_prefix = False

    # --- subclasses -------------------------------------------------------------------------
    @abstractmethod
    def collate(self, records: Sequence[Record], train: bool = True) -> Batch:
        """Records -> Batch; `train` puts answers in the sequence (right padding), else prompts
        only (left padding, for generation)."""

    @abstractmethod
    def _forward(self, batch: Batch, hidden: bool, **kw) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits, last hidden states)."""

    @abstractmethod
    def _generate(self, batch: Batch, max_new_tokens: int, **kw) -> torch.Tensor:
        """Return generated token ids for `generate` to decode."""

    def vision_blocks(self) -> list[nn.Module]:
        raise MmclError(f"{type(self).__name__} exposes no vision-encoder blocks")

    @abstractmethod
    def encoder_parameters(self) -> dict[str, nn.Parameter]:
        """The media encoders' parameters (by name in `core`), which training leaves frozen
        unless a method asks for them (as LLaVA freezes its vision tower)."""

    def non_encoder_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter of `core` but the media encoders' (LM and projectors)."""
        frozen = self.encoder_parameters()
        return {n: p for n, p in self.core.named_parameters() if n not in frozen}

    # --- shared -----------------------------------------------------------------------------
    @contextmanager
    def sharing_prefix(self) -> Iterator[None]:
        """Within: a batch whose prompts share a long prefix (a router's expert list) runs it
        once per batch in training too, so that a growing prefix costs little (the logits are
        the same up to float rounding)."""
        old, self.share_prefix = self.share_prefix, True
        try:
            yield
        finally:
            self.share_prefix = old

    def _decoder(self) -> nn.Module | None:
        """The language model's module holding its decoder `layers` (None: not exposed)."""
        return None

    @contextmanager
    def first_layers(self, n: int | None) -> Iterator[None]:
        """Within: the language model runs only its first `n` decoder layers, then its final
        norm and head (a shallow pass, e.g. a router's); None leaves it whole."""
        if n is None:
            yield
            return
        body = self._decoder()
        if body is None:
            raise MmclError(f"{type(self).__name__} cannot run part of its language model")
        layers = body.layers
        if not 1 <= n <= len(layers):
            raise MmclError(f"the language model has {len(layers)} layers; cannot run {n}")
        body.layers = layers[:n]
        try:
            yield
        finally:
            body.layers = layers

    def encode_media(self, batch: Batch) -> Batch:
        """Encode the batch's media once for every pass over it (a router's, then an
        expert's), keeping the features on the batch (in place) when no adapter can change
        them; backbones that cannot leave the batch as it is."""
        return batch

    @property
    def device(self) -> torch.device:
        return next(self.core.parameters()).device

    def forward(
        self, batch: Batch, adapter_names: list[str] | None = None, hidden: bool = False
    ) -> Outputs:
        kw = {"adapter_names": adapter_names} if adapter_names is not None else {}
        logits, h = self._forward(batch, hidden, **kw)
        labels = batch.labels
        if labels is not None and logits.shape[1] < labels.shape[1]:
            # The backbone ran a prefix shared by every row once and gave the logits of the
            # positions after it (a prefix is prompt: none of its tokens is an answer).
            labels = labels[:, -logits.shape[1] :]
        loss = answer_loss(logits, labels) if labels is not None else logits.new_zeros(())
        pooled = None
        if hidden:
            m = batch.attention_mask.unsqueeze(-1).to(h.dtype)
            if batch.labels is not None:  # pool over the prompt, not the answer
                m = m * (batch.labels == IGNORE).unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return Outputs(
            loss,
            logits,
            labels if labels is not None else torch.full_like(batch.input_ids, IGNORE),
            pooled,
        )

    @torch.no_grad()
    def next_token_logits(self, batch: Batch) -> torch.Tensor:
        """(B, V) scores of the token that follows each prompt of a left-padded batch (as
        `collate(..., train=False)` makes it): one forward pass of the active adapter."""
        self.model.eval()
        logits, _ = self._forward(batch, False)
        return logits[:, -1]

    @torch.no_grad()
    def generate(
        self,
        batch: Batch,
        adapter_names: list[str] | None = None,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """Greedy answers for a prompt-only batch (KV-cached, one call for the whole batch)."""
        kw = {"adapter_names": adapter_names} if adapter_names is not None else {}
        was_training = self.model.training
        self.model.eval()
        try:
            out = self._generate(batch, max_new_tokens or self.max_new_tokens, **kw)
        finally:
            self.model.train(was_training)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def input_embeddings(self) -> nn.Embedding:
        """The language model's token embedding: its width is that of the hidden states, and
        prompt-tuning methods (modalprompt) put their prompt vectors in its output."""
        return self.core.get_input_embeddings()

    @abstractmethod
    def media_mask(self, batch: Batch) -> torch.Tensor:
        """(B, L) True at the positions of the batch that hold media (image/audio/video)
        features rather than text tokens."""

    @torch.no_grad()
    def modality_features(
        self, batch: Batch, adapter_names: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(media, text), (B, H) each: the last hidden state pooled over the prompt's media
        tokens and over its text tokens (zeros where a prompt has none); the features that
        prototype routers (HiDe-LLaVA, DISCO) compare with each task's prototype."""
        self.model.eval()
        kw = {"adapter_names": adapter_names} if adapter_names is not None else {}
        _, h = self._forward(batch, True, **kw)
        prompt = batch.attention_mask.bool()
        if batch.labels is not None:
            prompt &= batch.labels == IGNORE
        media = self.media_mask(batch) & prompt

        def pool(m: torch.Tensor) -> torch.Tensor:
            m = m.unsqueeze(-1).to(h.dtype)
            return ((h * m).sum(1) / m.sum(1).clamp(min=1)).float()

        return pool(media), pool(prompt & ~media)

    # --- LoRA adapters through peft ---------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return list(self.model.peft_config) if isinstance(self.model, PeftModel) else []

    def add_lora(self, name: str, spec: LoraSpec) -> None:
        """Add a LoRA adapter named `name` (LM linear layers, optionally the vision encoder)."""
        targets = spec.targets or self.lm_lora_targets
        if spec.vision:
            if not self.vision_lora_targets:
                raise MmclError(f"{type(self).__name__} has no vision encoder to put LoRA on")
            targets = f"(?:{targets})|(?:{self.vision_lora_targets})"
        cfg = LoraConfig(
            r=spec.r,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules=targets,
            modules_to_save=list(self.lora_modules_to_save) or None,
        )
        if not isinstance(self.model, PeftModel):
            self.model = get_peft_model(self.core, cfg, adapter_name=name)
        else:
            self.model.add_adapter(name, cfg)
        for p in self.core.parameters():  # adding an adapter must not unfreeze or freeze others
            p.requires_grad_(False)

    def use_adapters(self, names: str | list[str] | None) -> None:
        """Activate adapter(s) for forward/generate; None runs the base model."""
        if not isinstance(self.model, PeftModel):
            if names:
                raise MmclError("no LoRA adapters have been added")
            return
        lora = self.model.base_model
        if not names:
            lora.disable_adapter_layers()
            return
        lora.enable_adapter_layers()
        lora.set_adapter(names if isinstance(names, list) else [names])

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.core.named_parameters() if f".{name}." in n}

    def set_trainable(self, params: dict[str, nn.Parameter] | None) -> None:
        """Make exactly `params` trainable (None: every parameter, for full fine-tuning)."""
        keep = None if params is None else {id(p) for p in params.values()}
        for p in self.core.parameters():
            p.requires_grad_(keep is None or id(p) in keep)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.core.named_parameters() if p.requires_grad}

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.core.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.core.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise MmclError(
                f"checkpoint does not match the model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )


def lm_linear_regex(prefix: str) -> str:
    """Regex for all linear layers of a Llama/Qwen-style LM whose decoder layers sit at
    `{prefix}.layers.N` (attention and MLP projections)."""
    return (
        rf"{re.escape(prefix)}\.layers\.\d+\."
        r"(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"
    )
