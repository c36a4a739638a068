"""unifier: UNIFIER (Jiang et al., 2025) — multi-scenario continual learning on the vision side.

Vision Representation Expansion (VRE): every vision-encoder block gets a module parallel to its
FFN, holding K bottleneck branches (down -> GELU -> up), one per scenario, and a shared
projection that maps the concatenated branch outputs back to the block width; its output is
added to the FFN's (so to the block's output). A new scenario adds a branch; a revisit
(`<scenario>_<n>`, see data/synth/scenario.py) trains that scenario's branch again. Only the
current branch and the projection train; earlier branches are frozen. At inference every
branch runs and the projection fuses them: no router, no scenario id (`predict` returns None).

Vision Consistency Constraint (VCC), per layer: the prototype is the mean of the branch
outputs (a fixed target); each branch output is summarised as a token profile (mean over
features, softmax over tokens) and a feature profile (mean over tokens, softmax over features),
and pulled to the prototype's profiles with a temperature-scaled KL (x tau^2), summed over the
branches; a like term pulls the projection output's profiles to those of the old model's
projection output (the module as it was before this task, on the same input), from the second
task on. L = L_task + lambda * mean over layers of L_vcc. The old-model term is what holds the
shared projection, which every image goes through and every task retrains.

Ablations: `vre: false` keeps one shared branch trained on every scenario; `vcc` then compares
it with frozen snapshots of itself taken after each earlier scenario (VCC without expansion:
the per-scenario representations are the snapshots, used in the loss only). `proj_train: own`
trains only the current branch's block of the projection, holding the other blocks and the
bias (so at zero) as before the task: it tests whether a task's retraining of how the earlier
branches are mixed is what forgets (not the paper's method, which trains the whole
projection). The language model is tuned with one LoRA, as in lora-ft. The modules live
inside the vision blocks of `backbone.core` (registered as `<block>.mlp.vre`, run by a hook on
the FFN that finds them there), so the runner checkpoints them by name, and a copy of the model
(FSDP's sharded one, see train.py) runs its own copies of them.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call

from mmcl.data.benchmarks import Task
from mmcl.data.synth.scenario import scenario_of
from mmcl.errors import MmclError
from mmcl.methods import register
from mmcl.methods.base import Method, MethodOptions
from mmcl.models.base import Batch, LoraSpec, Outputs


class Branch(nn.Module):
    """A bottleneck branch; the up-projection starts at zero, so a new branch changes nothing."""

    def __init__(self, width: int, rank: int):
        super().__init__()
        self.down = nn.Linear(width, rank)
        self.up = nn.Linear(rank, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x)))


class VisionExpansion(nn.Module):
    """The VRE module of one vision block: branches and the shared projection."""

    def __init__(self, width: int, rank: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.width, self.rank, self.dtype = width, rank, dtype
        self.branches = nn.ModuleList()
        self.register_module("proj", None)
        self.record = False  # keep (input, branch outputs, fused) of training forwards for VCC
        self.cache: tuple[torch.Tensor, list[torch.Tensor], torch.Tensor] | None = None
        self.own: int | None = None  # proj_train=own: the block that trains (others held)
        self.register_buffer("held_weight", None, persistent=False)

    def add_branch(self, device: torch.device) -> None:
        """Append a branch; the projection widens, keeping its weights for the earlier ones and
        starting the new branch's block at identity / K."""
        k = len(self.branches) + 1
        self.branches.append(Branch(self.width, self.rank).to(device, self.dtype))
        proj = nn.Linear(k * self.width, self.width).to(device, self.dtype)
        with torch.no_grad():
            proj.weight.zero_()
            proj.bias.zero_()
            if self.proj is not None:
                proj.weight[:, : -self.width].copy_(self.proj.weight)
                proj.bias.copy_(self.proj.bias)
            proj.weight[:, -self.width :].copy_(torch.eye(self.width) / k)
        self.proj = proj

    def hold(self, own: int | None) -> None:
        """From now on train only block `own` of the projection's weight, the other blocks held
        as they are; None: write them back into the weight and stop holding."""
        if own is None and self.own is not None:
            with torch.no_grad():
                self.proj.weight.copy_(self._weight())
        self.own = own
        self.held_weight = None if own is None else self.proj.weight.detach().clone()

    def _weight(self) -> torch.Tensor:
        """The projection's weight: block `own` live, the others as held (exactly, whatever
        the optimizer's weight decay does to the parameter's other blocks)."""
        if self.own is None:
            return self.proj.weight
        lo, hi = self.own * self.width, (self.own + 1) * self.width
        held = self.held_weight
        return torch.cat([held[:, :lo], self.proj.weight[:, lo:hi], held[:, hi:]], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        fused = F.linear(torch.cat(outs, dim=-1), self._weight(), self.proj.bias)
        if self.record and self.training:
            self.cache = (x, outs, fused)
        return fused

    def frozen_copy(self) -> VisionExpansion:
        """This module as it is now, detached from training: the old model of VCC."""
        cache, self.cache = self.cache, None
        twin = copy.deepcopy(self).requires_grad_(False)
        self.cache, twin.record = cache, False
        return twin


def profile_kl(target: torch.Tensor, output: torch.Tensor, tau: float) -> torch.Tensor:
    """Temperature-scaled KL(target || output) of two (B, N, D) outputs, on their token profiles
    (mean over features, softmax over the N tokens) plus their feature profiles (mean over
    tokens, softmax over the D features); batch mean, times tau^2."""
    loss = output.new_zeros((), dtype=torch.float32)
    for dim in (-1, 1):
        t = F.log_softmax(target.float().mean(dim) / tau, dim=-1)
        o = F.log_softmax(output.float().mean(dim) / tau, dim=-1)
        loss = loss + F.kl_div(o, t, log_target=True, reduction="batchmean") * tau**2
    return loss


def consistency_loss(
    branches: list[torch.Tensor], fused: torch.Tensor, old: torch.Tensor | None, tau: float
) -> torch.Tensor:
    """VCC of one layer: each branch output pulled to the prototype (the mean of the branch
    outputs, a fixed target), and the fused output to the old model's (`old`; none on the
    first task). Zero when the branches agree and the fused output is the old one."""
    proto = torch.stack(branches).mean(0).detach()
    loss = sum(profile_kl(proto, b, tau) for b in branches)
    if old is not None:
        loss = loss + profile_kl(old, fused, tau)
    return loss


def _add_expansion(ffn: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of a vision block's FFN: add its VRE module's output to the FFN's."""
    return output + ffn.vre(args[0]) if len(ffn.vre.branches) else output


def _ffn(block: nn.Module) -> nn.Module:
    ffn = getattr(block, "mlp", None)
    if not isinstance(ffn, nn.Module):
        raise MmclError(
            f"unifier needs vision blocks with an `mlp` FFN; got {type(block).__name__}"
        )
    return ffn


class UnifierOptions(MethodOptions):
    lora: LoraSpec = LoraSpec()
    vre: bool = Field(True, description="a branch per scenario (False: one shared branch)")
    vcc: bool = Field(True, description="vision consistency constraint")
    rank: int = Field(16, ge=1, description="bottleneck width of a branch")
    vcc_weight: float = Field(1.0, ge=0, description="lambda, the weight of the VCC loss")
    vcc_tau: float = Field(1.0, gt=0, description="temperature of the VCC KL")
    proj_train: Literal["all", "own"] = Field(
        "all", description="projection blocks a task trains: all (the paper) or its branch's"
    )


@register
class Unifier(Method):
    name = "unifier"
    summary = "UNIFIER: per-scenario vision branches fused without routing + consistency (VRE+VCC)"
    Options = UnifierOptions
    not_exportable = "its per-scenario vision branches and their fusion live in the vision encoder"

    def setup(self) -> None:
        self.backbone.add_lora("main", self.opts.lora)
        self.backbone.use_adapters("main")
        self.vres: list[VisionExpansion] = []
        for block in self.backbone.vision_blocks():
            ffn = _ffn(block)
            first = next(m for m in ffn.modules() if isinstance(m, nn.Linear))
            vre = VisionExpansion(first.in_features, self.opts.rank, first.weight.dtype)
            vre.record = self.opts.vcc
            ffn.add_module("vre", vre)
            ffn.register_forward_hook(_add_expansion)
            self.vres.append(vre)
        self.branch_of: dict[str, int] = {}  # scenario -> its branch (training only)
        self.snapshots: dict[str, list[dict[str, torch.Tensor]]] = {}  # vre=False: per layer
        self.old: list[VisionExpansion] = []  # per layer, as before this task (VCC's old model)
        self.current: str | None = None

    def _add_branch(self) -> None:
        for vre in self.vres:
            vre.add_branch(self.backbone.device)

    def before_task(self, task: Task, step: int) -> None:
        self.current = scenario_of(task.name)
        # Taken before a new branch is added: its up-projection starts at zero, so the old
        # model's output is the same with or without it. Rebuilt from the weights on resume.
        self.old = [vre.frozen_copy() for vre in self.vres] if self.branch_of else []
        if self.current not in self.branch_of:
            if self.opts.vre or not self.branch_of:
                self._add_branch()
            self.branch_of[self.current] = len(self.vres[0].branches) - 1
        k = self.branch_of[self.current]
        params = dict(self.backbone.adapter_parameters("main"))
        # proj_train=own: the bias is no branch's, so it does not train (it stays at zero).
        proj = r"proj\." if self.opts.proj_train == "all" else r"proj\.weight"
        params.update(self.backbone.parameters_of(rf"\.vre\.(?:{proj}|branches\.{k}\.)"))
        self.backbone.set_trainable(params)
        if self.opts.proj_train == "own":
            for vre in self.vres:
                vre.hold(k)

    def loss(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        if not self.opts.vcc:
            return {}
        terms = []
        # The modules of the model that ran, which under FSDP are copies of self.vres.
        running = [m for m in self.backbone.running_modules() if isinstance(m, VisionExpansion)]
        for i, vre in enumerate(running):
            if vre.cache is None:
                continue
            x, outs, fused = vre.cache
            vre.cache = None
            with torch.no_grad():  # vre=False: earlier scenarios' snapshots of the shared branch
                outs = outs + [
                    functional_call(vre.branches[0], snap[i], (x,))
                    for s, snap in self.snapshots.items()
                    if s != self.current
                ]
                old = self.old[i](x) if self.old else None
            terms.append(consistency_loss(outs, fused, old, self.opts.vcc_tau))
        if not terms:
            return {}
        return {"vcc": self.opts.vcc_weight * torch.stack(terms).mean()}

    def after_task(self, task: Task, step: int) -> None:
        for vre in self.vres:
            vre.hold(None)
        if not self.opts.vre and self.opts.vcc:
            self.snapshots[self.current] = [
                {n: p.detach().clone() for n, p in vre.branches[0].named_parameters()}
                for vre in self.vres
            ]

    def report(self) -> dict[str, Any]:
        n = sum(p.numel() for vre in self.vres for p in vre.parameters())
        return {
            "branches": len(self.vres[0].branches),
            "branch_of": dict(self.branch_of),
            "vision_expansion_parameters": n,
        }

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # Branch and projection weights are saved by the runner (they were trainable); here
        # only the scenario -> branch map and the snapshots (never trainable, so not saved).
        snaps = {s: {str(i): x for i, x in enumerate(ls)} for s, ls in self.snapshots.items()}
        return {"branch_of": dict(self.branch_of), "snapshots": snaps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.branch_of = {s: int(k) for s, k in state["branch_of"].items()}
        for _ in range(max(self.branch_of.values(), default=-1) + 1):
            self._add_branch()  # the runner then loads their weights by name
        self.snapshots = {
            s: [
                {n: t.to(self.backbone.device) for n, t in layers[str(i)].items()}
                for i in range(len(self.vres))
            ]
            for s, layers in state.get("snapshots", {}).items()
        }
