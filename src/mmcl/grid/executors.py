"""Where a grid's cells run: a local pool of worker processes, or tasks on a Ray cluster.

Both call `cells.run_cell` in a separate process and yield each cell's outcome as it finishes,
so the same cells give the same results.json on either (every run is seeded and single-process).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool

from mmcl.errors import MmclError
from mmcl.grid.cells import Cell, run_cell
from mmcl.io import worker_pool

Outcome = dict  # {"ok": bool, "error": str | None, "seconds": float}


def default_workers(threads: int) -> int:
    """As many `threads`-thread workers as the machine has cores (at least one)."""
    return max(1, (os.cpu_count() or 1) // threads)


def run_local(cells: list[Cell], threads: int, workers: int) -> Iterator[tuple[Cell, Outcome]]:
    """Run the cells on a pool of `workers` fresh processes of `threads` torch threads each.
    1-thread workers by default: a 2-thread torch process spins when another process is busy
    (DESIGN.md, "Parallel experiments on 2 cores"; measured again for the grid in the README)."""
    with worker_pool(workers) as pool:
        futures = {pool.submit(run_cell, str(c.folder), c.config, threads): c for c in cells}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except BrokenProcessPool as e:  # a worker died (killed, out of memory)
                outcome = {"ok": False, "error": f"its worker process died ({e})", "seconds": 0.0}
            yield futures[future], outcome


def run_ray(
    cells: list[Cell], threads: int, gpus: float, address: str | None
) -> Iterator[tuple[Cell, Outcome]]:
    """Run each cell as a Ray task asking for `threads` CPUs and `gpus` GPUs, on the cluster at
    `address` (a new local instance when None). The grid folder must be on storage that every
    node sees: the cells write their run folders there and the driver reads them back."""
    try:
        import ray
    except ImportError:
        raise MmclError("--executor ray needs Ray: pip install 'mmcl[ray]'") from None
    try:
        ray.init(
            address=address,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}},
            log_to_driver=False,  # each cell's output is in its log.txt
        )
    except ConnectionError as e:  # Ray's own reason (e.g. a missing auth token) is the root cause
        root = e
        while root.__cause__ is not None:
            root = root.__cause__
        # Ray puts a whole traceback in the root's text; its last line says what went wrong.
        last = str(root).strip().splitlines()[-1:] or [type(root).__name__]
        reason = str(e) if root is e else f"{e} ({last[0]})"
        raise MmclError(f"--executor ray --address {address}: {reason}") from None
    try:
        task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(run_cell)
        refs = {task.remote(str(c.folder), c.config, threads): c for c in cells}
        pending = list(refs)
        while pending:
            (ref,), pending = ray.wait(pending, num_returns=1)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as e:  # the task's worker died, or Ray lost it
                outcome = {"ok": False, "error": f"Ray task failed ({e})", "seconds": 0.0}
            yield refs[ref], outcome
    finally:
        ray.shutdown()
