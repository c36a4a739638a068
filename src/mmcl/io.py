"""Atomic file writes, seeding and the cache folder: the small pieces every module shares."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from safetensors.torch import load_file, save_file

from mmcl.errors import MmclError


def _umask() -> int:
    """The process umask (reading it means setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp (and safetensors) create 0600; a results folder shared by a group needs the umask
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str | Path) -> Any:
    """Read JSON, turning a missing or malformed file into an error that names it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise MmclError(f"{path}: file not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MmclError(f"{path}: not valid JSON ({e})") from e
    except RecursionError:  # nesting deeper than the parser can follow
        raise MmclError(f"{path}: not valid JSON (nested too deeply)") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    # clone: tied weights (embeddings and LM head) share memory, which safetensors refuses
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError as e:
        raise MmclError(f"{path}: file not found") from e
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise MmclError(f"{path}: corrupt or partial safetensors file ({e})") from e


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on `n` intra-op threads inside the block, then give the caller's setting back."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stable_hash(obj: Any, n: int = 12) -> str:
    """A short hash of a JSON-able object, stable across runs and machines."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def derive_seed(*parts: Any) -> int:
    return int(stable_hash(parts, 8), 16)


def cache_dir() -> Path:
    """Where generated data and pretrained base models are cached (MMCL_CACHE overrides)."""
    root = os.environ.get("MMCL_CACHE") or Path.home() / ".cache" / "mmcl"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def end_processes() -> None:
    """The last call of a process in a torchrun/accelerate launch: wait for every process,
    close the process group, and exit without running interpreter teardown. A launched process
    that exits normally, even with its group closed, aborts now and then in C++ teardown
    ("terminate called without an active exception", SIGABRT: 2 of 22 CPU runs with DeepSpeed,
    and an FSDP2 run of the test suite), and the launcher then reports the whole run as
    failed. Every file is written and closed before this. Outside a launch it does nothing."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# What torchrun and accelerate launch tell their processes; a child without them runs alone.
_LAUNCH_PREFIXES = ("ACCELERATE_", "TORCHELASTIC_", "FSDP_", "PET_")
_LAUNCH_VARS = {
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
}  # fmt: skip


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` fresh processes (spawned: a forked torch process can hang in OpenMP)
    that end when the process that made them dies."""
    ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_end_with_parent, initargs=(os.getpid(),)
    )


def _end_with_parent(parent: int) -> None:
    """Pool initializer: end this worker within a second of its parent's death. Killed with
    SIGTERM or SIGKILL (a scheduler, `kill`, out of memory), a parent leaves its workers
    running the jobs already handed to them, a grid's cells for minutes, and writing into the
    very folders that the command, started again, then resumes (measured: a `mmcl compare`
    killed so ran two more cells, for half an hour, beside its rerun)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def run_alone(fn: Callable[..., Any], *args: Any) -> bool:
    """Under a torchrun/accelerate launch, call `fn(*args)` in a child process outside it (one
    process, no process group), its output shown as it comes, and return True; raise if it
    fails. Outside a launch do nothing and return False. For the cached base models: under a
    launch only the first process builds them while the others wait for it (runner:
    main_process_first), so training inside the launch would wait on collectives that they
    never join."""
    if process_state().num_processes == 1:
        return False
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _LAUNCH_VARS and not k.startswith(_LAUNCH_PREFIXES)
    }
    code = f"from {fn.__module__} import {fn.__name__} as fn; fn(*{args!r})"
    if subprocess.run([sys.executable, "-c", code], env=env).returncode:
        raise MmclError(f"{fn.__name__}{args} failed in its own process (its output is above)")
    return True


def process_state() -> PartialState:
    """This process's place in a torchrun/accelerate launch (rank 0 of 1 when not launched).
    Without CUDA, processes talk over gloo, which accelerate enables only with cpu=True."""
    return PartialState(cpu=not torch.cuda.is_available())
