"""cl-moe: CL-MoE, dual momentum mixture of experts (Huai et al., CVPR 2025, arXiv 2503.00413),
as its own repository (ECNU-ICALK/CL-MoE) runs it, on moe-lora's LoRA experts.

- Instance-level routing: every adapted layer mixes its LoRA experts with a per-token softmax
  gate (moe-lora's layer), trained through the tasks.
- Task-level routing: while a task trains, each token's top-2 experts are counted (over all
  layers, ties left out, as the reference's statistics); the task's experts are the
  `task_experts` most counted.
- Dynamic momentum: after task t (t > 0) every expert is updated from its value after task t-1
  (old) and after training on t (new). Experts of task t-1 that task t does not use get
  (1 - m) old + m new; every other expert m old + (1 - m) new (m = 0.7, the reference's
  `params.py`). The gates keep their new values.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator

from mmcl.data.benchmarks import Task
from mmcl.errors import MmclError
from mmcl.methods import register
from mmcl.methods.moe_lora import MoeLora, MoeLoraOptions


class ClMoeOptions(MoeLoraOptions):
    momentum: float = Field(0.7, ge=0, le=1, description="m of the expert update (reference)")
    task_experts: int = Field(
        2,
        ge=1,
        description="experts a task claims: half of them, so that a task can leave some of the "
        "previous task's experts (the reference's top-8 of 4 experts never does)",
    )

    @model_validator(mode="after")
    def _fits(self) -> ClMoeOptions:
        if self.task_experts > self.experts:
            raise ValueError(f"task_experts {self.task_experts} > experts {self.experts}")
        return self


@register
class ClMoe(MoeLora):
    name = "cl-moe"
    summary = (
        "LoRA experts with instance-level gates, task-level expert statistics and momentum "
        "updates of the experts (CL-MoE, arXiv 2503.00413)"
    )
    Options = ClMoeOptions

    def __init__(self, backbone, options, tasks, seed):
        super().__init__(backbone, options, tasks, seed)
        self.counts: torch.Tensor | None = None  # top-2 counts per expert while a task trains
        self.task_top: list[list[int]] = []  # each trained task's experts
        self._old: dict[str, torch.Tensor] = {}

    def setup(self) -> None:
        super().setup()
        for layer in self.layers.values():
            layer.moe_gate.register_forward_hook(self._count)

    def _count(self, module, inputs, logits: torch.Tensor) -> None:
        """Count each token's top-2 experts (ties left out) while a task trains."""
        if self.counts is None or not module.training:
            return
        values, index = logits.detach().topk(2, dim=-1)
        index = index[values[..., 0] != values[..., 1]]
        self.counts += torch.bincount(index.flatten().cpu(), minlength=self.opts.experts)

    def before_task(self, task: Task, step: int) -> None:
        self.counts = torch.zeros(self.opts.experts, dtype=torch.long)
        self._old = {n: p.detach().clone() for n, p in self.backbone.trainable_parameters().items()}

    def after_task(self, task: Task, step: int) -> None:
        if self.counts is None:
            raise MmclError("cl-moe: after_task without before_task")
        order = sorted(range(self.opts.experts), key=lambda e: (-int(self.counts[e]), e))
        self.task_top.append(sorted(order[: self.opts.task_experts]))
        self.counts = None
        if step > 0:
            self.momentum_update(set(self.task_top[-2]) - set(self.task_top[-1]))
        self._old = {}

    @torch.no_grad()
    def momentum_update(self, left: set[int]) -> None:
        """Blend every expert's new weights with its weights before the task; `left`: the
        experts the previous task used and this one does not."""
        m = self.opts.momentum
        keep_old = torch.tensor(
            [1 - m if e in left else m for e in range(self.opts.experts)], dtype=torch.float32
        )
        for name, layer in self.layers.items():
            for part, dim in (("moe_A", 0), ("moe_B", 1)):
                p = getattr(layer, part).weight
                old = self._old[f"{name}.{part}.weight"]
                w = keep_old.to(p.device).repeat_interleave(layer.rank)
                w = w.view(-1, 1) if dim == 0 else w.view(1, -1)
                p.copy_(w * old.to(p.dtype) + (1 - w) * p)

    def report(self) -> dict[str, Any]:
        return {**super().report(), "task_experts": [list(t) for t in self.task_top]}

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"task_top": [list(t) for t in self.task_top]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task_top = [list(t) for t in state.get("task_top") or []]
