"""lwf: Learning without Forgetting (Li & Hoiem, 2016) for an instruction-tuned LM.

One LoRA trained through the tasks as in lora-ft, plus a distillation term: on the current
task's answer tokens, the per-token KL between the current model's output distribution and
that of the model as it was before this task (the frozen teacher), softened by a temperature.
The teacher is a snapshot of the adapter weights taken in `before_task`, run with
`distill.teacher_logits`; on resume the snapshot is taken again from the restored weights, so
nothing needs saving.
"""

from __future__ import annotations

import torch
from pydantic import Field

from mmcl.data.benchmarks import Task
from mmcl.methods import register
from mmcl.methods.distill import kl_distill, teacher_logits
from mmcl.methods.lora_ft import LoraFT, LoraOptions
from mmcl.models.base import Batch, Outputs


class LwfOptions(LoraOptions):
    weight: float = Field(1.0, ge=0, description="weight of the distillation term")
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the KL")


@register
class LwF(LoraFT):
    name = "lwf"
    summary = "lora-ft + KL distillation to the previous model on the new task's answers"
    Options = LwfOptions

    def __init__(self, backbone, options, tasks, seed):
        super().__init__(backbone, options, tasks, seed)
        self.teacher: dict[str, torch.Tensor] = {}
        self.kl_mean: list[float] = []  # mean distillation KL over each task (diagnostic)
        self._kl: list[float] = []

    def before_task(self, task: Task, step: int) -> None:
        # The model before this task is the teacher; the first task has none.
        self.teacher = (
            {n: p.detach().clone() for n, p in self.backbone.adapter_parameters("main").items()}
            if step > 0
            else {}
        )

    def loss(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        if not self.teacher or self.opts.weight == 0:
            return {}
        teacher = teacher_logits(self.backbone, self.teacher, batch)
        kl = kl_distill(
            outputs.logits[:, :-1], teacher[:, :-1], outputs.answer_mask, self.opts.temperature
        )
        self._kl.append(kl.item())
        return {"lwf": self.opts.weight * kl}

    def after_task(self, task: Task, step: int) -> None:
        self.teacher = {}  # frees the snapshot between tasks
        self.kl_mean.append(round(sum(self._kl) / len(self._kl), 6) if self._kl else 0.0)
        self._kl = []

    def report(self) -> dict:
        return {"kl_mean_per_task": list(self.kl_mean)}

    def state_dict(self) -> dict:
        return {"kl_mean": list(self.kl_mean)}

    def load_state_dict(self, state: dict) -> None:
        self.kl_mean = list(state.get("kl_mean") or [])
