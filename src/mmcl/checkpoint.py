"""The checkpoint format: what a run writes after each step so that `--resume` can continue.

`checkpoints/step{N}/` holds the weights that any step trained (model.safetensors), the
method's state (`Method.state_dict()`: its tensors in method.safetensors, the rest in JSON) and
the runner's state (state.json, written last). checkpoints/latest.json, written after the
folder, commits a step; the folder of the step before stays until the next commit, and resume
falls back to it when the newest one is corrupt or partial. Older folders are removed unless the
run keeps them all (`keep_checkpoints: all`), for a look at the model after any step
(`mmcl export --step`).

A method's state is any nested dict: keys may hold any character (parameter names have dots);
the tensors' paths are escaped here, and only here, to the dotted keys of safetensors.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmcl.errors import MmclError
from mmcl.io import load_tensors, read_json, save_tensors, write_json

log = logging.getLogger(__name__)
LATEST = "latest.json"


def _escape(key: str) -> str:
    return key.replace("%", "%25").replace(".", "%2E")


def _unescape(key: str) -> str:
    return key.replace("%2E", ".").replace("%25", "%")


def split_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A nested state -> (its tensors by escaped dotted path, the JSON-able rest, every dict
    kept so that empty ones come back). Keys come back as strings, as JSON gives them."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: dict, path: str) -> dict:
        rest = {}
        for k, v in node.items():
            key = f"{path}{_escape(str(k))}"
            if isinstance(v, torch.Tensor):
                tensors[key] = v
            elif isinstance(v, dict):
                rest[str(k)] = walk(v, f"{key}.")
            else:
                rest[str(k)] = v
        return rest

    return tensors, walk(state, "")


def join_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `split_state` (with JSON's string keys)."""

    def copy(node: Any) -> Any:
        return {k: copy(v) for k, v in node.items()} if isinstance(node, dict) else node

    out = copy(rest)
    for path, t in tensors.items():
        *parents, last = [_unescape(k) for k in path.split(".")]
        node = out
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = t
    return out


@dataclass
class Checkpoint:
    """One step folder, read in full (and so known to be intact) before it is applied."""

    folder: Path
    state: dict[str, Any]  # the runner's state (config, rows, timings, ...)
    method_state: dict[str, Any]  # `Method.state_dict()` as it was saved
    model: dict[str, torch.Tensor]  # the trained weights, by name in `Backbone.state_dict()`


def save(
    root: Path,
    step: int,
    state: dict[str, Any],
    model: dict[str, torch.Tensor],
    method_state: dict[str, Any],
    keep_all: bool = False,
) -> None:
    """Write step `step`'s folder under `root` and commit it; keep it and the one before
    (every earlier one too with `keep_all`)."""
    folder = root / f"step{step}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    save_tensors(folder / "model.safetensors", model)
    tensors, rest = split_state(method_state)
    save_tensors(folder / "method.safetensors", tensors)
    write_json(folder / "state.json", {**state, "method_state": rest})
    write_json(root / LATEST, {"step": step})  # the commit point
    if not keep_all:
        for old in root.glob("step*"):
            if old.name not in {f"step{step}", f"step{step - 1}"}:
                shutil.rmtree(old)


def candidates(root: Path) -> list[Path]:
    """Step folders to resume from, best first: the committed one (latest.json), then the
    older ones, for when it turns out corrupt. A folder newer than latest.json was never
    committed; without a readable latest.json, every folder is a candidate (state.json is
    written last, so a folder that has one and loads is complete)."""
    steps = sorted(
        (int(f.name[4:]) for f in root.glob("step*") if f.name[4:].lstrip("-").isdigit()),
        reverse=True,
    )
    latest = root / LATEST
    if latest.exists():
        try:
            top = int(read_json(latest)["step"])
            steps = [s for s in steps if s <= top]
        except (MmclError, KeyError, TypeError, ValueError) as e:
            log.warning("%s is unreadable (%s); using the newest complete step", latest, e)
    return [root / f"step{s}" for s in steps]


def read(folder: Path) -> Checkpoint:
    """Read one step folder in full; MmclError naming the file when any part is bad."""
    state = read_json(folder / "state.json")
    if not isinstance(state, dict) or not isinstance(state.get("method_state"), dict):
        raise MmclError(f"{folder / 'state.json'}: not a checkpoint state")
    method_tensors = load_tensors(folder / "method.safetensors")
    model = load_tensors(folder / "model.safetensors")
    rest = state.pop("method_state")
    return Checkpoint(folder, state, join_state(method_tensors, rest), model)


def at_step(root: Path, step: int) -> Checkpoint:
    """The committed checkpoint of one step, read in full; MmclError naming the steps kept."""
    kept = candidates(root)
    folder = root / f"step{step}"
    if folder not in kept:
        names = ", ".join(f.name[4:] for f in reversed(kept)) or "none"
        raise MmclError(
            f"{root}: no committed checkpoint of step {step} (kept: {names}); a run keeps its "
            "last two steps unless its config says `keep_checkpoints: all`"
        )
    return read(folder)


def find(root: Path) -> Checkpoint | None:
    """The newest usable checkpoint under `root`, read in full; None when nothing was
    committed yet; MmclError when steps were committed but none is readable."""
    problems = []
    for folder in candidates(root):
        try:
            return read(folder)
        except MmclError as e:
            log.warning("corrupt checkpoint, trying the previous one: %s", e)
            problems.append(str(e))
    if problems and (root / LATEST).exists():
        raise MmclError(
            f"{root}: no usable checkpoint ({'; '.join(problems)}); "
            "remove the folder to start the run again"
        )
    return None
