"""o-lora: Orthogonal Subspace Learning (Wang et al., 2023).

Each task gets a new LoRA; the earlier ones are frozen and stay active, so inference needs no
task identity. While a task trains, its LoRA's A matrices (the subspace it writes from) are
pushed orthogonal to those of all earlier LoRAs in the same layer:
orth_weight · sum_layers sum |A_prev A_cur^T|, plus optionally l2_weight · sum of the L2 norms
of the current LoRA's matrices (both as in the paper's code).

As in the paper's code, the earlier LoRAs are kept as one LoRA whose rank grows by r per task
(their A's stacked, B's side by side: its update is exactly the sum of theirs), so a forward pass
runs two LoRAs whatever the number of tasks, and the earlier A's are already stacked for the
loss (layers whose A matrices have the same width are multiplied in one batched matmul). With
LoRA dropout, the earlier tasks then share one dropout mask in training.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from mmcl.data.benchmarks import Task
from mmcl.methods import register
from mmcl.methods.base import Method
from mmcl.methods.folded_loras import FoldedLoras
from mmcl.methods.lora_ft import LoraOptions
from mmcl.models.base import Batch, Outputs


class OLoraOptions(LoraOptions):
    orth_weight: float = Field(0.5, ge=0, description="lambda_1: weight of the orthogonality loss")
    l2_weight: float = Field(0.0, ge=0, description="lambda_2: weight of the new LoRA's L2 norm")


def orthogonality_loss(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """sum |previous @ current^T| over a stack of layers: previous (L, R, d), current (L, r, d).

    Zero exactly when every row of `current` is orthogonal to every row of `previous` in the
    same layer."""
    return torch.bmm(previous, current.transpose(1, 2)).abs().sum()


@register
class OLora(Method):
    name = "o-lora"
    summary = "a new LoRA per task, earlier ones frozen but active; new A orthogonal to old A's"
    Options = OLoraOptions

    def __init__(self, backbone, options, tasks, seed):
        super().__init__(backbone, options, tasks, seed)
        self.folded = FoldedLoras(backbone, self.opts.lora)  # the earlier tasks' LoRAs
        self.current: str | None = None  # the LoRA of the task in training
        # Per A-matrix width: (earlier A's stacked (L, R, d), the current A parameters).
        self._groups: list[tuple[torch.Tensor, list[nn.Parameter]]] = []
        self.orth_at_end: list[float] = []  # unweighted loss when each task ends (diagnostic)

    def _stack_groups(self) -> None:
        """Per layer, the earlier LoRAs' A matrices (already stacked); layers grouped by width."""
        groups: dict[int, tuple[list[torch.Tensor], list[nn.Parameter]]] = {}
        if self.folded.past:
            earlier = self.backbone.lora_factors(self.folded.past)
            for layer, (a, _) in self.backbone.lora_factors(self.current).items():
                olds, curs = groups.setdefault(a.shape[1], ([], []))
                olds.append(earlier[layer][0].detach())
                curs.append(a)
        self._groups = [(torch.stack(olds), curs) for olds, curs in groups.values()]

    def before_task(self, task: Task, step: int) -> None:
        self.current = f"task{step}"
        self.backbone.add_lora(self.current, self.opts.lora)
        self.folded.use(self.current)
        self.backbone.set_trainable(self.backbone.adapter_parameters(self.current))
        self._stack_groups()

    def orthogonality(self) -> torch.Tensor:
        """The orthogonality loss of the current LoRA against the earlier ones (unweighted)."""
        terms = [orthogonality_loss(old, torch.stack(cur)) for old, cur in self._groups]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def loss(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        out = {}
        if self._groups and self.opts.orth_weight > 0:
            out["orth"] = self.opts.orth_weight * self.orthogonality()
        if self.opts.l2_weight > 0:
            params = self.backbone.adapter_parameters(self.current).values()
            out["l2"] = self.opts.l2_weight * torch.stack([p.norm() for p in params]).sum()
        return out

    def after_task(self, task: Task, step: int) -> None:
        """Freeze this task's LoRA and fold it into the earlier ones'."""
        with torch.no_grad():
            self.orth_at_end.append(round(float(self.orthogonality()), 6))
        self._groups = []
        self.folded.fold(self.current, step)
        self.current = None
        self.folded.use(self.current)
        self.backbone.set_trainable({})  # peft's switch made the active adapter trainable

    def report(self) -> dict:
        return {"adapters": self.folded.learned, "orthogonality_at_task_end": self.orth_at_end}

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**self.folded.state_dict(), "orth_at_end": list(self.orth_at_end)}

    def load_state_dict(self, state: dict) -> None:
        """Re-add the earlier tasks' LoRA with its weights, frozen."""
        self.orth_at_end = list(state.get("orth_at_end") or [])
        self.folded.load_state_dict(state)
        if self.folded.past:
            self.folded.use(self.current)
            self.backbone.set_trainable({})
