"""One step of continual learning, the sequence of a method's hooks: the runner and bench run
this and nothing else, so that what bench measures is what a run does."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from mmcl.data.benchmarks import Task
from mmcl.io import derive_seed, seed_everything
from mmcl.methods.base import Method
from mmcl.train import TrainSettings, TrainStats, train


@dataclass
class StepStats:
    train: TrainStats  # the training loop's figures
    after_s: float  # wall seconds of `after_task` (consolidation: a Fisher, a router)
    train_cpu_s: float  # this process's CPU seconds of the training loop
    after_cpu_s: float  # and of `after_task`
    trained: list[str]  # the parameters the loop trained, by name in the backbone's state

    @property
    def seconds(self) -> float:
        """Training time: the loop and the consolidation after it."""
        return self.train.seconds + self.after_s


def learn_task(
    method: Method,
    task: Task,
    step: int,
    settings: TrainSettings,
    seed: int,
    desc: str | None = None,
    log: Callable[[dict[str, float]], None] | None = None,
    warmup: int = 0,
) -> StepStats:
    """`method.before_task` -> train on `method.train_records` with `method.loss` added ->
    `method.after_task`, seeded from (seed, step). `warmup` records train first, untimed
    (the first batches of a process pay one-time costs)."""
    backbone = method.backbone
    seed_everything(derive_seed(seed, "step", step))
    method.before_task(task, step)
    records = method.train_records(task)
    train_seed = derive_seed(seed, "train", step)
    if warmup:
        train(backbone, records[:warmup], settings, train_seed, method, desc="warm-up")
    cpu = time.process_time()
    stats = train(
        backbone,
        records,
        settings,
        train_seed,
        method,
        desc=desc or f"{method.name} step {step + 1}: {task.name}",
        log=log,
    )
    trained = sorted(backbone.trainable_parameters())
    cpu_after, wall_after = time.process_time(), time.perf_counter()
    method.after_task(task, step)
    after_s = time.perf_counter() - wall_after
    return StepStats(stats, after_s, cpu_after - cpu, time.process_time() - cpu_after, trained)
