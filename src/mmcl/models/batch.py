"""What a backbone reads and returns: a Batch of model inputs, its Outputs, and the answer loss;
and the cache of the media files it has read."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from mmcl.data.records import Record

IGNORE = -100


def is_per_token(t: torch.Tensor, input_ids: torch.Tensor) -> bool:
    """Whether a processor output has one entry per input token (e.g. Qwen2-VL's token types),
    rather than per image."""
    return t.dim() >= 2 and t.shape[:2] == input_ids.shape


class MediaCache:
    """The features of the media files read most recently, up to `budget` bytes (the oldest go
    first): each epoch reads the same files again, and routed inference reads a batch's media
    twice in a row (the router's prompt, then the expert's). A file is known by its size and
    modification time too, so one replaced on disk is read again."""

    def __init__(self, read: Callable[[str, Path], torch.Tensor], budget: int = 512 << 20):
        self.read, self.budget = read, budget
        self.items: dict[tuple, torch.Tensor] = {}
        self.bytes = 0

    def __call__(self, modality: str, path: Path) -> torch.Tensor:
        try:
            st = os.stat(path)
        except OSError:
            return self.read(modality, path)  # whose error names the file
        key = (modality, str(path), st.st_size, st.st_mtime_ns)
        feats = self.items.get(key)
        if feats is None:
            feats = self.items[key] = self.read(modality, path)
            self.bytes += feats.nbytes
            while self.bytes > self.budget and len(self.items) > 1:
                self.bytes -= self.items.pop(next(iter(self.items))).nbytes
        return feats


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
    # (B, N, V) for the batch's last N <= L positions (`answer_window`), position t predicting
    # token t + 1; `labels` (B, N) are the batch's, cut alike.
    logits: torch.Tensor
    labels: torch.Tensor
    hidden: torch.Tensor | None = None  # (B, H): mean of the last hidden layer over the prompt

    @property
    def answer_mask(self) -> torch.Tensor:
        """(B, L-1) mask of the positions whose next token is an answer token."""
        return self.labels[:, 1:] != IGNORE


# The fewest positions a window keeps: the output layer's matrix product on fewer than four
# positions a row takes another kernel path, which rounds each logit otherwise (MKL, measured);
# from there on a position's logits are those of the whole head's, bit for bit.
MIN_WINDOW = 8


def answer_window(labels: torch.Tensor) -> int:
    """How many last positions of a right-padded training batch the answer loss reads: from
    the one that predicts the batch's first answer token to the end; 0 for all of them."""
    answers = (labels[:, 1:] != IGNORE).any(0).nonzero()
    width = labels.shape[1]
    if not len(answers):
        return 0
    n = max(width - int(answers[0]), MIN_WINDOW)
    return n if n < width else 0


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over answer tokens only."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE
    )
