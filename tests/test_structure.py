"""The package's shape: no import cycle through the config, files of one job, and methods that
reach the model only through the backbone's named operations."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from graphlib import TopologicalSorter
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mmcl"


def _fresh(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout


def test_the_config_loads_no_training_code():
    code = "import sys, mmcl.config; print(sorted(m for m in sys.modules if m.startswith('mmcl.')))"
    assert _fresh(code).strip() == "['mmcl.config', 'mmcl.errors']"


@pytest.mark.parametrize("first", ["mmcl.data.real", "mmcl.data.micl_layout", "mmcl.train"])
def test_any_module_imports_first(first):
    code = f"import {first}, mmcl.data.benchmarks as b; print(len(b.BENCHMARKS))"
    assert int(_fresh(code)) >= 10


def _module(f: Path) -> str:
    parts = f.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycle_even_through_imports_in_functions():
    """An import inside a function or under TYPE_CHECKING is a dependency too: a cycle through
    one only waits for the call (the config -> ... -> data.real -> config one did)."""
    files = {_module(f): f for f in SRC.rglob("*.py")}
    graph = {}
    for name, f in files.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for dep in found:
                while dep and dep not in files:
                    dep = dep.rpartition(".")[0]
                # a submodule's own package is loading already: no edge to it
                if dep and dep != name and not name.startswith(dep + "."):
                    deps.add(dep)
        graph[name] = deps
    TopologicalSorter(graph).prepare()  # CycleError names the cycle


def test_no_source_file_over_350_lines():
    long = {
        str(f.relative_to(SRC)): n
        for f in SRC.rglob("*.py")
        if (n := len(f.read_text(encoding="utf-8").splitlines())) > 350
    }
    assert long == {}


def test_methods_reach_the_model_only_through_the_backbone():
    reach = re.compile(r"backbone\.(?:model|plain)\b|\.lora_[AB]\b|peft_config|\.base_model\b")
    found = {
        f.name: reach.findall(f.read_text(encoding="utf-8")) for f in (SRC / "methods").glob("*.py")
    }
    assert {k: v for k, v in found.items() if v} == {}


def test_every_shipped_preset_is_valid():
    """configs/*.yaml are the presets users copy: each loads, and its method's settings
    validate (a misspelt option would otherwise only fail when a run starts)."""
    from mmcl.config import load_config
    from mmcl.methods import method_options

    presets = sorted((SRC.parents[1] / "configs").glob("*.yaml"))
    assert presets
    for path in presets:
        settings = load_config(path, {}).method.model_dump()
        method_options(settings.pop("name"), settings)
