"""LoRA adapters through peft: the one module that knows peft's layer layout.

`Backbone` owns the adapters and calls these helpers; nothing else reads peft's attributes.
An adapter's parameters are found by its exact name as a key of peft's per-adapter containers
(`lora_A[name]`, `modules_to_save[name]`), so that an adapter named like a module of the base
(`mlp`, `proj`) owns only its own weights.
"""

from __future__ import annotations

import re

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper
from pydantic import BaseModel, Field
from torch import nn


class LoraSpec(BaseModel, extra="forbid"):
    """LoRA settings; `targets` is a regex on module names (full match)."""

    r: int = Field(16, ge=1, description="rank")
    alpha: int = Field(32, ge=1, description="scale alpha / r; 2r keeps it as the rank changes")
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: str | None = Field(None, description="default: all linear layers of the LM")
    vision: bool = Field(False, description="also adapt the vision encoder")


def lora_config(spec: LoraSpec, targets: str, modules_to_save: tuple[str, ...]) -> LoraConfig:
    """peft's config of a LoRA on the modules matching `targets` (a full-match regex)."""
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        modules_to_save=list(modules_to_save) or None,
    )


def _containers(module: nn.Module) -> list[nn.Module]:
    """A peft layer's per-adapter containers (ModuleDict/ParameterDict keyed by adapter)."""
    if not isinstance(module, BaseTunerLayer | ModulesToSaveWrapper):
        return []
    return [getattr(module, a) for a in module.adapter_layer_names if hasattr(module, a)]


def adapter_parameter_ids(model: nn.Module, name: str) -> set[int]:
    """The ids of the parameters that belong to adapter `name` (exactly that key)."""
    ids = set()
    for module in model.modules():
        for container in _containers(module):
            if name not in container:
                continue
            entry = container[name]
            params = [entry] if isinstance(entry, nn.Parameter) else entry.parameters()
            ids.update(id(p) for p in params)
    return ids


def is_adapted(model: nn.Module) -> bool:
    """Whether any peft adapter layer sits in `model` (a LoRA or a trained copy)."""
    return any(_containers(m) for m in model.modules())


def base_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of a peft-wrapped model without its LoRA weights, under the base's own
    names (peft's `base_layer` level unwrapped)."""
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}


def lora_factors(model: nn.Module, name: str) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
    """Per adapted linear layer (by module name in `model`): the (A, B) weights of adapter
    `name`, whose product B @ A is the layer's update (before scaling)."""
    return {
        n: (m.lora_A[name].weight, m.lora_B[name].weight)
        for n, m in model.named_modules()
        if isinstance(m, BaseTunerLayer) and name in getattr(m, "lora_A", {})
    }


def lm_linear_regex(prefix: str) -> str:
    """Regex for all linear layers of a Llama/Qwen-style LM whose decoder layers sit at
    `{prefix}.layers.N` (attention and MLP projections)."""
    return (
        rf"{re.escape(prefix)}\.layers\.\d+\."
        r"(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"
    )
