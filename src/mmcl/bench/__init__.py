"""`mmcl bench`: speed and scale figures of the library, all measured in one run on this machine.

- training: the mmcl loop (`train.train`) against a bare PyTorch loop on the same model, batch
  size and data (same collate, AdamW, clipping and schedule), as a ratio of samples/s, and the
  loop's achieved FLOP/s as a fraction of the machine's matmul throughput;
- evaluation: greedy generation samples/s with the KV cache (the `Backbone.generate` path) and
  without it (a loop that recomputes the whole sequence for every new token);
- routed inference: MR-LoRA's two-stage inference (router, then experts in mixed-adapter
  batches) against one adapter answering the whole batch;
- cost against the step index (bench/scaling.py): training and evaluation seconds per step,
  trainable and total parameters and peak memory of every continual method through a 20-step
  stream, and the growth of each (slope per added task, last step against the second).

The model is the preset's architecture with random weights (speed does not depend on their
values) and the generated ability stream's data. Generation is forced to a fixed length, so that
every configuration does the same work, except in MR-LoRA's own cost measurement, which runs
its router and experts as they are. Results go to bench.json and bench.md.
"""

from mmcl.bench.common import BENCH_PRESETS, BenchPreset, bench_preset
from mmcl.bench.machine import matmul_gflops
from mmcl.bench.run import bench_markdown, run_bench

__all__ = [
    "BENCH_PRESETS",
    "BenchPreset",
    "bench_markdown",
    "bench_preset",
    "matmul_gflops",
    "run_bench",
]
