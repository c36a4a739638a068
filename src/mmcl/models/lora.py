"""LoRA adapters through peft: the one module that knows peft's layer layout.

`Backbone` owns the adapters and calls these helpers; nothing else reads peft's attributes.
An adapter's parameters are found by its exact name as a key of peft's per-adapter containers
(`lora_A[name]`, `modules_to_save[name]`), so that an adapter named like a module of the base
(`mlp`, `proj`) owns only its own weights.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper
from pydantic import BaseModel, Field
from torch import nn

from mmcl.errors import MmclError

BASE = "__base__"  # peft's name, in `adapter_names`, of rows that no adapter changes


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


class LoraAdapters:
    """The LoRA adapters of a `Backbone` (its part that owns them): added to `core` through
    peft, so that one batch can mix adapters with `adapter_names`."""

    core: nn.Module
    model: nn.Module
    plain: nn.Module | None
    lm_lora_targets: str  # regex of the language model's linear layers
    vision_lora_targets: str | None = None
    # Modules every adapter trains a full copy of (peft's modules_to_save), e.g. projectors.
    lora_modules_to_save: tuple[str, ...] = ()

    @property
    def _peft_model(self) -> PeftModel | None:
        """The adapters' owner (also while a trainer's wrapper runs): peft's model, if any."""
        model = self.plain if self.plain is not None else self.model
        return model if isinstance(model, PeftModel) else None

    @property
    def adapters(self) -> list[str]:
        return list(self._peft_model.peft_config) if self._peft_model is not None else []

    def add_lora(self, name: str, spec: LoraSpec) -> None:
        """Add a LoRA adapter named `name` (LM linear layers, optionally the vision encoder)."""
        if name in self.adapters:
            raise MmclError(f"an adapter named {name!r} exists already")
        targets = spec.targets or self.lm_lora_targets
        if spec.vision:
            if not self.vision_lora_targets:
                raise MmclError(f"{type(self).__name__} has no vision encoder to put LoRA on")
            targets = f"(?:{targets})|(?:{self.vision_lora_targets})"
        cfg = lora_config(spec, targets, self.lora_modules_to_save)
        if not isinstance(self.model, PeftModel):
            self.model = get_peft_model(self.core, cfg, adapter_name=name)
        else:
            self.model.add_adapter(name, cfg)
        for p in self.core.parameters():  # adding an adapter must not unfreeze or freeze others
            p.requires_grad_(False)

    def _peft(self, name: str) -> PeftModel:
        if name not in self.adapters:
            raise MmclError(f"no adapter named {name!r} (adapters: {self.adapters})")
        return self._peft_model

    def remove_adapter(self, name: str) -> None:
        """Delete adapter `name` and its weights (the others stay as they are)."""
        self._peft(name).delete_adapter(name)

    def use_adapters(self, names: str | list[str] | None) -> None:
        """Activate adapter(s) for forward/generate; None runs the base model."""
        if self._peft_model is None:
            if names:
                raise MmclError("no LoRA adapters have been added")
            return
        tuner = self._peft_model.base_model
        if not names:
            tuner.disable_adapter_layers()
            return
        names = names if isinstance(names, list) else [names]
        # peft's switch visits every adapter of every layer: skipped when nothing changes
        # (routing switches per batch, and the cost would grow with the number of adapters).
        layer = next(m for m in self.core.modules() if isinstance(m, BaseTunerLayer))
        if not layer.disable_adapters and list(tuner.active_adapters) == names:
            return
        tuner.enable_adapter_layers()
        tuner.set_adapter(names)

    @contextmanager
    def rows_adapted(self, adapter_names: list[str] | None) -> Iterator[dict]:
        """Within: forward passes give row i adapter `adapter_names[i]` (None: the active
        adapters). Yields the keyword arguments a forward or generate call then takes: none
        when per-adapter matmuls on its rows serve (`rows_routed`), else peft's `adapter_names`."""
        if adapter_names is None:
            yield {}
            return
        with rows_routed(self.core, adapter_names) as routed:
            yield {} if routed else {"adapter_names": adapter_names}

    @contextmanager
    def adapters_bypassed(self) -> Iterator[None]:
        """Within: forward passes run the base model, every adapter layer off; after, the
        adapters and their trainability are as they were (peft's switch resets both)."""
        peft = self._peft_model
        layers = [m for m in self.core.modules() if isinstance(m, BaseTunerLayer)]
        if peft is None or all(m.disable_adapters for m in layers):
            yield
            return
        with self._trainability_kept():
            peft.base_model.disable_adapter_layers()
            try:
                yield
            finally:
                peft.base_model.enable_adapter_layers()

    @contextmanager
    def _trainability_kept(self) -> Iterator[None]:
        """Within: adapters may be added, switched or removed; after, every parameter that
        remains is as trainable as before (peft's switches set that as they go)."""
        grads = [(p, p.requires_grad) for p in self.core.parameters()]
        try:
            yield
        finally:
            for p, g in grads:
                p.requires_grad_(g)

    @property
    def active_adapters(self) -> list[str]:
        """The adapters set to answer (empty: no adapter added)."""
        return list(self._peft_model.active_adapters) if self._peft_model is not None else []

    def adapter_rank(self, name: str) -> int:
        return self._peft(name).peft_config[name].r

    def export_adapter(self, name: str, folder: Path) -> Path:
        """Write adapter `name` for `PeftModel.from_pretrained` (adapter_config.json and
        adapter_model.safetensors) under `folder`, in a subfolder of its name (peft's layout;
        `default`: in `folder`); returns where it went."""
        self._peft(name).save_pretrained(str(folder), selected_adapters=[name])
        return folder if name == "default" else folder / name

    def load_adapter(self, name: str, weights: dict[str, torch.Tensor]) -> None:
        """Set adapter `name`'s weights (by name in `core`: exactly its parameters)."""
        params = self.adapter_parameters(name)
        if set(weights) != set(params):
            raise MmclError(f"the weights given do not match adapter {name!r}'s parameters")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(weights[n])

    def stack_loras(self, names: list[str], into: str, spec: LoraSpec) -> None:
        """Replace LoRAs `names` by one, `into`, that holds them side by side (A's stacked, B's
        side by side): its update is exactly the sum of theirs, in one pair of matmuls.
        `spec` is its rank (the sum of theirs) at the same scale alpha / r; it is frozen."""
        if self.lora_modules_to_save:
            raise MmclError("stack_loras: these adapters also train copies of whole modules")
        if spec.r != sum(self.adapter_rank(n) for n in names):
            raise MmclError(f"stack_loras: rank {spec.r} is not the sum of {names}'s ranks")
        for n in names:
            cfg = self._peft(n).peft_config[n]
            if cfg.lora_alpha * spec.r != spec.alpha * cfg.r:
                raise MmclError(f"stack_loras: adapter {n!r} has another scale than {into!r}")
        parts = [self.lora_factors(n) for n in names]
        with self._trainability_kept():  # `into` is new, so stays frozen as add_lora left it
            self.add_lora(into, spec)
            with torch.no_grad():
                for layer, (a, b) in self.lora_factors(into).items():
                    a.copy_(torch.cat([f[layer][0] for f in parts], dim=0))
                    b.copy_(torch.cat([f[layer][1] for f in parts], dim=1))
            # `into` answers in their stead; removing an active adapter made peft pick another
            # to activate and warn.
            self.use_adapters([*(a for a in self.active_adapters if a not in names), into])
            for n in names:
                self.remove_adapter(n)

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """The parameters of adapter `name` by name in `core` (exactly that adapter's: one
        named like a module of the base, e.g. `mlp`, gets none of the base's weights)."""
        if name not in self.adapters:
            return {}
        ids = adapter_parameter_ids(self.core, name)
        return {n: p for n, p in self.core.named_parameters() if id(p) in ids}

    def lora_factors(self, name: str) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
        """Per adapted linear layer (by module name in `core`): adapter `name`'s (A, B) weights,
        whose product B @ A is its update of the layer (before scaling)."""
        return lora_factors(self.core, name) if name in self.adapters else {}


def _grouped_forward(layer: LoraLinear, names: list[str], groups: list[tuple]):
    """A LoRA layer's forward where each group of rows (a slice where they are contiguous,
    else an index) goes through its adapter's A and B (the scale folded into B) as one pair
    of matmuls; rows of no group get none. An input that is not one row per sample (e.g. a
    vision encoder's) takes peft's path."""

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if x.dim() != 3 or x.shape[0] != len(names):  # not one row per sample (media)
            return layer._mixed_batch_forward(x, *args, adapter_names=names, **kwargs)
        out = layer.base_layer(x, *args, **kwargs)
        for rows, a, b in groups:
            if isinstance(rows, slice):
                out[rows] += ((x[rows] @ a.T) @ b.T).to(out.dtype)
            else:
                out.index_add_(0, rows, ((x.index_select(0, rows) @ a.T) @ b.T).to(out.dtype))
        return out

    return forward


def row_groups(adapter_names: list[str]) -> dict[str, slice | list[int]]:
    """Per adapter (not BASE), its rows: a slice where they are contiguous, else a list."""
    rows: dict[str, list[int]] = {}
    for i, n in enumerate(adapter_names):
        if n != BASE:
            rows.setdefault(n, []).append(i)
    return {n: slice(r[0], r[-1] + 1) if r[-1] - r[0] + 1 == len(r) else r for n, r in rows.items()}


@contextmanager
def rows_routed(model: nn.Module, adapter_names: list[str]) -> Iterator[bool]:
    """Within: every LoRA layer of `model` gives row i of a batch adapter `adapter_names[i]`,
    one pair of matmuls per adapter on its rows (a slice, no copy, where they are contiguous:
    `Backbone.generate` orders them so), where peft's mixed batches copy every adapter's
    sub-batch out and back in at every layer and step. Yields False, changing nothing, where
    that does not hold: an adapter missing from a layer, or adapted modules that are not LoRA
    linear layers (trained copies, embeddings); peft's `adapter_names` path serves those."""
    groups = row_groups(adapter_names)
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer | ModulesToSaveWrapper)]
    usable = groups and all(
        isinstance(m, LoraLinear) and all(n in m.lora_A for n in groups) and not m.merged
        for m in layers
    )
    if not layers or not usable:
        yield False
        return
    for m in layers:
        dev = m.lora_A[next(iter(groups))].weight.device
        parts = [
            (
                rows if isinstance(rows, slice) else torch.tensor(rows, device=dev),
                m.lora_A[n].weight,
                m.lora_B[n].weight * m.scaling[n],
            )
            for n, rows in groups.items()
        ]
        m.forward = _grouped_forward(m, adapter_names, parts)
    try:
        yield True
    finally:
        for m in layers:
            del m.forward


def lm_linear_regex(prefix: str) -> str:
    """Regex for all linear layers of a Llama/Qwen-style LM whose decoder layers sit at
    `{prefix}.layers.N` (attention and MLP projections)."""
    return (
        rf"{re.escape(prefix)}\.layers\.\d+\."
        r"(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"
    )
