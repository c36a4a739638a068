"""moincl: MoInCL (Pian et al., 2024) for modality-inconsistent continual learning.

One LoRA trained through the tasks, as lora-ft, with two replay-free terms that use the model
as it was before the current task (the frozen teacher: a snapshot of the adapter weights, run
through `distill.teacher_logits`):

- Pseudo Targets Generation (PTG): when a task type (captioning or QA) arrives for a modality
  that an earlier task saw with the other type, the teacher answers instructions of that old
  type on the current task's inputs (captions for the audio of a new audio-QA task, answers to
  video questions for a new video-captioning task). These pseudo samples train beside the real
  ones, with cross-entropy plus a per-token KL to the teacher (temperature T, scaled by T²).
- Instruction-based Knowledge Distillation (IKD): text-only instructions (no media) from a
  built-in instruction set are answered by the teacher; every training step, a few of them
  go through the current model and the teacher, with a per-token KL on the answer tokens.
  `ikd_target: instruction` is the published code's form instead: no teacher answers, the KL
  is on the instruction's own positions (each next token of the prompt), a few instructions
  drawn with replacement per step (the published code draws 4 from Natural Instructions, a
  set far larger than the built-in one; `instructions` takes such a set).

- Fusion (the published code's `llm_fusion`, which its run scripts apply after every epoch
  from the second task on): the adapter weights move back towards the teacher's,
  w <- alpha * w + (1 - alpha) * w_teacher. The scripts set alpha per step and order (0.1 to
  0.8); the paper's text does not describe it, so it is off by default (`fusion: 1`). A value
  sets one alpha for every step, a list one per step from the second (the scripts' schedule).

Nothing of the training data is stored: pseudo targets and instruction answers are generated
again from the restored weights when a step is resumed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field

from mmcl.data.benchmarks import Task, TaskSpec
from mmcl.data.records import PLACEHOLDER, Record
from mmcl.errors import MmclError
from mmcl.io import derive_seed
from mmcl.methods import register
from mmcl.methods.distill import kl_distill, teacher_logits
from mmcl.methods.lora_ft import LoraFT, LoraOptions
from mmcl.models.base import Batch, Outputs

TASK_TYPES = ("caption", "qa")
Weight = Annotated[float, Field(ge=0, le=1)]


def task_type(spec: TaskSpec) -> str:
    """Captioning is scored by CIDEr (mmcl's or MICL's); every other scorer grades answers."""
    return "caption" if spec.metric in ("cider", "cider-micl") else "qa"


def load_instructions(path: str | Path | None = None) -> dict:
    """The instruction set: {"caption"|"qa": {modality: [...]}, "text": [...]} (built-in by
    default)."""
    try:
        text = (
            Path(path).read_text(encoding="utf-8")
            if path is not None
            else files("mmcl.assets").joinpath("instructions.json").read_text(encoding="utf-8")
        )
        data = json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise MmclError(f"moincl: cannot read the instruction set {path}: {e}") from e
    if not all(isinstance(data.get(t), dict) for t in TASK_TYPES):
        raise MmclError(f"moincl: the instruction set {path} needs 'caption' and 'qa' mappings")
    return data


class MoinclOptions(LoraOptions):
    ptg_fraction: float = Field(
        1.0, ge=0, le=1, description="share of the current samples given pseudo targets"
    )
    ptg_weight: float = Field(1.0, ge=0, description="weight of PTG's KL term")
    ptg_temperature: float = Field(5.0, gt=0, description="softmax temperature of PTG's KL")
    ikd_weight: float = Field(1.0, ge=0, description="weight of the IKD term (0: no IKD)")
    ikd_temperature: float = Field(5.0, gt=0, description="softmax temperature of IKD's KL")
    ikd_batch_size: int = Field(8, ge=1, description="instructions distilled per training step")
    ikd_target: Literal["answer", "instruction"] = Field(
        "answer",
        description="IKD's KL on the teacher's answers, or on the instruction's own positions "
        "(the published code's)",
    )
    instructions: str | None = Field(None, description="instruction set JSON; default built-in")
    fusion: Weight | list[Weight] = Field(
        1.0,
        description="weight of the new adapter after each epoch's fusion with the teacher (1: "
        "none); a list: one per step from the second",
    )


@register
class MoInCL(LoraFT):
    name = "moincl"
    summary = "lora-ft + pseudo targets of earlier task types + instruction distillation"
    Options = MoinclOptions

    def __init__(self, backbone, options, tasks, seed):
        super().__init__(backbone, options, tasks, seed)
        fusion = options.fusion
        if isinstance(fusion, list) and len(fusion) != len(tasks) - 1:
            raise MmclError(
                f"moincl: method.fusion lists {len(fusion)} weights; the stream has "
                f"{len(tasks)} tasks, so it needs {len(tasks) - 1} (one per step from the second)"
            )
        self.instructions = load_instructions(options.instructions)
        self.alpha = 1.0  # this step's fusion weight (1: no fusion, as on the first task)
        self.teacher: dict[str, torch.Tensor] = {}
        self.pseudo: list[Record] = []
        self.ikd_records: list[Record] = []
        self._ikd_rng = random.Random(0)
        self.stats: dict[str, list] = {"pseudo_targets": [], "ptg_kl": [], "ikd_kl": []}
        self._kl: dict[str, list[float]] = {"ptg_kl": [], "ikd_kl": []}

    # --- the teacher's targets --------------------------------------------------------------
    def old_types(self, step: int) -> list[str]:
        """Task types that earlier tasks used on this step's modality, other than its own."""
        spec = self.tasks[step]
        seen = {task_type(s) for s in self.tasks[:step] if s.modality == spec.modality}
        return sorted(seen - {task_type(spec)})

    def _answer(self, records: Sequence[Record], batch_size: int = 64) -> list[Record]:
        """The live model's greedy answers to records' last prompts, as training records
        (records whose answer comes out empty are dropped)."""
        out = []
        for s in range(0, len(records), batch_size):
            chunk = records[s : s + batch_size]
            batch = self.backbone.collate(chunk, train=False).to(self.backbone.device)
            for rec, ans in zip(chunk, self.backbone.generate(batch), strict=True):
                if ans:
                    out.append(rec.with_turns([(rec.prompt, ans)]))
        return out

    def pseudo_targets(self, task: Task, step: int) -> list[Record]:
        """PTG: the (frozen, pre-task) model's answers to old-type instructions on this task's
        inputs; each pseudo record is marked with meta["ptg"]."""
        rng = random.Random(derive_seed(self.seed, "ptg", step))
        k = round(self.opts.ptg_fraction * len(task.train))
        prompts = []
        for old in self.old_types(step):
            pool = self.instructions[old].get(task.spec.modality) or []
            if not pool:
                raise MmclError(
                    f"moincl: the instruction set has no {old} instructions for "
                    f"{task.spec.modality}"
                )
            for rec in rng.sample(list(task.train), k):
                media = "".join(PLACEHOLDER[m] * len(p) for m, p in rec.media.items())
                prompt = f"{media}\n{rng.choice(pool)}"
                prompts.append(
                    Record(f"{rec.id}~ptg-{old}", ((prompt, ""),), rec.media, (), {"ptg": True})
                )
        return self._answer(prompts)

    def instruction_records(self) -> list[Record]:
        """IKD: every instruction of the set without media, answered by the live model."""
        texts = [t for kind in TASK_TYPES for v in self.instructions[kind].values() for t in v]
        texts += self.instructions.get("text", [])
        unique = list(dict.fromkeys(texts))
        records = [Record(f"ikd-{i}", ((t, ""),)) for i, t in enumerate(unique)]
        return records if self.opts.ikd_target == "instruction" else self._answer(records)

    # --- hooks ------------------------------------------------------------------------------
    def before_task(self, task: Task, step: int) -> None:
        self.pseudo, self.ikd_records, self.teacher, self.alpha = [], [], {}, 1.0
        if step == 0:
            return
        f = self.opts.fusion
        self.alpha = f[step - 1] if isinstance(f, list) else f
        self.teacher = {
            n: p.detach().clone() for n, p in self.backbone.adapter_parameters("main").items()
        }
        self.pseudo = self.pseudo_targets(task, step)
        if self.opts.ikd_weight > 0:
            self.ikd_records = self.instruction_records()
        self._ikd_rng = random.Random(derive_seed(self.seed, "ikd", step))

    def train_records(self, task: Task) -> list[Record]:
        return list(task.train) + self.pseudo

    def loss(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        if not self.teacher:
            return {}
        terms = {}
        rows = torch.tensor([bool(r.meta.get("ptg")) for r in batch.records])
        if rows.any() and self.opts.ptg_weight > 0:
            teacher = teacher_logits(self.backbone, self.teacher, batch)
            mask = outputs.answer_mask & rows.to(outputs.answer_mask.device)[:, None]
            kl = kl_distill(
                outputs.logits[:, :-1], teacher[:, :-1], mask, self.opts.ptg_temperature
            )
            self._kl["ptg_kl"].append(kl.item())
            terms["ptg"] = self.opts.ptg_weight * kl
        if self.ikd_records:
            kl = self._ikd()
            self._kl["ikd_kl"].append(kl.item())
            terms["ikd"] = self.opts.ikd_weight * kl
        return terms

    def _ikd(self) -> torch.Tensor:
        """IKD's KL on a few instructions: on the teacher's answers, or (`instruction`, drawn
        with replacement) on the prompt's positions whose next token is the prompt's too."""
        n, pool = self.opts.ikd_batch_size, self.ikd_records
        on_prompt = self.opts.ikd_target == "instruction"
        chosen = (
            self._ikd_rng.choices(pool, k=n)
            if on_prompt
            else self._ikd_rng.sample(pool, min(n, len(pool)))
        )
        ib = self.backbone.collate(chosen, train=not on_prompt).to(self.backbone.device)
        student = self.backbone.forward(ib)
        teacher = teacher_logits(self.backbone, self.teacher, ib)
        real = ib.attention_mask.bool()
        mask = real[:, :-1] & real[:, 1:] if on_prompt else student.answer_mask
        return kl_distill(student.logits[:, :-1], teacher[:, :-1], mask, self.opts.ikd_temperature)

    def after_epoch(self, epoch: int) -> None:
        if not self.teacher or self.alpha == 1.0:
            return
        with torch.no_grad():
            for name, p in self.backbone.adapter_parameters("main").items():
                p.lerp_(self.teacher[name], 1.0 - self.alpha)

    def after_task(self, task: Task, step: int) -> None:
        self.stats["pseudo_targets"].append(len(self.pseudo))
        for name, values in self._kl.items():
            self.stats[name].append(round(sum(values) / len(values), 6) if values else 0.0)
            values.clear()
        self.teacher, self.pseudo, self.ikd_records = {}, [], []

    def report(self) -> dict:
        return {f"{k}_per_task": list(v) for k, v in self.stats.items()}

    def state_dict(self) -> dict:
        return {"stats": {k: list(v) for k, v in self.stats.items()}}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("stats") or {}
        self.stats = {k: list(saved.get(k) or []) for k in self.stats}
