"""Benchmark registry: a name users type -> an ordered stream of tasks with train/test records.

Built-in benchmarks are procedural (data/synth/): generated on first use into the cache,
keyed by (benchmark, seed, sizes, generator version), and loaded through the same validating
reader as real data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from mmcl.data.records import Record, load_records
from mmcl.data.synth import SynthTask, generate
from mmcl.errors import MmclError
from mmcl.io import cache_dir, read_json, stable_hash

# Bump when a generator's output changes, so caches made by older code are not reused.
GENERATOR_VERSION = 1


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


@dataclass(frozen=True)
class SynthBenchmark:
    """A procedural benchmark: a family module's tasks in a fixed default order."""

    name: str
    summary: str
    family: str  # module under mmcl.data.synth
    order: tuple[str, ...]
    train_size: int
    test_size: int

    def _tasks(self) -> dict[str, SynthTask]:
        import importlib

        module: ModuleType = importlib.import_module(f"mmcl.data.synth.{self.family}")
        return module.TASKS

    def specs(self) -> list[TaskSpec]:
        tasks = self._tasks()
        return [
            TaskSpec(n, tasks[n].modality, tasks[n].metric, tasks[n].description)
            for n in self.order
        ]

    def folder(self, seed: int, train_size: int, test_size: int) -> Path:
        key = stable_hash([self.name, self.order, seed, train_size, test_size, GENERATOR_VERSION])
        return cache_dir() / "data" / f"{self.name}-{key}"

    def materialize(self, seed: int, train_size: int, test_size: int) -> Path:
        """Generate the benchmark into the cache unless it is there already; return its folder."""
        out = self.folder(seed, train_size, test_size)
        if not (out / "benchmark.json").exists():
            info = {
                "benchmark": self.name,
                "seed": seed,
                "tasks": list(self.order),
                "train_size": train_size,
                "test_size": test_size,
                "generator_version": GENERATOR_VERSION,
            }
            tasks = self._tasks()
            generate(
                [tasks[n] for n in self.order],
                {"train": train_size, "test": test_size},
                seed,
                out,
                info,
            )
        return out

    def load(
        self,
        seed: int,
        train_size: int | None = None,
        test_size: int | None = None,
        order: list[str] | None = None,
    ) -> list[Task]:
        train_size = train_size or self.train_size
        test_size = test_size or self.test_size
        root = self.materialize(seed, train_size, test_size)
        specs = {s.name: s for s in self.specs()}
        names = order or list(self.order)
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise MmclError(
                f"benchmark {self.name!r} has no task(s) {unknown}; its tasks are {list(specs)}"
            )
        # Records were validated when written; media checks on reload would only re-read PNGs.
        return [
            Task(
                specs[n],
                load_records(root / n / "train.json", check_media=False),
                load_records(root / n / "test.json", check_media=False),
            )
            for n in names
        ]


BENCHMARKS: dict[str, SynthBenchmark] = {}


def register_benchmark(bench: SynthBenchmark) -> SynthBenchmark:
    BENCHMARKS[bench.name] = bench
    return bench


register_benchmark(
    SynthBenchmark(
        "ability",
        "MLLM-CL ability stream: OCR -> math -> perception -> GUI agent (images)",
        "ability",
        ("ocr", "math", "perception", "gui"),
        train_size=1000,
        test_size=100,
    )
)

# The general corpus that base-pretrains the embedded default model (not a CL stream).
PRETRAIN = SynthBenchmark(
    "pretrain",
    "general scenes for base pretraining",
    "pretrain",
    ("scenes",),
    train_size=20000,
    test_size=200,
)


def get_benchmark(name: str) -> SynthBenchmark:
    if name not in BENCHMARKS:
        raise MmclError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def benchmark_info(folder: Path) -> dict:
    return read_json(folder / "benchmark.json")
