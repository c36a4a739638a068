"""Methods x seeds x task orders in one command (`mmcl compare`).

Every cell of the grid is an ordinary run folder, `<out>/<method>/seed<s>-order<k>/`, with its
own results.json, plus cell.json (its configuration) and log.txt (its output). Cells run in
parallel (executors.py); a finished cell is kept and a killed one continues from its last
checkpoint when the command is run again; a failed cell is reported with its log and the
others go on. The aggregate (stats.py) is computed from the cells' results.json files and
written as comparison.md/.json/.html/.png (report.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcl.config import ExperimentConfig, load_config
from mmcl.errors import MmclError
from mmcl.grid.cells import LOG_FILE, Cell, cell_folder, grid_orders
from mmcl.io import read_json, write_json


@dataclass
class GridSpec:
    """What `mmcl compare` was asked: the methods, seeds and task orders, where it runs."""

    out: Path
    methods: list[str]
    seeds: list[int] | None  # None: the config's seed
    orders: str = "1"  # a count, or explicit orders separated by ';'
    config: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None
    executor: str = "local"  # local | ray
    workers: int | None = None  # local pool size (default: cores / threads)
    threads: int = 1  # torch threads (and Ray CPUs) per cell
    gpus: float = 0.0  # Ray GPUs per cell
    address: str | None = None  # Ray cluster address (None: start a local instance)


@dataclass
class GridOutcome:
    text: str  # comparison.md
    cells: int
    ran: int  # cells run (or continued) by this call
    failed: list[tuple[Cell, str]]  # cells that failed, with their error
    seconds: float  # wall time of this call


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` as a list of integers."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise MmclError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None


def plan(spec: GridSpec) -> tuple[list[Cell], list[list[str]]]:
    """Every cell of the grid, by seed, then order, then method (so that finished cells form
    complete pairs early), and the task orders."""
    from mmcl.methods import get_method, method_options
    from mmcl.runner import stream_specs

    if not spec.methods or len(set(spec.methods)) != len(spec.methods):
        raise MmclError(f"--methods: give distinct method names ({spec.methods})")
    for name in spec.methods:  # fail on a typo before hours of training, not in a cell
        get_method(name)
        cfg = load_config(spec.config, {**spec.overrides, "method.name": name})
        try:
            method_options(name, cfg.method.options())
        except MmclError as e:
            raise MmclError(
                f"--methods {name}: {e}\n(the config's `method` settings go to every method of "
                "--methods: keep there only the settings they all take)"
            ) from None
    if spec.reference is not None and spec.reference not in spec.methods:
        raise MmclError(f"--reference {spec.reference!r} is not among --methods {spec.methods}")
    base_cfg = load_config(spec.config, spec.overrides)
    base = [s.name for s in stream_specs(base_cfg)]
    orders = grid_orders(spec.orders, base_cfg.benchmark, base, given=base_cfg.tasks is not None)
    seeds = spec.seeds if spec.seeds is not None else [base_cfg.seed]
    if len(set(seeds)) != len(seeds):
        raise MmclError(f"--seeds: a seed is given twice ({seeds})")
    cells = []
    for seed in seeds:
        for k, order in enumerate(orders):
            for method in spec.methods:
                cfg = load_config(
                    spec.config,
                    {**spec.overrides, "method.name": method, "seed": seed, "tasks": order},
                )
                folder = cell_folder(spec.out, method, seed, k)
                cells.append(Cell(method, seed, k, folder, cfg.model_dump(mode="json")))
    return cells, orders


def warm_caches(cells: list[Cell]) -> None:
    """Generate each seed's data and build each embedded base model once, here, before cells
    that would otherwise all build them at the same time. Generated streams render while the
    bases train (a base trains on one thread, pretraining.base, which leaves the other cores
    idle); what reads a user's files is read first, so that a bad file stops the command at
    once, not after the bases."""
    from mmcl.config import parse_config
    from mmcl.data.benchmarks import SynthBenchmark
    from mmcl.general import load_general
    from mmcl.runner import load_backbone, load_tasks, stream, stream_specs

    data: dict[tuple[int, str, str], ExperimentConfig] = {}
    bases: dict[str, ExperimentConfig] = {}
    for cell in cells:
        cfg = parse_config(cell.config)
        data.setdefault((cfg.seed, cfg.data.model_dump_json(), cfg.eval.model_dump_json()), cfg)
        if cfg.model.backbone == "composed":
            bases.setdefault(cfg.model.model_dump_json(), cfg)
    with ThreadPoolExecutor(1) as renders:
        rendered = []
        for cfg in data.values():
            if isinstance(stream(cfg), SynthBenchmark):
                rendered.append(renders.submit(load_tasks, cfg))
            else:
                load_tasks(cfg)
            load_general(cfg.eval, cfg.seed)
        for cfg in bases.values():
            load_backbone(cfg, stream_specs(cfg))
        for job in rendered:
            job.result()


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Hold grid.lock while the grid runs: two drivers would run the same cells at once. The
    operating system releases it when the process ends, however it ends."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "grid.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MmclError(
                f"{out} is being run by another `mmcl compare` (it holds {out / 'grid.lock'}); "
                "wait for it to end, or stop it"
            ) from None
        yield


def _write_comparison(
    spec: GridSpec,
    cells: list[Cell],
    orders: list[list[str]],
    failed: list[tuple[Cell, str]],
    partial: bool = False,
) -> str:
    """The comparison of every finished cell so far (rewritten as cells finish; `partial`:
    while others run, so without paired differences until the reference has a cell: cells
    finish in any order)."""
    from mmcl.grid.report import write_grid_comparison

    results = [read_json(c.folder / "results.json") for c in cells if c.finished]
    if not results:
        return "no cell has finished yet"
    reference = spec.reference
    if partial and reference not in {r["method"] for r in results}:
        reference = None
    return write_grid_comparison(spec.out, results, orders, reference, failed)


def run_grid(spec: GridSpec, say: Callable[[str], None] = print) -> GridOutcome:
    """Run the missing cells of the grid in `spec.out`, then aggregate every finished cell."""
    t0 = time.perf_counter()
    if spec.executor not in ("local", "ray"):
        raise MmclError(f"unknown --executor {spec.executor!r}; choose local or ray")
    cells, orders = plan(spec)
    with _lock(spec.out):
        for cell in cells:
            cell.claim()
        seeds = sorted({c.seed for c in cells})
        info = {"methods": spec.methods, "seeds": seeds, "orders": orders}
        write_json(spec.out / "grid.json", {**info, "reference": spec.reference})
        todo = [c for c in cells if not c.finished]
        failed = _run_cells(spec, cells, todo, orders, say)
        text = _write_comparison(spec, cells, orders, failed)
    return GridOutcome(text, len(cells), len(todo), failed, time.perf_counter() - t0)


def _run_cells(
    spec: GridSpec,
    cells: list[Cell],
    todo: list[Cell],
    orders: list[list[str]],
    say: Callable[[str], None],
) -> list[tuple[Cell, str]]:
    """Run the cells `todo` of the grid `cells`; return those that failed, with their error."""
    from mmcl.grid.executors import default_workers, run_local, run_ray

    workers = spec.workers or default_workers(spec.threads)
    if spec.executor == "ray":
        where = f"Ray ({spec.address or 'a local instance'})"
    else:
        where = f"a local pool of {workers} worker(s)"
    n_seeds = len({c.seed for c in cells})
    say(
        f"grid: {len(cells)} cells ({len(spec.methods)} methods x {n_seeds} seeds x "
        f"{len(orders)} orders); {len(cells) - len(todo)} finished, {len(todo)} to run on "
        f"{where}, {spec.threads} thread(s) each"
    )
    failed: list[tuple[Cell, str]] = []
    if todo:
        if spec.executor == "local" or spec.address is None:
            warm_caches(todo)
        if spec.executor == "ray":
            outcomes = run_ray(todo, spec.threads, spec.gpus, spec.address)
        else:
            outcomes = run_local(todo, spec.threads, workers)
        for i, (cell, outcome) in enumerate(outcomes, 1):
            if outcome["ok"]:
                m = read_json(cell.folder / "results.json")["metrics"]
                say(
                    f"[{i}/{len(todo)}] {cell.name}: MFN {m['mfn']:.2f}, BWT {m['bwt']:.2f} "
                    f"({outcome['seconds']:.0f} s)"
                )
                _write_comparison(spec, cells, orders, failed, partial=True)
            else:
                failed.append((cell, outcome["error"]))
                say(f"[{i}/{len(todo)}] {cell.name} FAILED: {outcome['error']}")
                say(f"    log: {cell.folder / LOG_FILE}")
    return failed


def run_methods(
    methods: list[str], out: Path, overrides: dict[str, Any], say: Callable[[str], None] = print
) -> str:
    """Run each method on the same stream and seed into out/<method>/, side by side on a local
    pool of 1-thread workers (finished methods are kept, killed ones continue); write the
    comparison and return it (markdown). The data and the base are built first, once."""
    from mmcl.grid.executors import default_workers, run_local
    from mmcl.report import write_comparison

    configs = {name: load_config(None, {**overrides, "method.name": name}) for name in methods}
    cells = [
        Cell(name, cfg.seed, 0, out / name, cfg.model_dump(mode="json"))
        for name, cfg in configs.items()
    ]
    todo = [c for c in cells if not c.finished]
    if todo:
        warm_caches(todo)
        workers = default_workers(1)
        say(
            f"running {len(todo)} method(s) on {workers} worker(s) of 1 thread; their progress "
            f"is in {out}/<method>/log.txt"
        )
        # The last listed first: callers list the costliest last, so the pool ends together.
        for cell, outcome in run_local(todo[::-1], threads=1, workers=workers):
            if not outcome["ok"]:
                raise MmclError(
                    f"{cell.method} failed: {outcome['error']} (log: {cell.folder / LOG_FILE})"
                )
            m = read_json(cell.folder / "results.json")["metrics"]
            say(f"{cell.method}: MFN {m['mfn']:.2f} ({outcome['seconds']:.0f} s)")
    results = [read_json(c.folder / "results.json") for c in cells]
    return write_comparison(out, results[0]["benchmark"], results)
