"""Real-data streams: a benchmark read from files (the published layouts: mllm_cl_layout.py,
micl_layout.py) and any LLaVA-format stream from YAML.

A RealBenchmark knows its tasks (name, modality, scorer, description) and where each task's
train/test files sit under a data root. The root (and per-task path overrides) are bound with
`at(root, files)`; `load()` then reads and validates every file through the same reader as the
built-in benchmarks. Missing roots and files fail with one error that lists everything
expected.

A stream YAML looks like:

    name: my-stream            # optional (default: the file's name)
    root: data                 # optional, relative to the YAML; data.root overrides it
    tasks:
      - name: charts
        train: charts/train.json     # LLaVA conversations
        test: charts/test.json       # LLaVA or MLLM-CL {question_id, image, text, answer}
        modality: image              # default image
        scorer: lenient              # a scorer of `mmcl list`
        description: questions about bar and line charts
    order: [charts]            # optional (default: the order of `tasks`)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from mmcl.data.records import MODALITIES, Record, load_records
from mmcl.data.tasks import Task, TaskSpec, select
from mmcl.errors import DataError, MmclError
from mmcl.io import derive_seed
from mmcl.scoring import missing_fields

SPLITS = ("train", "test")


@dataclass(frozen=True)
class RealTask:
    """A task of a real-data stream; `train`/`test` list candidate paths under the root (the
    first that exists is used, because the published scripts and the released archive do not
    name folders alike)."""

    spec: TaskSpec
    train: tuple[str, ...]
    test: tuple[str, ...]
    # A layout other than LLaVA/MLLM-CL JSON: (file, split, root) -> records (micl_layout.py).
    reader: Callable[[Path, str, Path], list[Record]] | None = None
    media: tuple[str, ...] = ()  # media folders under the root, named when the root is wrong


@dataclass(frozen=True)
class RealBenchmark:
    """A stream read from files under a data root, with the same `load()` as SynthBenchmark."""

    name: str
    summary: str
    tasks: tuple[RealTask, ...]
    root: Path | None = None
    files: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # per-task overrides

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(t.spec.name for t in self.tasks)

    def specs(self) -> list[TaskSpec]:
        return [t.spec for t in self.tasks]

    def at(self, root: Path | None, files: Mapping[str, Mapping[str, str]] | None) -> RealBenchmark:
        """This stream bound to a data root and per-task path overrides ({task: {train, test}})."""
        files = dict(files or {})
        unknown = sorted(set(files) - set(self.order))
        if unknown:
            raise MmclError(
                f"data.files names task(s) {unknown} that benchmark {self.name!r} does not have; "
                f"its tasks are {list(self.order)}"
            )
        for task, paths in files.items():
            bad = sorted(set(paths) - set(SPLITS))
            if bad:
                raise MmclError(f"data.files.{task}: unknown key(s) {bad}; use train and test")
        return replace(self, root=Path(root) if root is not None else self.root, files=files)

    def materialize(self, *args, **kwargs) -> Path:
        raise MmclError(
            f"benchmark {self.name!r} is read from your data root (data.root); "
            "there is nothing to generate"
        )

    def _root(self) -> Path:
        if self.root is None:
            raise MmclError(
                f"benchmark {self.name!r} reads data files: set data.root to the folder that "
                f"holds them (expected there: {self._expected_listing()})"
            )
        if not self.root.is_dir():
            raise MmclError(
                f"data.root {self.root} is not a folder; benchmark {self.name!r} expects there: "
                f"{self._expected_listing()}"
            )
        return self.root

    def _candidates(self, task: RealTask, split: str) -> tuple[str, ...]:
        override = self.files.get(task.spec.name, {}).get(split)
        return (override,) if override else getattr(task, split)

    def _expected_listing(self) -> str:
        files = [" or ".join(self._candidates(t, s)) for t in self.tasks for s in SPLITS]
        folders = [m + "/" for t in self.tasks for m in t.media]
        return ", ".join(dict.fromkeys(files + folders))

    def resolve(
        self, names: list[str], splits: tuple[str, ...] = SPLITS
    ) -> dict[str, dict[str, Path]]:
        """The files of `splits` of each task in `names`; one error lists every missing file."""
        root = self._root()
        by_name = {t.spec.name: t for t in self.tasks}
        found: dict[str, dict[str, Path]] = {}
        missing: list[str] = []
        for n in names:
            for split in splits:
                cands = self._candidates(by_name[n], split)
                hit = next((root / c for c in cands if (root / c).is_file()), None)
                if hit is None:
                    missing.append(f"{n} {split}: {' or '.join(str(root / c) for c in cands)}")
                else:
                    found.setdefault(n, {})[split] = hit
        if missing:
            raise MmclError(
                f"benchmark {self.name!r}: {len(missing)} expected file(s) missing under "
                f"{root}:\n" + "\n".join(f"  - {m}" for m in missing) + "\n"
                "Point data.root at the data folder, or set data.files.<task>.<train|test> "
                "to a path relative to it."
            )
        return found

    def read(self, name: str, split: str, path: Path) -> list[Record]:
        """Every record of task `name`'s `split` file, in the task's layout. Media files are
        not opened: decoding every image of a large training set would take minutes; an
        unreadable one still fails, naming its file, when it is first batched."""
        reader = next(t.reader for t in self.tasks if t.spec.name == name)
        if reader is not None:
            return reader(path, split, self._root())
        return load_records(path, check_media=False)

    def load(
        self,
        seed: int,
        train_size: int | None = None,
        test_size: int | None = None,
        order: list[str] | None = None,
    ) -> list[Task]:
        """Read, validate and (if sizes are given) subsample every task's train and test files."""
        specs = select(self.name, self.specs(), order)
        paths = self.resolve([spec.name for spec in specs])
        tasks = []
        for spec in specs:
            n, split = spec.name, {}
            for s, size in (("train", train_size), ("test", test_size)):
                records = self.read(n, s, paths[n][s])
                records = _subsample(records, size, derive_seed(seed, self.name, n, s))
                _check_media_exist(records, paths[n][s])
                if s == "test":  # a field the task's scorer reads is checked before training
                    missing = missing_fields(spec.metric, records, str(paths[n][s]))
                    if missing:
                        raise DataError(missing)
                split[s] = records
            tasks.append(Task(spec, split["train"], split["test"]))
        return tasks


def _subsample(records: list[Record], size: int | None, seed: int) -> list[Record]:
    """A seeded random subset of `size` records, in file order (all of them when size is None
    or larger than the file)."""
    if size is None or size >= len(records):
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), size))
    return [records[i] for i in keep]


def _check_media_exist(records: list[Record], path: Path) -> None:
    problems = [
        f"{path} record {r.id!r}: {m} file not found: {p}"
        for r in records
        for m, files in r.media.items()
        for p in files
        if not Path(p).is_file()
    ]
    if problems:
        raise DataError(problems)


def real_task(name, metric, description, train, test, modality="image") -> RealTask:
    return RealTask(TaskSpec(name, modality, metric, description), tuple(train), tuple(test))


# --- generic streams from YAML -------------------------------------------------------------------
class _StreamTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    train: str
    test: str
    modality: str = "image"
    scorer: str = "lenient"
    description: str = ""


class _Stream(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    summary: str = ""
    root: str | None = None
    tasks: list[_StreamTask] = Field(min_length=1)
    order: list[str] | None = None


def load_stream(path: str | Path) -> RealBenchmark:
    """A RealBenchmark from a stream YAML (see the module docstring)."""
    from mmcl.config import validate_settings
    from mmcl.metrics import CORPUS_SCORERS, SCORERS
    from mmcl.scoring import RECORD_SCORERS

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MmclError(f"{path}: stream file not found") from None
    except yaml.YAMLError as e:
        raise MmclError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise MmclError(f"{path}: a stream file must be a mapping with a `tasks` list")
    stream = validate_settings(_Stream, raw, f"stream {path}")
    problems = []
    names = [t.name for t in stream.tasks]
    if len(set(names)) != len(names):
        problems.append(f"task names repeat: {names}")
    for t in stream.tasks:
        if t.modality not in MODALITIES:
            problems.append(f"task {t.name}: modality {t.modality!r} is not one of {MODALITIES}")
        known = sorted(SCORERS | CORPUS_SCORERS | RECORD_SCORERS)
        if t.scorer not in known:
            problems.append(f"task {t.name}: unknown scorer {t.scorer!r}; known: {known}")
    order = stream.order or names
    missing = [n for n in order if n not in names]
    if missing:
        problems.append(f"order names unknown task(s) {missing}; tasks are {names}")
    if problems:
        raise MmclError(f"{path}: invalid stream\n" + "\n".join(f"  - {p}" for p in problems))
    by_name = {t.name: t for t in stream.tasks}
    tasks = []
    for n in order:
        t = by_name[n]
        tasks.append(real_task(n, t.scorer, t.description or n, [t.train], [t.test], t.modality))
    root = (path.parent / stream.root) if stream.root else path.parent
    return RealBenchmark(
        stream.name or path.stem,
        stream.summary or f"stream from {path}",
        tuple(tasks),
        root=root,
    )
