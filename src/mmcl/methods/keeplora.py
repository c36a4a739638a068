"""keeplora: KeepLoRA, continual learning with residual gradient adaptation (Luo et al., ICLR
2026, arXiv 2601.19659), as its authors' MCITlib port (MaolinLuo/KeepLoRA, `MCITlib/KeepLoRA`)
runs it on LLaVA.

Every adapted linear layer W (out x in) keeps a protected subspace M of its input space
(orthonormal rows, k x in):

- before the first task, the principal subspace of the pre-trained W: the top left singular
  vectors of W^T holding `weight_energy` (0.6) of its energy (general knowledge);
- each task t then trains a fresh LoRA B_t A_t on top of the earlier ones (which stay frozen
  and active: the reference merges them into W). A_t is not learned: it is the top-r left
  singular vectors of (I - M^T M) G^T, with G the mean gradient of the loss with respect to W
  over a share (`gradient_share`, 0.2) of the task's training data at the current model, and
  stays frozen; only B_t trains (from zero). So every update B_t A_t maps the protected
  subspace to zero: the task learns in the residual subspace only;
- after the task, the gradient at the trained model is taken again and M grows by the
  dominant directions of its part outside M until M holds `feature_energy` (0.99) of its
  energy (GPM's criterion, the reference's `energy` mode): the next tasks keep off them.

The reference draws A_t with a randomised SVD (`svd_lowrank`); here a full SVD, so that runs
are deterministic. Where the residual subspace has fewer than r dimensions, A_t's extra rows
are projected out of M too, so the constraint holds exactly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mmcl.data.benchmarks import Task
from mmcl.errors import MmclError
from mmcl.methods import register
from mmcl.methods.base import Method
from mmcl.methods.lora_ft import LoraOptions
from mmcl.methods.task_experts import wrap_decoder_linears
from mmcl.models.base import LoraSpec

GRADIENT_BATCH = 8  # samples per backward pass while taking the mean gradient (memory only)


class KeepLoraLinear(nn.Module):
    """A frozen nn.Linear plus one LoRA per task so far, all active: W x + s sum_t B_t A_t x.
    The A_t are fixed (frozen parameters); float32, as peft keeps its adapters. The finished
    tasks' updates are merged into W (as the reference does) the first time the layer runs
    after a new task joins, so a pass costs one linear and one LoRA whatever the number of
    tasks; their B's stay, frozen, for resume (a resumed run merges them in the same order)."""

    def __init__(self, base: nn.Linear, spec: LoraSpec):
        super().__init__()
        self.base_layer = base
        self.r, self.scaling = spec.r, spec.alpha / spec.r
        self.task_A = nn.ParameterList()
        self.task_B = nn.ParameterList()
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout else nn.Identity()
        self.merged = 0  # tasks whose update is in base_layer.weight

    def add_task(self, a: torch.Tensor) -> None:
        """A new task's LoRA with the given (r, in) A and B = 0."""
        dev = self.base_layer.weight.device
        self.task_A.append(nn.Parameter(a.float().to(dev), requires_grad=False))
        zeros = torch.zeros(self.base_layer.out_features, self.r, device=dev)
        self.task_B.append(nn.Parameter(zeros))

    @torch.no_grad()
    def _merge_finished(self) -> None:
        """Fold every task but the newest into W, one at a time (the same rounding on resume)."""
        w = self.base_layer.weight
        for t in range(self.merged, len(self.task_A) - 1):
            w.add_((self.scaling * self.task_B[t] @ self.task_A[t]).to(w.dtype))
        self.merged = max(self.merged, len(self.task_A) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not len(self.task_A):
            return self.base_layer(x)
        self._merge_finished()
        out = self.base_layer(x)
        a, b = self.task_A[-1], self.task_B[-1]
        delta = F.linear(F.linear(self.dropout(x.float()), a), b) * self.scaling
        return out + delta.to(out.dtype)


def principal_rows(m: torch.Tensor, energy: float) -> torch.Tensor:
    """(k, in): the top left singular vectors of m (in, n) holding `energy` of its squared
    singular values (at least one); the reference's rule for the pre-trained weights."""
    u, s, _ = torch.linalg.svd(m, full_matrices=False)
    ratio = s.square() / s.square().sum()
    k = max(int((ratio.cumsum(0) < energy).sum()), 1)
    return u[:, :k].T.contiguous()


def grow_space(space: torch.Tensor, grad_t: torch.Tensor, energy: float) -> torch.Tensor:
    """`space` (k, in) grown by the dominant directions of grad_t (in, n) outside it, until it
    holds `energy` of grad_t's energy (GPM's criterion)."""
    total = grad_t.square().sum()
    if total == 0:
        return space
    residual = grad_t - space.T @ (space @ grad_t)
    u, s, _ = torch.linalg.svd(residual, full_matrices=False)
    held = (total - s.square().sum()) / total
    r = 0
    for part in s.square() / total:
        if held >= energy:
            break
        held, r = held + part, r + 1
    grown = torch.cat([space, u[:, :r].T])
    return grown[: grown.shape[1]]


class KeepLoraOptions(LoraOptions):
    weight_energy: float = Field(
        0.6, gt=0, le=1, description="energy of W kept as its principal subspace (reference)"
    )
    feature_energy: float = Field(
        0.99, gt=0, le=1, description="energy of each task's gradient the subspace keeps (ref.)"
    )
    gradient_share: float = Field(
        0.2, gt=0, le=1, description="share of a task's samples whose mean gradient is taken (ref.)"
    )


@register
class KeepLora(Method):
    name = "keeplora"
    summary = (
        "a LoRA per task whose fixed A is the task's gradient projected off the pre-trained "
        "principal subspace and earlier tasks' directions (KeepLoRA, arXiv 2601.19659)"
    )
    Options = KeepLoraOptions
    not_exportable = "its task LoRAs are mmcl layers with fixed A matrices, not peft adapters"

    def __init__(self, backbone, options, tasks, seed):
        super().__init__(backbone, options, tasks, seed)
        self.space: dict[str, torch.Tensor] = {}  # layer -> protected rows (k, in), float32
        self.tasks_done = 0

    def setup(self) -> None:
        spec = self.opts.lora
        self.layers: dict[str, KeepLoraLinear] = wrap_decoder_linears(
            self.backbone, spec, self.name, lambda m, _layer, _top: KeepLoraLinear(m, spec)
        )
        for name, layer in self.layers.items():
            w = layer.base_layer.weight.detach().float().cpu()
            self.space[name] = principal_rows(w.T, self.opts.weight_energy)
        self.backbone.set_trainable({})

    # --- the task's gradient ----------------------------------------------------------------
    def mean_gradients(self, task: Task) -> dict[str, torch.Tensor]:
        """Per layer, the mean over batches of d loss / d W (out, in) on an evenly spaced
        `gradient_share` of the task's training samples, at the current model (the reference
        takes it in train mode, with LoRA dropout; here without dropout)."""
        recs = task.train
        n = max(1, int(len(recs) * self.opts.gradient_share))
        picked = [recs[int(i)] for i in torch.linspace(0, len(recs) - 1, n).long().tolist()]
        bb = self.backbone
        weights = {name: layer.base_layer.weight for name, layer in self.layers.items()}
        if any(not w.is_floating_point() for w in weights.values()):
            raise MmclError("keeplora needs the gradient of every adapted weight: not quantized")
        trainable = bb.trainable_parameters()
        bb.set_trainable(weights)
        sums = {name: torch.zeros(w.shape) for name, w in weights.items()}
        batches = range(0, len(picked), GRADIENT_BATCH)
        try:
            for s in batches:
                batch = bb.collate(picked[s : s + GRADIENT_BATCH], train=True).to(bb.device)
                with bb.eval_mode():  # no dropout: the same gradient in a resumed run
                    bb.forward(batch).loss.backward()
                for name, w in weights.items():
                    sums[name] += w.grad.detach().float().cpu()
                    w.grad = None
        finally:
            bb.set_trainable(trainable)
        return {name: g / len(batches) for name, g in sums.items()}

    # --- lifecycle --------------------------------------------------------------------------
    def before_task(self, task: Task, step: int) -> None:
        """A_t: the top-r directions of the task's gradient outside the protected subspace."""
        r = self.opts.lora.r
        for name, g in self.mean_gradients(task).items():
            m = self.space[name]
            residual = g.T - m.T @ (m @ g.T)
            u, _, _ = torch.linalg.svd(residual, full_matrices=False)
            a = u[:, :r].T
            if a.shape[0] < r:  # a layer narrower than the rank: pad with zero rows
                a = torch.cat([a, a.new_zeros(r - a.shape[0], a.shape[1])])
            self.layers[name].add_task(a - (a @ m.T) @ m)
        self.tasks_done = step + 1
        self.backbone.set_trainable(
            {f"{n}.task_B.{step}": layer.task_B[step] for n, layer in self.layers.items()}
        )

    def after_task(self, task: Task, step: int) -> None:
        """The subspace grows by the trained task's dominant gradient directions."""
        self.backbone.set_trainable({})
        for name, g in self.mean_gradients(task).items():
            self.space[name] = grow_space(self.space[name], g.T, self.opts.feature_energy)

    def report(self) -> dict[str, Any]:
        dims = [m.shape[0] for m in self.space.values()]
        return {
            "adapters": self.tasks_done,
            "mean_protected_dims": round(sum(dims) / max(len(dims), 1), 2),
        }

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The fixed A's and the subspaces (the B's are trained: they load with the model)."""
        return {
            "tasks_done": self.tasks_done,
            "space": {n.replace(".", "/"): m.clone() for n, m in self.space.items()},
            "task_A": {
                f"{n.replace('.', '/')}/{t}": a.detach().cpu().clone()
                for n, layer in self.layers.items()
                for t, a in enumerate(layer.task_A)
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-add every finished task's LoRA with its A (its B loads with the model)."""
        self.tasks_done = int(state.get("tasks_done", 0))
        self.space = {n.replace("/", "."): m.float() for n, m in state["space"].items()}
        a_of = state.get("task_A") or {}
        for name, layer in self.layers.items():
            for t in range(self.tasks_done):
                layer.add_task(a_of[f"{name.replace('.', '/')}/{t}"])
        self.backbone.set_trainable({})
