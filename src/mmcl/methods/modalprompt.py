"""modalprompt: ModalPrompt, dual-modality guided prompts (Zeng et al., 2024, arXiv
2410.05849), as MCITlib runs it (`ModalPrompt/llava/model/llava_arch.py`): prompt learning
on a frozen model, without rehearsal.

- Each task owns `prompt_length` (10) prompt vectors in the LM's input-embedding space
  (initialised from random vocabulary embeddings) and a transform (an MLP). Its prototype is
  the mean of its transformed prompt vectors.
- A sample's guide score for task i: lam · cos(image, P_i) + (1 - lam) · cos(text, P_i)
  (lam = 0.5), with its image and text features.
- Training task t: t's prompts are put in front of each prompt (right after BOS) and only they
  and t's transform learn, from the answer loss plus (1 - cos(image, P_t)) + (1 - cos(text,
  P_t)), which pulls the task's prototype towards its samples' features.
- Inference: each sample gets the prompts of the `transfer` (1) tasks of highest guide score
  among those learnt: the task's prompts are picked by image and text prototypes, without task
  identity.

MCITlib hard-codes transfer_num = 1 (ModalPrompt's own default is 3: the other selected
prompts then join the current one in training too, as here). The features are the frozen base
model's last hidden state pooled over the prompt's media and text tokens, where the reference
uses CLIP's image and text towers, which mmcl's backbones do not have.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mmcl.data.benchmarks import Task
from mmcl.io import derive_seed
from mmcl.methods import register
from mmcl.methods.base import Method, MethodOptions
from mmcl.models.base import IGNORE, Batch, Outputs, is_per_token


def insert_slots(batch: Batch, n: int, pad: int, bos: int | None) -> tuple[Batch, torch.Tensor]:
    """The batch with `n` slot tokens (id `pad`, attended) at the start of every row's text,
    after its BOS if it has one; and the (B, L + n) mask of the slots. Labels there are IGNORE
    and per-token media extras 0."""
    ids, mask = batch.input_ids, batch.attention_mask
    b, length = ids.shape
    first = mask.long().argmax(1)  # the first real token (rows are left or right padded)
    at = first
    if bos is not None:
        at = first + (ids.gather(1, first[:, None])[:, 0] == bos).long()
    j = torch.arange(length + n, device=ids.device).expand(b, -1)
    slots = (j >= at[:, None]) & (j < at[:, None] + n)
    source = torch.where(j < at[:, None], j, j - n).clamp(0, length - 1)

    def spread(t: torch.Tensor, fill: int) -> torch.Tensor:
        index = source.view(b, -1, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
        out = t.gather(1, index)
        return out.masked_fill(slots.view(b, -1, *([1] * (t.dim() - 2))), fill)

    media = {k: spread(v, 0) if is_per_token(v, ids) else v for k, v in batch.media.items()}
    labels = None if batch.labels is None else spread(batch.labels, IGNORE)
    new = Batch(batch.records, spread(ids, pad), spread(mask, 1), labels, media, batch.encoded)
    return new, slots


class PromptBank(nn.Module):
    """Every task's prompt vectors and transform; lives on the LM's input embedding and fills
    the slots of the batch it is given with the chosen tasks' prompts (a forward hook)."""

    def __init__(self, tasks: int, length: int, embedding: nn.Embedding, seed: int):
        super().__init__()
        h = embedding.embedding_dim
        dev = embedding.weight.device
        with torch.random.fork_rng(devices=[]):  # the same start in a resumed run
            torch.manual_seed(seed)
            rows = torch.randint(embedding.num_embeddings, (tasks, length))
            self.prompts = nn.ParameterList(
                nn.Parameter(embedding.weight[r].detach().float().clone()) for r in rows
            )
            self.transforms = nn.ModuleList(
                nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h)).to(dev)
                for _ in range(tasks)
            )
        self.fill: tuple[torch.Tensor, list[list[int]]] | None = None  # slots, tasks per row

    def prototype(self, task: int) -> torch.Tensor:
        """(H,) the task's prototype: the mean of its transformed prompt vectors."""
        return self.transforms[task](self.prompts[task]).mean(0)

    def hook(self, module: nn.Module, inputs: Any, out: torch.Tensor) -> torch.Tensor:
        if self.fill is None or out.shape[:2] != self.fill[0].shape:
            return out  # no prompts, or a generation step past the prompt (one new token)
        slots, chosen = self.fill
        vectors = torch.stack([torch.cat([self.prompts[t] for t in row]) for row in chosen])
        return out.masked_scatter(slots.unsqueeze(-1), vectors.to(out.dtype))


class ModalPromptOptions(MethodOptions):
    prompt_length: int = Field(10, ge=1, description="prompt vectors per task (reference)")
    transfer: int = Field(
        1, ge=1, description="tasks whose prompts a sample gets (MCITlib's transfer_num)"
    )
    image_weight: float = Field(
        0.5, ge=0, le=1, description="lam: the image term's share of the guide score (ref.)"
    )
    align_weight: float = Field(
        1.0, ge=0, description="weight of the prototype-alignment loss (the reference adds it)"
    )


@register
class ModalPrompt(Method):
    name = "modalprompt"
    summary = (
        "prompts per task on a frozen model, picked per sample by image and text prototype "
        "similarity, no rehearsal (ModalPrompt, arXiv 2410.05849)"
    )
    Options = ModalPromptOptions
    not_exportable = "it inserts task prompts picked per sample by prototype similarity"

    def __init__(self, backbone, options, tasks, seed):
        super().__init__(backbone, options, tasks, seed)
        self.current: int | None = None  # the task training
        self.seen = 0  # tasks learnt
        self.features: tuple[torch.Tensor, torch.Tensor] | None = None  # (image, text)
        self.picks: list[list[int]] = []  # per step: test samples whose top pick is task i

    def setup(self) -> None:
        emb = self.backbone.input_embeddings()
        self.bank = PromptBank(
            len(self.tasks), self.opts.prompt_length, emb, derive_seed(self.seed, self.name)
        )
        emb.add_module("modal_prompt", self.bank)  # saved and trained with the model
        emb.register_forward_hook(self.bank.hook)
        self.backbone.set_trainable({})

    def before_task(self, task: Task, step: int) -> None:
        self.current = step
        params = {"prompt": self.bank.prompts[step]}
        params.update(self.bank.transforms[step].named_parameters())
        self.backbone.set_trainable(params)

    def after_task(self, task: Task, step: int) -> None:
        self.backbone.set_trainable({})
        self.current, self.seen = None, step + 1
        self.picks.append([0] * self.seen)

    # --- choosing prompts -------------------------------------------------------------------
    def guide(self, tasks: int) -> torch.Tensor:
        """(B, tasks) guide scores of the batch whose features were taken last."""
        image, text = self.features
        protos = torch.stack([self.bank.prototype(i) for i in range(tasks)]).detach()
        protos = protos.to(image.device)
        lam = self.opts.image_weight
        cos = [
            F.cosine_similarity(f.unsqueeze(1), protos.unsqueeze(0), dim=-1) for f in (image, text)
        ]
        return lam * cos[0] + (1 - lam) * cos[1]

    @torch.no_grad()
    def prepare_batch(self, batch: Batch) -> Batch:
        """Take the batch's features (no prompts), then put in each sample's prompts."""
        bb = self.backbone
        self.bank.fill = None
        self.features = bb.modality_features(batch)  # the model's mode as it was
        k = self.opts.transfer
        if self.current is not None:  # training: the task's own prompts, nearest the text
            earlier = min(k - 1, self.current)
            top = self.guide(self.current).topk(earlier, -1).indices if earlier else None
            chosen = [
                [*(top[i].flip(0).tolist() if earlier else []), self.current]
                for i in range(len(batch))
            ]
        elif self.seen:
            top = self.guide(self.seen).topk(min(k, self.seen), -1).indices
            chosen = [row.flip(0).tolist() for row in top]  # the best nearest the text
        else:
            return batch
        n = len(chosen[0]) * self.opts.prompt_length
        tok = bb.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        new, slots = insert_slots(batch, n, pad, tok.bos_token_id)
        self.bank.fill = (slots, chosen)
        return new

    def loss(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        """Pull the current task's prototype towards its samples' image and text features."""
        if self.current is None or self.opts.align_weight == 0:
            return {}
        proto = self.bank.prototype(self.current)
        terms = [
            1 - F.cosine_similarity(f.to(proto.device), proto.unsqueeze(0), dim=-1).mean()
            for f in self.features
        ]
        return {"prototype_alignment": self.opts.align_weight * (terms[0] + terms[1])}

    def predict(self, batch: Batch) -> list[str] | None:
        """Counts each test sample's top pick (the prompts are already in the batch)."""
        if self.bank.fill is not None and self.picks:
            for row in self.bank.fill[1]:
                self.picks[-1][row[-1]] += 1
        return None

    def report(self) -> dict[str, Any]:
        return {
            "tasks_learnt": self.seen,
            "top_pick_counts_per_step": [list(p) for p in self.picks],
        }

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "picks": [list(p) for p in self.picks]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The prompts and transforms load with the model (they live on its embedding)."""
        self.seen = int(state.get("seen", 0))
        self.picks = [list(p) for p in state.get("picks") or []]
