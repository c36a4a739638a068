"""UNIFIER's vision modules (methods/unifier.py is the method that trains them): the VRE module
of a vision block (per-scenario bottleneck branches and the projection that fuses them, or, routed,
each image through its own branch) and the VCC loss of one layer."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mmcl.errors import MmclError


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
        # routed: None, every branch fused (the paper); else each sample's branch, an int for
        # the whole batch or a (B,) tensor. `enabled` False: the block runs as without VRE.
        self.route: int | torch.Tensor | None = None
        self.enabled = True

    def add_branch(self, device: torch.device, scale: bool = True) -> None:
        """Append a branch; the projection widens, keeping its weights for the earlier ones and
        starting the new branch's block at identity / K (scale False: identity)."""
        k = len(self.branches) + 1
        self.branches.append(Branch(self.width, self.rank).to(device, self.dtype))
        proj = nn.Linear(k * self.width, self.width).to(device, self.dtype)
        with torch.no_grad():
            proj.weight.zero_()
            proj.bias.zero_()
            if self.proj is not None:
                proj.weight[:, : -self.width].copy_(self.proj.weight)
                proj.bias.copy_(self.proj.bias)
            proj.weight[:, -self.width :].copy_(torch.eye(self.width) / (k if scale else 1))
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
        if self.route is not None:
            return self._routed(x)
        outs = [b(x) for b in self.branches]
        fused = F.linear(torch.cat(outs, dim=-1), self._weight(), self.proj.bias)
        if self.record and self.training:
            self.cache = (x, outs, fused)
        return fused

    def _routed(self, x: torch.Tensor) -> torch.Tensor:
        """Each sample through its own branch and that branch's block of the projection."""
        weight, w = self._weight(), self.width
        route = self.route
        if isinstance(route, int):
            return F.linear(self.branches[route](x), weight[:, route * w : (route + 1) * w])
        if len(route) != len(x):
            raise MmclError(f"unifier: {len(route)} routes for a batch of {len(x)} images")
        out = torch.zeros_like(x)
        for k in route.unique().tolist():
            idx = (route == k).nonzero().squeeze(1).to(x.device)
            out[idx] = F.linear(self.branches[k](x[idx]), weight[:, k * w : (k + 1) * w])
        return out

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


def add_expansion(ffn: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of a vision block's FFN: add its VRE module's output to the FFN's."""
    return output + ffn.vre(args[0]) if len(ffn.vre.branches) and ffn.vre.enabled else output
