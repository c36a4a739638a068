"""replay: experience replay — lora-ft plus a small buffer of earlier tasks' training samples.

After each task a fixed quota of its training samples (by default 5% of them, drawn with a
seed derived from the run seed and the task name) joins the buffer; every later task trains on
its own data plus the whole buffer, shuffled together. So by default the buffer, and the cost
of each step, grow with the number of tasks. With `buffer_size` the buffer holds at most that
many samples, shared evenly by the tasks seen (each keeps the first ones of its seeded draw):
then a step's cost stops growing once the buffer is full, as in a fixed-memory rehearsal. The
buffer holds references (task name + record ids), which the checkpoint stores as JSON and
resume resolves again against the tasks' records.
"""

from __future__ import annotations

import math
import random

from pydantic import Field

from mmcl.data.benchmarks import Task
from mmcl.data.records import Record
from mmcl.errors import MmclError
from mmcl.io import derive_seed
from mmcl.methods import register
from mmcl.methods.lora_ft import LoraFT, LoraOptions


class ReplayOptions(LoraOptions):
    fraction: float = Field(
        0.05, gt=0, le=1, description="share of each task's training samples kept"
    )
    per_task: int | None = Field(
        None, ge=1, description="samples kept per task (overrides `fraction`)"
    )
    buffer_size: int | None = Field(
        None, ge=1, description="at most this many samples in all, shared evenly by the tasks"
    )


@register
class Replay(LoraFT):
    name = "replay"
    summary = "lora-ft + a buffer of a few samples per earlier task, mixed into training"
    Options = ReplayOptions
    stores_samples = True

    def __init__(self, backbone, options, tasks, seed):
        super().__init__(backbone, options, tasks, seed)
        self.buffer_ids: dict[str, list[str]] = {}  # task name -> record ids, in task order
        self.buffer: dict[str, list[Record]] = {}  # the same, resolved

    def quota(self, n_train: int) -> int:
        k = self.opts.per_task or math.ceil(self.opts.fraction * n_train)
        return min(k, n_train)

    def train_records(self, task: Task) -> list[Record]:
        replayed = [r for name, recs in self.buffer.items() if name != task.name for r in recs]
        return list(task.train) + replayed

    def after_task(self, task: Task, step: int) -> None:
        rng = random.Random(derive_seed(self.seed, "replay", task.name))
        chosen = rng.sample(list(task.train), self.quota(len(task.train)))
        self.buffer[task.name] = chosen
        self.buffer_ids[task.name] = [r.id for r in chosen]
        if self.opts.buffer_size is not None:
            self._fit_buffer(self.opts.buffer_size)

    def _fit_buffer(self, size: int) -> None:
        """Shrink the buffer to `size` samples, shared evenly by its tasks (the earlier tasks
        get the remainder); each task keeps the first ones of its draw."""
        n = len(self.buffer)
        for k, name in enumerate(list(self.buffer)):
            share = size // n + (k < size % n)
            self.buffer[name] = self.buffer[name][:share]
            self.buffer_ids[name] = self.buffer_ids[name][:share]

    def report(self) -> dict:
        return {
            "buffer_size": sum(len(v) for v in self.buffer_ids.values()),
            "buffer_per_task": {k: len(v) for k, v in self.buffer_ids.items()},
        }

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"buffer_ids": {k: list(v) for k, v in self.buffer_ids.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffer_ids = {k: list(v) for k, v in (state.get("buffer_ids") or {}).items()}
        self.buffer = {}

    def restore_tasks(self, seen: list[Task]) -> None:
        """Resolve the buffer's record ids against the records of the tasks already seen."""
        by_task = {t.name: {r.id: r for r in t.train} for t in seen}
        self.buffer = {}
        for name, ids in self.buffer_ids.items():
            if name not in by_task:
                raise MmclError(f"replay checkpoint: buffer task {name!r} is not in the stream")
            missing = [i for i in ids if i not in by_task[name]]
            if missing:
                raise MmclError(
                    f"replay checkpoint: task {name!r} has no training records {missing[:5]}"
                )
            self.buffer[name] = [by_task[name][i] for i in ids]
