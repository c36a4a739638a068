"""The method interface: a small set of lifecycle hooks that the runner and loop call.

A method is a class registered by name. The runner calls, in order:
`setup()` once, then per task `before_task` -> training on `train_records` with `loss`
added to the answer loss, and `after_epoch` after each pass over them -> `after_task`; at
evaluation `predict` may route each sample to an adapter. `state_dict` / `load_state_dict`
carry what resume needs (tensors go to safetensors, everything else to JSON). Class attributes
declare what the method needs.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from mmcl.data.benchmarks import Task, TaskSpec
from mmcl.data.records import Record
from mmcl.models.base import Backbone, Batch, Outputs


class MethodOptions(BaseModel):
    """Base of each method's settings (its section of the config, minus `name`)."""

    model_config = ConfigDict(extra="forbid")


class Method:
    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    # What the method needs and how the runner treats it.
    trains: ClassVar[bool] = True  # False: zero-shot (the base model as it is)
    joint: ClassVar[bool] = False  # True: one model on all tasks at once (upper bound)
    task_id_at_test: ClassVar[bool] = False  # must stay False for task-agnostic inference
    stores_samples: ClassVar[bool] = False  # keeps training samples (replay buffers)
    train_defaults: ClassVar[dict[str, Any]] = {}  # TrainSettings fields this method prefers
    # Why `mmcl export` cannot hand the trained method over as plain peft adapters: the layers
    # or inputs its answers depend on that a peft folder cannot hold ("": it can).
    not_exportable: ClassVar[str] = ""

    def __init__(
        self, backbone: Backbone, options: MethodOptions, tasks: list[TaskSpec], seed: int
    ):
        self.backbone = backbone
        self.opts = options
        self.tasks = tasks
        self.seed = seed

    # --- lifecycle hooks --------------------------------------------------------------------
    def setup(self) -> None:
        """Once, before the first task: add adapters, choose trainable parameters."""

    def before_task(self, task: Task, step: int) -> None:
        """Before training on `task` (step counts from 0)."""

    def train_records(self, task: Task) -> list[Record]:
        """The records to train on for this step (replay mixes its buffer in)."""
        return task.train

    def prepare_batch(self, batch: Batch) -> Batch:
        """Right before the model runs on a batch, in training and at evaluation: a method may
        set per-sample state of its layers from the batch (routing: smolora) or return the
        batch changed (prompt tokens inserted: modalprompt). Default: the batch as it is."""
        return batch

    def loss(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        """Extra loss terms, by name, added to the answer-token loss."""
        return {}

    def after_epoch(self, epoch: int) -> None:
        """After each pass over the training records (epoch counts from 0; the last pass may
        be partial): a method may move its weights (moincl's fusion with the teacher)."""

    def after_task(self, task: Task, step: int) -> None:
        """After training on `task`: consolidate (Fisher, teachers, freezing, routers)."""

    def after_stream(self) -> None:
        """After the last step's evaluation, outside the training time: measurements that are
        not learning (mr-lora's inference cost of routing), kept in `state_dict`."""

    def predict(self, batch: Batch) -> list[str] | None:
        """Which adapter answers each sample of a test batch; None: the active model. The
        evaluator generates right after, so a method may also set per-sample state of its own
        layers here (mixture weights: hide-llava, disco)."""
        return None

    def report(self) -> dict[str, Any]:
        """Method-specific figures for results.json (e.g. buffer size)."""
        return {}

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What resume needs beyond the model weights: tensors and JSON-able values."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; recreate any adapters so that the weights can load."""

    def restore_tasks(self, seen: list[Task]) -> None:
        """On resume, after `load_state_dict`: the tasks trained before the checkpoint, so that
        a method that stores sample references (record ids) can find its records again."""
