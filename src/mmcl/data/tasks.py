"""What a continual-learning stream is made of: tasks, each a spec and its records."""

from __future__ import annotations

from dataclasses import dataclass

from mmcl.data.records import Record


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its name, modality, scorer and a one-line description (for routers)."""

    name: str
    modality: str
    metric: str
    description: str


@dataclass
class Task:
    spec: TaskSpec
    train: list[Record]
    test: list[Record]

    @property
    def name(self) -> str:
        return self.spec.name
