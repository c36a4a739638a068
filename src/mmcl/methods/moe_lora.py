"""moe-lora: a mixture of LoRA experts with a learned gate in every adapted layer, as CoIN's
MoELoRA (Chen et al., 2024), trained sequentially through the tasks.

A small tuner, separate from the model as peft's are: `add_moe_lora(model, config)` replaces
each linear layer whose name matches `config.targets` by a `MoELoraLinear` that keeps the
frozen layer and adds

    y = W x + (alpha / r) · sum_e g_e(x) · B_e A_e x,    g(x) = softmax(G x)   (per token)

with E experts of rank r / E each (the total rank r matches a plain LoRA of rank r) and a
linear gate G. The experts and gates are shared by all tasks and keep training task after
task: it is a continual-learning baseline (no task identity), not parameter isolation.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from mmcl.errors import MmclError
from mmcl.methods import register
from mmcl.methods.base import Method
from mmcl.methods.lora_ft import LoraOptions


class MoeLoraConfig(BaseModel, extra="forbid"):
    """What `add_moe_lora` puts where: `targets` is a regex on module names (full match)."""

    targets: str
    r: int = Field(16, ge=1, description="total rank, shared out equally among the experts")
    alpha: int = Field(32, ge=1)
    experts: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)


class MoELoraLinear(nn.Module):
    """A frozen nn.Linear plus gated LoRA experts. The experts' A (and B) matrices are stored
    side by side in one linear layer, so all experts run as one matmul each way; the gate
    scales each expert's rank-slice of the hidden vector."""

    def __init__(self, base: nn.Linear, cfg: MoeLoraConfig):
        super().__init__()
        if cfg.r % cfg.experts:
            raise MmclError(f"moe-lora: rank {cfg.r} is not a multiple of {cfg.experts} experts")
        self.base_layer = base
        self.experts, self.rank = cfg.experts, cfg.r // cfg.experts
        self.scaling = cfg.alpha / cfg.r
        # float32 experts on a half-precision or quantized base, as peft keeps its adapters
        kw = {"bias": False, "device": base.weight.device, "dtype": torch.float32}
        self.moe_A = nn.Linear(base.in_features, cfg.r, **kw)  # kaiming-uniform, as peft's A
        self.moe_B = nn.Linear(cfg.r, base.out_features, **kw)
        self.moe_gate = nn.Linear(base.in_features, cfg.experts, **kw)
        nn.init.zeros_(self.moe_B.weight)  # starts as the base layer, as LoRA does
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """(..., E) expert weights of each token, summing to one."""
        return F.softmax(self.moe_gate(x.float()), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        xf = x.float()
        h = self.moe_A(self.dropout(xf)).unflatten(-1, (self.experts, self.rank))
        h = (h * self.gate(xf).unsqueeze(-1)).flatten(-2)
        return out + (self.moe_B(h) * self.scaling).to(out.dtype)


def add_moe_lora(model: nn.Module, cfg: MoeLoraConfig) -> dict[str, MoELoraLinear]:
    """Wrap every nn.Linear of `model` whose name fully matches `cfg.targets`, in place."""
    pattern = re.compile(cfg.targets)
    found = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and pattern.fullmatch(name)
    ]
    if not found:
        raise MmclError(f"moe-lora: no linear layer matches {cfg.targets!r}")
    wrapped = {}
    for name, m in found:
        parent, _, child = name.rpartition(".")
        wrapped[name] = MoELoraLinear(m, cfg)
        setattr(model.get_submodule(parent), child, wrapped[name])
    return wrapped


class MoeLoraOptions(LoraOptions):
    """`lora` as for lora-ft (r is the total rank of all experts); `experts` per layer."""

    experts: int = Field(4, ge=1, description="LoRA experts per adapted layer")


@register
class MoeLora(Method):
    name = "moe-lora"
    summary = "LoRA experts with a learned per-token gate in each layer (CoIN's MoELoRA)"
    Options = MoeLoraOptions
    not_exportable = "its per-token gates mix LoRA experts inside each layer"

    def setup(self) -> None:
        spec = self.opts.lora
        targets = spec.targets or self.backbone.lm_lora_targets
        if spec.vision:  # the same choice of layers as Backbone.add_lora
            if not self.backbone.vision_lora_targets:
                raise MmclError(f"{type(self.backbone).__name__} has no vision encoder for LoRA")
            targets = f"(?:{targets})|(?:{self.backbone.vision_lora_targets})"
        cfg = MoeLoraConfig(
            targets=targets,
            r=spec.r,
            alpha=spec.alpha,
            experts=self.opts.experts,
            dropout=spec.dropout,
        )
        self.layers = add_moe_lora(self.backbone.core, cfg)
        self.backbone.set_trainable(
            {n: p for n, p in self.backbone.core.named_parameters() if ".moe_" in n}
        )

    def report(self) -> dict:
        return {"moe_layers": len(self.layers), "experts": self.opts.experts}
