"""sefe: SEFE, the Superficial and Essential Forgetting Eliminator (Chen et al., ICML 2025,
arXiv 2505.02486), as MCITlib runs it.

- RegLoRA (essential forgetting): each task trains a fresh LoRA on top of the earlier ones,
  which stay active and frozen (the same model as the reference's merging of each task's LoRA
  into the base), folded into one LoRA (folded_loras.py), so a pass runs two LoRAs. After a
  task, the key elements of its update dW = B A, the `key_fraction` (2%) of entries largest in
  magnitude in every adapted layer, join those of the earlier tasks; while a later task
  trains, reg_weight · mean over layers of mean |dW_new| at the key elements keeps its update
  off them (2.5e3, the reference's weight on the same mean).
- Answer Style Diversification (superficial forgetting): a fraction of each task's training
  samples is rewritten into another answer style, so that no task teaches the model one answer
  format only. mmcl rewrites by rule, into the two styles a rule can make from a task's own
  answers: yes/no (is the answer "c"?, with c the true answer or another answer of the task
  half of the time) and multiple choice (the true answer and three other answers of the task,
  answered by letter). The reference's brief and detailed explanation styles need an MLLM to
  write them and are not made. A sample whose task has too few distinct answers for a style
  stays as it is (counted in `report()`).
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
import torch
from pydantic import Field

from mmcl.data.benchmarks import Task
from mmcl.data.records import Record
from mmcl.io import derive_seed
from mmcl.methods import register
from mmcl.methods.base import Method
from mmcl.methods.folded_loras import FoldedLoras
from mmcl.methods.lora_ft import LoraOptions
from mmcl.models.base import Batch, Outputs

CHOICES = 4  # options of a multiple-choice rewrite: the answer and three distractors


class SefeOptions(LoraOptions):
    key_fraction: float = Field(
        0.02, gt=0, le=1, description="share of dW's entries kept as key elements (reference)"
    )
    reg_weight: float = Field(2.5e3, ge=0, description="weight of RegLoRA's loss (reference)")
    asd_fraction: float = Field(
        0.2, ge=0, le=1, description="share of training samples rewritten into another style"
    )


def rewrite(rec: Record, others: list[str], rng: np.random.Generator) -> Record | None:
    """`rec` in a yes/no or multiple-choice style, built from `others` (other answers of its
    task); None when there are too few of them for either."""
    human, answer = rec.turns[-1]
    pool = sorted({a for a in others if a != answer})
    if not pool:
        return None
    if len(pool) >= CHOICES - 1 and rng.random() < 0.5:
        options = [answer, *rng.choice(pool, CHOICES - 1, replace=False).tolist()]
        rng.shuffle(options)
        listed = " ".join(f"{string.ascii_uppercase[i]}. {o}" for i, o in enumerate(options))
        question = f"{human}\noptions: {listed}\nanswer with the option's letter."
        styled = string.ascii_uppercase[options.index(answer)]
    else:
        true = bool(rng.random() < 0.5)
        candidate = answer if true else str(rng.choice(pool))
        question = f'{human}\nis the answer "{candidate}"? answer yes or no.'
        styled = "yes" if true else "no"
    return rec.with_turns([*rec.turns[:-1], (question, styled)])


@register
class Sefe(Method):
    name = "sefe"
    summary = (
        "a LoRA per task kept off the key elements of earlier updates (RegLoRA) + answer "
        "style diversification of the training data (SEFE, arXiv 2505.02486)"
    )
    Options = SefeOptions

    def __init__(self, backbone, options, tasks, seed):
        super().__init__(backbone, options, tasks, seed)
        self.folded = FoldedLoras(backbone, self.opts.lora)  # the earlier tasks' LoRAs
        self.current: str | None = None  # the LoRA of the task in training
        self.key_masks: dict[str, torch.Tensor] = {}  # layer name -> bool (out, in), all tasks
        self.rewritten: list[int] = []  # per task: samples rewritten into another style
        self.unchanged: list[int] = []  # per task: samples chosen that no style could take

    # --- answer style diversification -------------------------------------------------------
    def train_records(self, task: Task) -> list[Record]:
        rng = np.random.default_rng(derive_seed(self.seed, "sefe-asd", task.name))
        n = round(self.opts.asd_fraction * len(task.train))
        chosen = set(rng.choice(len(task.train), size=n, replace=False).tolist())
        answers = [r.answer for r in task.train]
        out, done = [], 0
        for i, rec in enumerate(task.train):
            styled = rewrite(rec, answers, rng) if i in chosen else None
            out.append(styled or rec)
            done += styled is not None
        self.rewritten.append(done)
        self.unchanged.append(n - done)
        return out

    # --- RegLoRA ----------------------------------------------------------------------------
    def deltas(self, name: str) -> dict[str, torch.Tensor]:
        """Per adapted layer: the update B A of adapter `name`."""
        return {n: b @ a for n, (a, b) in self.backbone.lora_factors(name).items()}

    def before_task(self, task: Task, step: int) -> None:
        self.current = f"task{step}"
        self.backbone.add_lora(self.current, self.opts.lora)
        self.folded.use(self.current)
        self.backbone.set_trainable(self.backbone.adapter_parameters(self.current))

    def regularisation(self) -> torch.Tensor:
        """mean over layers of mean |dW| of the current LoRA at the earlier key elements."""
        terms = [
            d.abs()[self.key_masks[n].to(d.device)].mean()
            for n, d in self.deltas(self.current).items()
            if n in self.key_masks
        ]
        return torch.stack(terms).mean() if terms else torch.zeros(())

    def loss(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        if not self.key_masks or self.opts.reg_weight == 0:
            return {}
        return {"reglora": self.opts.reg_weight * self.regularisation()}

    @torch.no_grad()
    def after_task(self, task: Task, step: int) -> None:
        """Freeze the task's LoRA, fold it into the earlier ones'; its key elements join
        theirs."""
        for n, d in self.deltas(self.current).items():
            d = d.abs().float().cpu()
            k = max(1, int(self.opts.key_fraction * d.numel()))
            mask = torch.zeros(d.numel(), dtype=torch.bool)
            mask[d.flatten().topk(k).indices] = True
            mask = mask.view_as(d)
            self.key_masks[n] = mask | self.key_masks[n] if n in self.key_masks else mask
        self.folded.fold(self.current, step)
        self.current = None
        self.folded.use(None)
        self.backbone.set_trainable({})  # peft's switch made the active adapter trainable

    def report(self) -> dict[str, Any]:
        return {
            "adapters": self.folded.learned,
            "key_elements": int(sum(int(m.sum()) for m in self.key_masks.values())),
            "asd_rewritten": list(self.rewritten),
            "asd_unchanged": list(self.unchanged),
        }

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **self.folded.state_dict(),
            "key_masks": {n: m.clone() for n, m in self.key_masks.items()},
            "rewritten": list(self.rewritten),
            "unchanged": list(self.unchanged),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-add the earlier tasks' folded LoRA with its weights, frozen and active."""
        masks = state.get("key_masks") or {}
        self.key_masks = {n: m.bool() for n, m in masks.items()}
        self.rewritten = list(state.get("rewritten") or [])
        self.unchanged = list(state.get("unchanged") or [])
        self.folded.load_state_dict(state)
        if self.folded.past:
            self.folded.use(None)
            self.backbone.set_trainable({})
