"""A grid's cells: the task orders, one ordinary run folder per (method, seed, order), and the
function that runs one cell in a worker process (local pool or Ray task)."""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcl.config import results_part
from mmcl.errors import MmclError
from mmcl.io import derive_seed, read_json, write_json

CELL_FILE = "cell.json"  # the cell's full configuration, written before it first runs
LOG_FILE = "log.txt"  # everything the cell's run printed (appended to when it continues)


def published_orders(benchmark: str) -> list[tuple[str, ...]]:
    """The benchmark's own order first, then the other published orders of the same tasks
    (registered benchmarks of the same family with the same task set: MICL's two orders)."""
    from mmcl.data.benchmarks import BENCHMARKS

    bench = BENCHMARKS.get(benchmark)
    if bench is None or not hasattr(bench, "family"):
        return []
    others = [
        b.order
        for b in BENCHMARKS.values()
        if getattr(b, "family", None) == bench.family
        and sorted(b.order) == sorted(bench.order)
        and b.order != bench.order
    ]
    return [bench.order, *others]


def grid_orders(spec: str, benchmark: str, base: list[str], given: bool) -> list[list[str]]:
    """The task orders of a grid from `--orders`: a count, or explicit orders separated by ';'
    (each a comma-separated permutation of the stream's tasks). A count takes the benchmark's
    published orders (unless `--tasks` gave one), then `base`, then seeded random permutations
    of it, all distinct."""
    spec = spec.strip()
    if not spec.isdigit():
        orders = [[t.strip() for t in part.split(",") if t.strip()] for part in spec.split(";")]
        for k, order in enumerate(orders):
            if sorted(order) != sorted(base):
                raise MmclError(
                    f"--orders: order {k + 1} ({','.join(order)}) is not a permutation of the "
                    f"stream's tasks {','.join(base)}"
                )
        if len({tuple(o) for o in orders}) != len(orders):
            raise MmclError("--orders: an order is given twice")
        return orders
    n = int(spec)
    if n < 1:
        raise MmclError("--orders must be at least 1")
    if n > math.factorial(len(base)):
        raise MmclError(f"--orders {n}: {len(base)} tasks have only {math.factorial(len(base))}")
    orders: list[tuple[str, ...]] = []
    for order in ([] if given else published_orders(benchmark)) + [tuple(base)]:
        if order not in orders:
            orders.append(order)
    rng = random.Random(derive_seed("grid orders", benchmark, base))
    while len(orders) < n:
        order = tuple(rng.sample(base, len(base)))
        if order not in orders:
            orders.append(order)
    return [list(o) for o in orders[:n]]


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a method on one seed and one task order, in its own folder."""

    method: str
    seed: int
    order: int  # index into the grid's orders
    folder: Path
    config: dict[str, Any]  # the full validated experiment config of the run

    @property
    def name(self) -> str:
        return f"{self.method} seed {self.seed} order {self.order + 1}"

    @property
    def finished(self) -> bool:
        return (self.folder / "results.json").exists()

    def claim(self) -> None:
        """Write cell.json, or check that the one there describes this very run."""
        path = self.folder / CELL_FILE
        if path.exists():
            if results_part(read_json(path).get("config")) != results_part(self.config):
                raise MmclError(
                    f"{self.folder} holds a run with another configuration; rerun the grid with "
                    "the options it was made with, or choose another --out"
                )
            return
        write_json(path, {"method": self.method, "seed": self.seed, "config": self.config})


def cell_folder(out: Path, method: str, seed: int, order: int) -> Path:
    return Path(out) / method / f"seed{seed}-order{order + 1}"


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (Python's and the C libraries') to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_cell(folder: str, config: dict[str, Any], threads: int = 1) -> dict[str, Any]:
    """Run one cell, or continue it from its last checkpoint, in this process, with `threads`
    torch threads and its output in the folder's log.txt. Never raises: a failed cell must not
    stop the others, so the outcome says {"ok", "error", "seconds"}."""
    import torch

    from mmcl.config import parse_config
    from mmcl.runner import Run

    torch.set_num_threads(threads)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _output_to(out / LOG_FILE):
        try:
            cfg = parse_config(config, str(out / CELL_FILE))
            Run(cfg, out).execute(resume=(out / "checkpoints").exists())
        except Exception as e:  # any failure of the run: reported with its log, others go on
            traceback.print_exc()
            error = f"{type(e).__name__}: {e}"
        else:
            error = None
    return {"ok": error is None, "error": error, "seconds": time.perf_counter() - t0}
