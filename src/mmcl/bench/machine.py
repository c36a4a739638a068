"""The machine: its matmul throughput and environment."""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import torch


def matmul_gflops(sizes: tuple[int, ...] = (256, 512, 1024), seconds: float = 0.5) -> dict:
    """float32 matmul throughput of this machine with torch's current thread count."""
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        reps, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            torch.mm(a, b)
            reps += 1
        out[str(n)] = round(2 * n**3 * reps / elapsed / 1e9, 2)
    return {"gflops_by_size": out, "peak_gflops": max(out.values())}


def environment() -> dict[str, Any]:
    from mmcl.results import environment as run_env

    return {**run_env(), "machine": platform.machine(), "cpu_count": os.cpu_count()}
