"""What every bench measurement shares: the presets, the model and data, timers, memory."""

from __future__ import annotations

import platform
import resource
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mmcl.data.benchmarks import Task, get_benchmark
from mmcl.data.records import Record
from mmcl.errors import MmclError
from mmcl.models.base import Backbone


@dataclass(frozen=True)
class BenchPreset:
    """Sizes of one benchmark run."""

    model: str  # model preset (models/tiny.py)
    train_records: int  # samples per training measurement
    batch_size: int
    repeats: int  # measurements per loop, alternated (the best and the median are reported)
    eval_records: int
    eval_batch: int
    new_tokens: int  # generated tokens per sample
    adapters: int  # experts in the routed-inference measurement (at most 4: ability's tasks)
    steps: int  # tasks of the scaling stream (cost is measured at every step)
    scaling_records: int  # training samples per task in the scaling run


BENCH_PRESETS = {
    "micro": BenchPreset("micro", 128, 16, 5, 64, 32, 16, 4, 20, 32),
    "tiny": BenchPreset("tiny", 128, 16, 5, 64, 32, 16, 4, 20, 32),
}


def bench_preset(name: str, quick: bool = False) -> BenchPreset:
    if name not in BENCH_PRESETS:
        raise MmclError(f"unknown bench preset {name!r}; choose one of {sorted(BENCH_PRESETS)}")
    p = BENCH_PRESETS[name]
    if quick:
        p = replace(p, train_records=64, repeats=1, eval_records=32, new_tokens=8, steps=4)
    return p


# --- helpers ----------------------------------------------------------------------------------
def random_backbone(model: str) -> Backbone:
    """The preset's architecture with random weights and the locally trained tokenizer."""
    from mmcl.models.tiny import build_backbone, get_preset
    from mmcl.pretraining.base import train_tokenizer

    preset = get_preset(model)
    return build_backbone(preset, train_tokenizer(preset.vocab_size), seed=0)


def ability_tasks(n_train: int, n_test: int) -> list[Task]:
    return get_benchmark("ability").load(0, n_train, n_test)


def mixed(tasks: list[Task], split: str, n: int) -> list[Record]:
    """`n` records taken round-robin from every task (a realistic mix of prompt lengths)."""
    pools = [getattr(t, split) for t in tasks]
    return [pools[i % len(pools)][i // len(pools)] for i in range(n)]


def timed(fn, *args, **kw) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def count(params) -> int:
    return sum(p.numel() for p in params)


@contextmanager
def fixed_length(backbone: Backbone, n: int):
    """Make generate produce exactly `n` tokens (EOS suppressed until then)."""
    cfg = backbone.core.lm.generation_config
    old = cfg.min_new_tokens
    cfg.min_new_tokens = n
    try:
        yield
    finally:
        cfg.min_new_tokens = old


def peak_rss_reset() -> None:
    """Reset the process's peak resident memory (Linux); elsewhere the peak is lifetime."""
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """Peak resident memory since the last reset, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
    return rss / (1024 * 1024 if platform.system() == "Darwin" else 1024)
