"""The composed MLLM: per-modality encoders and projectors spliced into any HF causal LM.

Each placeholder token (<image>, ...) in the prompt is expanded to the encoder's number of
tokens; their input embeddings are replaced by the projected encoder features, and the LM runs
on `inputs_embeds`. This is LLaVA's design, and what MoInCL uses per modality.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import DynamicCache

from mmcl.data.records import MODALITIES, Record
from mmcl.errors import MmclError
from mmcl.models.base import IGNORE, Backbone, Batch, lm_linear_regex
from mmcl.models.batch import MediaCache
from mmcl.models.lora import is_adapted
from mmcl.models.mllm import ComposedMLLM, VisionTower, projector

# Re-exported: the base recipes build their models from these.
__all__ = [
    "ComposedBackbone",
    "ComposedMLLM",
    "VisionTower",
    "image_tensor",
    "load_image",
    "projector",
]

_PLACEHOLDER_RE = re.compile("|".join(f"<{m}>" for m in MODALITIES))

# Every epoch tokenizes the same prompts again: a backbone keeps the ids of this many texts.
TEXT_CACHE_SIZE = 200_000


def image_tensor(im: Image.Image, size: int) -> torch.Tensor:
    """An image (or video frame) -> (3, size, size) float tensor in [-1, 1]."""
    im = im.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


def load_image(path: Path, size: int) -> torch.Tensor:
    """An image file -> (3, size, size) float tensor in [-1, 1]."""
    try:
        with Image.open(path) as im:
            return image_tensor(im, size)
    except Exception as e:
        raise MmclError(f"cannot read image {path}: {e}") from e


class ComposedBackbone(Backbone):
    """Backbone over ComposedMLLM; prompts follow a plain 'user: ... assistant:' template."""

    shares_prefix = True

    def __init__(
        self,
        core: ComposedMLLM,
        tokenizer,
        featurizers: dict[str, Callable[[Path], torch.Tensor]],
        num_tokens: dict[str, int],
        max_new_tokens: int = 24,
    ):
        super().__init__(core, tokenizer, max_new_tokens)
        self.featurizers = featurizers
        self.media_cache = MediaCache(lambda m, path: self.featurizers[m](path))
        self._token_ids = lru_cache(TEXT_CACHE_SIZE)(
            lambda text: tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        )
        self.num_tokens = num_tokens
        self.lm_lora_targets = lm_linear_regex("lm.model")
        self.vision_lora_targets = (
            r"encoders\.image\.model\.(?:vision_model\.)?encoder\.layers\.\d+\."
            r"(?:self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12])"
        )
        tok = tokenizer
        self.bos, self.eos, self.pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
        self.placeholder_ids = {m: tok.convert_tokens_to_ids(f"<{m}>") for m in MODALITIES}

    def encoder_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.core.named_parameters() if n.startswith("encoders.")}

    def _decoder(self) -> nn.Module:
        return self.core.lm.model

    def input_embeddings(self) -> nn.Embedding:
        return self.core.lm.get_input_embeddings()

    def output_layer(self) -> nn.Module:
        return self.core.lm.get_output_embeddings()

    def vision_blocks(self) -> list[nn.Module]:
        if "image" not in self.core.encoders:
            raise MmclError("this backbone has no vision encoder")
        model = self.core.encoders["image"].model  # transformers 5: no `.vision_model` level
        return list(getattr(model, "vision_model", model).encoder.layers)

    def media_mask(self, batch: Batch) -> torch.Tensor:
        ids = torch.tensor(list(self.core.token_ids.values()), device=batch.input_ids.device)
        return torch.isin(batch.input_ids, ids)

    def _encode(self, text: str) -> list[int]:
        out: list[int] = []
        for t in self._token_ids(text):  # expand each placeholder to its encoder's number of tokens
            m = next((m for m, pid in self.placeholder_ids.items() if pid == t), None)
            if m is None:
                out.append(t)
            elif m not in self.num_tokens:
                raise MmclError(f"this backbone has no {m} encoder, but a prompt has <{m}>")
            else:
                out += [t] * self.num_tokens[m]
        return out

    @staticmethod
    def _question_first(human: str) -> str:
        """Move media placeholders after the question: with a causal LM, media tokens that come
        after the question can already attend to it (question-aware visual tokens), which a
        small LM needs in order to learn to pick out the right object quickly."""
        media = _PLACEHOLDER_RE.findall(human)
        if not media:
            return human
        return _PLACEHOLDER_RE.sub("", human).strip() + "\n" + "".join(media)

    def _sequence(self, rec: Record, train: bool) -> tuple[list[int], list[int]]:
        # Some pretrained LMs (Qwen) have no BOS token.
        ids, labels = ([self.bos], [IGNORE]) if self.bos is not None else ([], [])
        for k, (human, answer) in enumerate(rec.turns):
            prompt = self._encode(f"user: {self._question_first(human)}\nassistant:")
            ids += prompt
            labels += [IGNORE] * len(prompt)
            last = k == len(rec.turns) - 1
            if train or not last:
                ans = self._encode(" " + answer) + [self.eos]
                ids += ans
                labels += ans if train else [IGNORE] * len(ans)
            if not train and last:
                break
        return ids, labels

    def collate(self, records: Sequence[Record], train: bool = True) -> Batch:
        seqs = [self._sequence(r, train) for r in records]
        width = max(len(s) for s, _ in seqs)
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (s, lab) in enumerate(seqs):
            sl = slice(0, len(s)) if train else slice(width - len(s), width)
            ids[i, sl], labels[i, sl], mask[i, sl] = torch.tensor(s), torch.tensor(lab), 1
        media = {}
        for m in MODALITIES:
            paths = [p for r in records for p in r.media.get(m, ())]
            if paths:
                if m not in self.featurizers:
                    raise MmclError(f"this backbone cannot read {m} (record {records[0].id})")
                media[m] = torch.stack([self.media_cache(m, p) for p in paths])
        return Batch(list(records), ids, mask, labels if train else None, media)

    def reordered(self, batch: Batch, order: list[int]) -> Batch:
        """`batch` with its rows in `order`; each modality's media items (in record order,
        so many per record) move with their records."""
        moved = {}
        for m in batch.media:
            ends = np.cumsum([len(r.media.get(m, ())) for r in batch.records]).tolist()
            starts = [0, *ends[:-1]]
            moved[m] = torch.tensor([i for k in order for i in range(starts[k], ends[k])])
        return Batch(
            [batch.records[k] for k in order],
            batch.input_ids[order],
            batch.attention_mask[order],
            None if batch.labels is None else batch.labels[order],
            {m: x[moved[m].to(x.device)] for m, x in batch.media.items()},
            {m: x[moved[m].to(x.device)] for m, x in batch.encoded.items()},
        )

    def _shared_length(self, rows: list[torch.Tensor]) -> int:
        """How many leading tokens every row shares (up to its first media token; e.g. a
        router's list of experts), each row keeping a token of its own; 0 if fewer than 2.
        With a `base_prefix` (see `sharing_prefix`): that text's tokens, a fixed boundary
        whatever else the rows share, so that no row's scores depend on its batch."""
        if self.base_prefix is not None:
            return self._base_prefix_length(rows)
        media_ids = torch.tensor(list(self.core.token_ids.values()), device=rows[0].device)
        shared = min(len(r) for r in rows) - 1
        for r in rows:
            differs = (r[:shared] != rows[0][:shared]) | torch.isin(r[:shared], media_ids)
            if differs.any():
                shared = int(differs.nonzero()[0])
        return shared if shared >= 2 and len(rows) >= 2 else 0

    def _base_prefix_length(self, rows: list[torch.Tensor]) -> int:
        """The number of tokens that the prompt template and `base_prefix` open every row
        with (an error if a row does not start with them)."""
        key = ("head", self.base_prefix)
        if key not in self.prefix_memo:  # encoded once per context
            bos = [self.bos] if self.bos is not None else []
            self.prefix_memo[key] = bos + self._encode(f"user: {self.base_prefix}")
        head = self.prefix_memo[key]
        n = len(head)
        for r in rows:
            if len(r) <= n or r[:n].tolist() != head:
                raise MmclError(
                    f"a prompt does not start with the shared text {self.base_prefix[:60]!r}"
                )
        return n

    def _prefix_then_rows(
        self, rows: list[torch.Tensor], batch: Batch, shared: int, train: bool, window: int = 0
    ) -> torch.Tensor:
        """Run the shared prefix once, then every row's own tokens from its KV cache through
        the running model (its adapters; a trainer's wrapper, if any); gradients flow through
        both passes (not through a base-read prefix). Training: the logits (B, W, V) of the
        positions after the prefix, rows right-padded as in the batch. Otherwise rows are
        left-padded and only each row's next-token logits are computed: (B, 1, V)."""
        cache = self._prefix_cache(rows[0][:shared], len(rows))
        tails = [r[shared:] for r in rows]
        width = max(len(t) for t in tails)
        ids = rows[0]
        suffix = torch.full((len(rows), width), self.pad, dtype=ids.dtype, device=ids.device)
        smask = torch.zeros_like(suffix)
        for i, t in enumerate(tails):
            cols = slice(0, len(t)) if train else slice(width - len(t), width)
            suffix[i, cols], smask[i, cols] = t, 1
        return self.model(
            input_ids=suffix,
            attention_mask=torch.cat([smask.new_ones((len(rows), shared)), smask], 1),
            media=batch.media,
            encoded=batch.encoded,
            cache=cache,
            position_ids=shared + (smask.cumsum(1) - 1).clamp(min=0),
            logits_to_keep=window if train else 1,  # a window past the rows keeps them all
            prompt_ids=batch.input_ids,  # the media read the whole prompt, prefix included
        ).logits

    def _prefix_cache(self, prefix: torch.Tensor, rows: int) -> DynamicCache:
        """The keys and values of a shared token prefix, repeated for `rows` rows: run with
        the active adapter, gradients flowing; or, with a `base_prefix`, run by the base model
        once per context (and depth) and kept."""
        lm = self.core.lm
        if self.base_prefix is None:
            embeds = self.core.embed(prefix.unsqueeze(0), {})
            cache = lm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1).cache
            cache.batch_repeat_interleave(rows)
            return cache
        depth = len(self._decoder().layers)  # fewer within `first_layers`
        key = (tuple(prefix.tolist()), depth)
        if key not in self.prefix_memo:
            with torch.no_grad(), self.adapters_bypassed():
                embeds = self.core.embed(prefix.unsqueeze(0), {})
                run = lm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1).cache
            # The cache has a slot for every layer of the config; only `depth` of them ran.
            self.prefix_memo[key] = [(layer.keys, layer.values) for layer in run.layers[:depth]]
        cache = DynamicCache()
        for i, (k, v) in enumerate(self.prefix_memo[key]):
            cache.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), i)
        return cache

    @torch.no_grad()
    def next_token_logits(self, batch: Batch) -> torch.Tensor:
        """As `Backbone.next_token_logits`, with prefix caching: the token prefix that every
        prompt of the batch shares (e.g. a router's list of experts) runs once, and each row
        continues from its KV cache."""
        ids, mask = batch.input_ids, batch.attention_mask
        rows = [ids[i, ids.shape[1] - int(n) :] for i, n in enumerate(mask.sum(1))]
        shared = self._shared_length(rows)
        if not shared:
            return super().next_token_logits(batch)
        with self.eval_mode():
            return self._prefix_then_rows(rows, batch, shared, train=False)[:, -1]

    def _shared_prefix_logits(self, batch: Batch, window: int = 0) -> torch.Tensor | None:
        """Training logits of a right-padded batch whose rows share a prefix, with that prefix
        run once (as `next_token_logits` does at inference): those of the positions after
        the prefix, (B, L - prefix, V), or of the last `window` if fewer (all the answer loss
        reads). None when it cannot: no shared prefix, or a distributed wrapper, which must see
        the whole pass (a base-read prefix has no gradient to share, and is always run apart)."""
        ids, mask = batch.input_ids, batch.attention_mask
        if self.wrapped and self.base_prefix is None:
            return None
        rows = [ids[i, : int(n)] for i, n in enumerate(mask.sum(1))]
        shared = self._shared_length(rows)
        if not shared:
            return None
        return self._prefix_then_rows(rows, batch, shared, train=True, window=window)

    @torch.no_grad()
    def encode_media(self, batch: Batch) -> Batch:
        """As `Backbone.encode_media`: the encoders' and projectors' features are the same
        whatever adapter answers, unless an adapter reaches into them (vision LoRA)."""
        adapted = is_adapted(self.core.encoders) or is_adapted(self.core.projectors)
        if batch.media and not batch.encoded and not adapted:
            with self.eval_mode():
                batch.encoded = {
                    m: self.core.encode(m, x, batch.input_ids) for m, x in batch.media.items()
                }
        return batch

    def _forward(self, batch: Batch, hidden: bool, window: int = 0, **kw):
        if self.share_prefix and not hidden and not kw:
            logits = self._shared_prefix_logits(batch, window)
            if logits is not None:
                return logits, None
        out = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            media=batch.media,
            encoded=batch.encoded,
            output_hidden_states=hidden,
            logits_to_keep=window,
            **kw,
        )
        return out.logits, (out.hidden_states[-1] if hidden else None)

    def _generate(self, batch: Batch, max_new_tokens: int, **kw):
        return self.model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            media=batch.media,
            encoded=batch.encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
            **kw,
        )
