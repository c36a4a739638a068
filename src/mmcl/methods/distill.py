"""Knowledge distillation shared by the methods that keep a teacher (lwf, moincl).

`kl_distill` is the per-token KL between a student's and a teacher's output distributions
(Hinton et al.: softened by a temperature T and scaled by T² so that its gradients keep their
size as T changes). `teacher_logits` runs the backbone with a frozen snapshot of some of its
parameters in place of the live ones — for LoRA methods the previous model is the same network
with the previous adapter weights, so the teacher costs one no-grad forward pass and a copy of
the adapter, not a second model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmcl.errors import MmclError
from mmcl.models.base import Backbone, Batch


def kl_distill(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean over the positions where `mask` is true of KL(teacher_T || student_T) · T².

    `student` and `teacher` are logits of shape (..., V); `mask` has their shape without V.
    No position selected gives a zero that still belongs to the student's graph."""
    if student.shape != teacher.shape or student.shape[:-1] != mask.shape:
        raise ValueError(
            f"kl_distill: logits {tuple(student.shape)} / {tuple(teacher.shape)} "
            f"and mask {tuple(mask.shape)} do not match"
        )
    if not mask.any():
        return student.sum() * 0.0
    t = temperature
    log_s = F.log_softmax(student[mask].float() / t, dim=-1)
    log_t = F.log_softmax(teacher[mask].float().detach() / t, dim=-1)
    # batchmean divides by the number of selected positions: a per-token mean.
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * t * t


class _Forward(nn.Module):
    """Makes `backbone.forward` a module call, so torch.func can swap parameters under it."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.core = backbone.core
        self._backbone = backbone

    def forward(self, batch: Batch) -> torch.Tensor:
        return self._backbone.forward(batch).logits


@torch.no_grad()
def teacher_logits(
    backbone: Backbone, params: dict[str, torch.Tensor], batch: Batch
) -> torch.Tensor:
    """Logits (B, N, V), as `Outputs.logits`, of the backbone in eval mode with `params` (core
    parameter name -> tensor, e.g. a snapshot of the adapter weights taken before the task)
    replacing its own parameters of those names; the live parameters and their gradients are
    untouched."""
    unknown = set(params) - {n for n, _ in backbone.core.named_parameters()}
    if unknown:  # torch.func would silently ignore them and run the live weights
        raise MmclError(f"teacher_logits: the model has no parameters {sorted(unknown)[:3]}")
    swapped = {f"core.{n}": t for n, t in params.items()}
    with backbone.teacher():
        return torch.func.functional_call(_Forward(backbone), swapped, (batch,), strict=False)
