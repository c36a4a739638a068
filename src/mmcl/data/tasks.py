"""What a continual-learning stream is made of: tasks, each a spec and its records."""

from __future__ import annotations

from dataclasses import dataclass

from mmcl.data.records import Record
from mmcl.errors import MmclError


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


def select(benchmark: str, specs: list[TaskSpec], names: list[str] | None) -> list[TaskSpec]:
    """The specs of the tasks `names`, in that order (every task when None)."""
    by_name = {s.name: s for s in specs}
    unknown = [n for n in names or [] if n not in by_name]
    if unknown:
        raise MmclError(
            f"benchmark {benchmark!r} has no task(s) {unknown}; its tasks are {list(by_name)}"
        )
    return [by_name[n] for n in names] if names else list(specs)
