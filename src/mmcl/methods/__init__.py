"""Continual-learning methods: one file per method, registered by name."""

from __future__ import annotations

import importlib
import pkgutil

from mmcl.config import validate_settings
from mmcl.data.benchmarks import TaskSpec
from mmcl.errors import MmclError
from mmcl.methods.base import Method, MethodOptions
from mmcl.models.base import Backbone

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def _discover() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")


def get_method(name: str) -> type[Method]:
    if name not in METHODS:  # not `if not METHODS`: importing one method module registers it
        _discover()
    if name not in METHODS:
        raise MmclError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def all_methods() -> dict[str, type[Method]]:
    _discover()  # imports are cached: cheap after the first call
    return dict(METHODS)


def method_options(name: str, options: dict) -> MethodOptions:
    """A method's validated settings: an unknown name or a misspelt option fails here, before
    anything heavy (data, the base model) is loaded."""
    return validate_settings(get_method(name).Options, options, f"method {name!r} settings")


def make_method(
    name: str, options: dict, backbone: Backbone, tasks: list[TaskSpec], seed: int
) -> Method:
    return get_method(name)(backbone, method_options(name, options), tasks, seed)
