"""Benchmark registry: a name users type -> an ordered stream of tasks with train/test records.

Built-in benchmarks are procedural (data/synth/): generated on first use into the cache,
keyed by (benchmark, seed, sizes, generator version), and loaded through the same validating
reader as real data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmcl.data.micl_layout import MICL_TMLR_ORDER_1, MICL_TMLR_ORDER_2
from mmcl.data.mllm_cl_layout import MLLM_CL_ACL, MLLM_CL_DCL
from mmcl.data.real import RealBenchmark, load_stream
from mmcl.data.records import load_records
from mmcl.data.synth import family_tasks, generate
from mmcl.data.synth.micl import ORDER_1 as MICL_ORDER_1
from mmcl.data.synth.micl import ORDER_2 as MICL_ORDER_2
from mmcl.data.synth.scenario import ORDER_5, ORDER_20
from mmcl.data.tasks import Task, TaskSpec, select
from mmcl.errors import MmclError
from mmcl.io import cache_dir, read_json, stable_hash

__all__ = ["Task", "TaskSpec", "get_benchmark", "register_benchmark"]  # Task(Spec): data/tasks.py

# Bump when a generator's output changes, so caches made by older code are not reused.
GENERATOR_VERSION = 24


@dataclass(frozen=True)
class SynthBenchmark:
    """A procedural benchmark: a family module's tasks in a fixed default order."""

    name: str
    summary: str
    family: str  # module under mmcl.data.synth
    order: tuple[str, ...]
    train_size: int
    test_size: int

    def specs(self) -> list[TaskSpec]:
        tasks = family_tasks(self.family)
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
            generate(
                self.family,
                list(self.order),
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
        specs = select(self.name, self.specs(), order)
        root = self.materialize(seed, train_size or self.train_size, test_size or self.test_size)
        # Records were validated when written; media checks on reload would only re-read PNGs.
        return [
            Task(
                s,
                load_records(root / s.name / "train.json", check_media=False),
                load_records(root / s.name / "test.json", check_media=False),
            )
            for s in specs
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
register_benchmark(
    SynthBenchmark(
        "domain",
        "MLLM-CL domain stream: remote sensing -> medical -> driving -> science -> finance "
        "(images, train and test IID)",
        "domain",
        ("remote_sensing", "medical", "driving", "science", "finance"),
        train_size=1000,
        test_size=100,
    )
)

# MSVQA-style multi-scenario streams (UNIFIER); data/synth/scenario.py has the protocols.
register_benchmark(
    SynthBenchmark(
        "scenario",
        "multi-scenario VQA + grounding, 5 steps: high altitude -> underwater -> low altitude "
        "-> indoor -> high altitude again (images)",
        "scenario",
        ORDER_5,
        train_size=2000,  # why 2000: data/synth/scenario.py
        # Reports score each question type against its constant answer: with 150 a task held
        # about 22 existence questions (a standard error of 9 points); 500 holds about 75.
        test_size=500,
    )
)
register_benchmark(
    SynthBenchmark(
        "scenario-20",
        "multi-scenario VQA + grounding, 20 steps: the four scenarios visited five times, "
        "fresh data each visit (images)",
        "scenario",
        ORDER_20,
        train_size=300,
        test_size=60,
    )
)

# Modality-inconsistent streams (MoInCL): data/synth/micl.py has the tasks and both orders.
for _name, _order in (("micl-order1", MICL_ORDER_1), ("micl-order2", MICL_ORDER_2)):
    register_benchmark(
        SynthBenchmark(
            _name,
            "MICL: image/audio/video x captioning/QA, " + " -> ".join(_order).replace("_", " "),
            "micl",
            _order,
            train_size=400,
            test_size=30,
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
# Its audio/video counterpart, which extends that base to hear and watch (pretraining/media.py).
PRETRAIN_AV = SynthBenchmark(
    "pretrain-av",
    "general sounds and clips for extending the base model to audio and video",
    "pretrain_av",
    ("sounds", "clips"),
    train_size=4000,
    test_size=50,
)


def get_benchmark(
    name: str, root: Path | None = None, files: dict[str, dict[str, str]] | None = None
) -> SynthBenchmark | RealBenchmark:
    """A benchmark by name, or a stream YAML by path; real-data ones are bound to the data root
    and per-task path overrides."""
    if name.endswith((".yaml", ".yml")):
        bench = load_stream(name)
    elif name in BENCHMARKS:
        bench = BENCHMARKS[name]
    else:
        raise MmclError(
            f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)} or give a stream "
            "YAML file"
        )
    if isinstance(bench, RealBenchmark):
        return bench.at(root, files)
    if root is not None or files:
        raise MmclError(
            f"benchmark {name!r} is generated; data.root and data.files apply to real-data "
            "benchmarks (mllm-cl-dcl, mllm-cl-acl, a stream YAML)"
        )
    return bench


def benchmark_info(folder: Path) -> dict:
    return read_json(folder / "benchmark.json")


register_benchmark(MLLM_CL_DCL)
register_benchmark(MLLM_CL_ACL)
register_benchmark(MICL_TMLR_ORDER_1)
register_benchmark(MICL_TMLR_ORDER_2)
