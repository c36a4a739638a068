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

import torch
from torch import nn

from mmcl.data.records import Record
from mmcl.errors import MmclError
from mmcl.models.batch import IGNORE, Batch, Outputs, answer_loss, answer_window, is_per_token
from mmcl.models.last_position import reading_last
from mmcl.models.lora import LoraAdapters, LoraSpec, lm_linear_regex

# Re-exported: backbones and methods import these from here.
__all__ = ["IGNORE", "Backbone", "Batch", "LoraSpec", "Outputs", "is_per_token", "lm_linear_regex"]


class Backbone(LoraAdapters, ABC):
    """The one owner of the model and its wrapping: `core` is the plain nn.Module, `model`
    what forward passes run (core, peft's wrapper of it, or a trainer's wrapper of that while a
    task trains). Methods go through its named operations (adapters, modes, the teacher view),
    never through `model`. A backbone implements `collate`, `_forward` and `_generate`."""

    # Whether `sharing_prefix` runs a prompt's shared prefix apart (and a `base_prefix` by the
    # base model); the others run whole prompts through the adapters.
    shares_prefix: bool = False

    def __init__(self, core: nn.Module, tokenizer, max_new_tokens: int = 24):
        self.core = core
        self.model: nn.Module = core
        # While a task trains, `model` is what accelerate made of the model (a DDP wrapper, or
        # under FSDP a sharded copy) and `plain` the model itself; otherwise None.
        self.plain: nn.Module | None = None
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        # Training forward passes run the prefix that every row of a batch shares once (see
        # `sharing_prefix`); backbones that cannot ignore it. With `base_prefix`, that text is
        # read by the base model; what a context computes once about it (its tokens, keys and
        # values) is kept in `prefix_memo`.
        self.share_prefix = False
        self.base_prefix: str | None = None
        self.prefix_memo: dict = {}
        # Training passes compute the output layer on the answers' window alone (2-4% more
        # samples a second on the tiny model, s47), unless `set_trainable` made it train (base
        # pretraining's tied embedding, full fine-tuning, MICL's adapter copies): its gradient
        # sums over the positions, and fewer of them round otherwise, so those runs keep every
        # position and stay as built. A flag, not the parameters' `requires_grad`, so that a
        # teacher pass on swapped-in weights (torch.func) computes what the student's does.
        self.full_head = False

    # --- subclasses -------------------------------------------------------------------------
    @abstractmethod
    def collate(self, records: Sequence[Record], train: bool = True) -> Batch:
        """Records -> Batch; `train` puts answers in the sequence (right padding), else prompts
        only (left padding, for generation)."""

    @abstractmethod
    def _forward(
        self, batch: Batch, hidden: bool, window: int = 0, **kw
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits of the last `window` positions, or of all for 0; last hidden states)."""

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
    def sharing_prefix(self, base_prefix: str | None = None) -> Iterator[None]:
        """Within: a batch whose prompts share a long prefix (a router's expert list) runs it
        once per batch in training too, so that a growing prefix costs little (the logits are
        the same up to float rounding).

        With `base_prefix`, a text that every prompt starts with, that text is read by the
        base model (every adapter bypassed, no gradient) once in the whole context, its keys
        and values kept, and the adapters read what follows: a long prefix then costs nothing
        per batch. That is another model (the adapters do not see the text), so a method uses
        it alike when it trains and when it answers. Backbones that cannot share a prefix run
        whole prompts through the adapters in both cases."""
        old = self.share_prefix, self.base_prefix, self.prefix_memo
        self.share_prefix, self.base_prefix, self.prefix_memo = True, base_prefix, {}
        try:
            yield
        finally:
            self.share_prefix, self.base_prefix, self.prefix_memo = old

    def _decoder(self) -> nn.Module | None:
        """The language model's module holding its decoder `layers` (None: not exposed)."""
        return None

    def layers_of_share(self, share: float, key: str) -> int | None:
        """How many decoder layers `share` of the language model is (at least 1; None: all,
        for a share of 1); `key` names the setting in the error of a backbone that cannot."""
        if share >= 1:
            return None
        body = self._decoder()
        if body is None:
            raise MmclError(
                f"{type(self).__name__} cannot run part of its language model; set {key}: 1"
            )
        return max(1, round(share * len(body.layers)))

    @contextmanager
    def first_layers(self, n: int | None, read_last: bool = False) -> Iterator[None]:
        """Within: the language model runs only its first `n` decoder layers, then its final
        norm and head (a shallow pass, e.g. a router's); None leaves it whole. `read_last`:
        only each row's last position is read (next-token scores), so the last layer runs
        that position alone where its structure allows (last_position.py)."""
        body = self._decoder()
        if n is None and (not read_last or body is None):
            yield
            return
        if body is None:
            raise MmclError(f"{type(self).__name__} cannot run part of its language model")
        layers = body.layers
        n = len(layers) if n is None else n
        if not 1 <= n <= len(layers):
            raise MmclError(f"the language model has {len(layers)} layers; cannot run {n}")
        kept = layers[:n]
        if read_last:
            kept = nn.ModuleList([*kept[:-1], reading_last(kept[-1])])
        body.layers = kept
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
        labels = batch.labels
        logits, h = self._forward(batch, hidden, self.logits_window(labels), **kw)
        if labels is not None and logits.shape[1] < labels.shape[1]:
            # The logits are the last positions': the window's, or those after a prefix that
            # every row shares and the backbone ran once (a prefix holds no answer token).
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
        with self.eval_mode():
            logits, _ = self._forward(batch, False)
        return logits[:, -1]

    @torch.no_grad()
    def generate(
        self,
        batch: Batch,
        adapter_names: list[str] | None = None,
        max_new_tokens: int | None = None,
        min_new_tokens: int = 0,
    ) -> list[str]:
        """Greedy answers for a prompt-only batch (KV-cached, one call for the whole batch);
        `min_new_tokens` holds the end of the answer back until that many tokens. Rows of
        one adapter are first made contiguous, where the backbone can reorder a batch, so
        that each adapter's LoRA runs on a slice of the batch (`rows_routed`)."""
        if adapter_names:  # each adapter's rows together, in the order adapters first come
            first: dict[str, int] = {}
            for i, n in enumerate(adapter_names):
                first.setdefault(n, i)
            order = sorted(range(len(batch)), key=lambda i: first[adapter_names[i]])
            moved = self.reordered(batch, order) if order != sorted(order) else None
            if moved is not None:
                names = [adapter_names[i] for i in order]
                answers = self.generate(moved, names, max_new_tokens, min_new_tokens)
                return [a for _, a in sorted(zip(order, answers, strict=True))]
        with self.eval_mode(), self.rows_adapted(adapter_names) as kw:
            if min_new_tokens:
                kw = {**kw, "min_new_tokens": min_new_tokens}
            out = self._generate(batch, max_new_tokens or self.max_new_tokens, **kw)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def reordered(self, batch: Batch, order: list[int]) -> Batch | None:
        """`batch` with its rows in `order`; None where this backbone cannot move its media."""
        return None

    def input_embeddings(self) -> nn.Embedding:
        """The language model's token embedding: its width is that of the hidden states, and
        prompt-tuning methods (modalprompt) put their prompt vectors in its output."""
        return self.core.get_input_embeddings()

    def output_layer(self) -> nn.Module:
        """The language model's output layer (its LM head)."""
        return self.core.get_output_embeddings()

    def logits_window(self, labels: torch.Tensor | None) -> int:
        """How many last positions a forward pass over a batch with these labels computes
        logits for (0: all): the answers' window, unless the output layer trains."""
        return 0 if labels is None or self.full_head else answer_window(labels)

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
        kw = {"adapter_names": adapter_names} if adapter_names is not None else {}
        with self.eval_mode():
            _, h = self._forward(batch, True, **kw)
        prompt = batch.attention_mask.bool()
        if batch.labels is not None:
            prompt &= batch.labels == IGNORE
        media = self.media_mask(batch) & prompt

        def pool(m: torch.Tensor) -> torch.Tensor:
            m = m.unsqueeze(-1).to(h.dtype)
            return ((h * m).sum(1) / m.sum(1).clamp(min=1)).float()

        return pool(media), pool(prompt & ~media)

    # --- the model and its wrapping -----------------------------------------------------------
    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Within: the running model in eval mode (no dropout); after, the mode it had."""
        model = self.model
        was_training = model.training
        if not was_training:  # switching visits every module (and every adapter's copies)
            yield
            return
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)

    @contextmanager
    def running_as(self, wrapped: nn.Module) -> Iterator[None]:
        """Within: forward passes run `wrapped`, what a trainer made of `model` (a DDP wrapper,
        an FSDP shell) in train mode; after, the plain model again, in eval mode."""
        plain = self.model
        self.model, self.plain = wrapped, plain
        wrapped.train()
        try:
            yield
        finally:
            self.model, self.plain = plain, None
            plain.eval()

    @property
    def wrapped(self) -> bool:
        """Whether forward passes run a trainer's wrapper of the model (see `running_as`)."""
        return self.plain is not None and self.model is not self.plain

    @contextmanager
    def teacher(self) -> Iterator[None]:
        """Within: forward passes run the plain model in eval mode, on each process alone (a
        fixed teacher: under FSDP the training copy neither holds core's parameters nor runs
        without the other processes)."""
        running = self.model
        self.model = self.plain if self.plain is not None else running
        try:
            with self.eval_mode():
                yield
        finally:
            self.model = running

    def running_modules(self) -> Iterator[nn.Module]:
        """The modules of the model as forward passes run it: under a trainer's wrapper its
        copies (FSDP), which hold what the last forward pass recorded."""
        return self.model.modules()

    def parameters_of(self, pattern: str) -> dict[str, nn.Parameter]:
        """`core`'s parameters whose name matches the regex `pattern` anywhere (those of the
        modules a method added itself)."""
        found = re.compile(pattern)
        return {n: p for n, p in self.core.named_parameters() if found.search(n)}

    def set_trainable(self, params: dict[str, nn.Parameter] | None) -> None:
        """Make exactly `params` trainable (None: every parameter, for full fine-tuning)."""
        keep = None if params is None else {id(p) for p in params.values()}
        for p in self.core.parameters():
            p.requires_grad_(keep is None or id(p) in keep)
        self.full_head = any(p.requires_grad for p in self.output_layer().parameters())

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.core.named_parameters() if p.requires_grad}

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.core.state_dict())

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.core.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise MmclError(
                f"checkpoint does not match the model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
