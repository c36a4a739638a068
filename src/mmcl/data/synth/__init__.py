"""Procedural benchmark generators: one module per benchmark family.

A family module defines `TASKS`, an ordered dict of task name -> SynthTask. A SynthTask pairs
the task's spec with a function that draws one Sample from a random generator. Everything is
deterministic from (benchmark, seed, sizes): sample i of a split gets its own generator.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmcl.data.records import PLACEHOLDER, Record, write_records
from mmcl.io import derive_seed, worker_pool, write_json


@dataclass
class Sample:
    """One generated sample before it is written: media objects, question, accepted answers."""

    question: str
    answers: list[str]
    images: list[Image.Image] = field(default_factory=list)
    audios: list[np.ndarray] = field(default_factory=list)  # mono float32, data.media.AUDIO_RATE
    videos: list[list[Image.Image]] = field(default_factory=list)  # frames
    meta: dict[str, Any] = field(default_factory=dict)


SampleMaker = Callable[[np.random.Generator, str], Sample]


@dataclass(frozen=True)
class SynthTask:
    """A task's spec and sample maker. `train_scale` multiplies the benchmark's training size
    for a task whose skill needs more samples than the others to be learned at all."""

    name: str
    modality: str
    metric: str
    description: str
    make: SampleMaker
    train_scale: int = 1


# Writers turn one media object into a file; audio and video register theirs in synth/media.py.
# PNG at zlib level 1: the same pixels, encoded in half the time of the default level 6 (a third
# of the time a base-corpus scene took to render and write) and no larger on these flat renders.
MEDIA_WRITERS: dict[str, tuple[str, Callable[[Any, Path], None]]] = {
    "image": (".png", lambda img, path: img.save(path, compress_level=1)),
}


def sample_rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, task, split, index))


def family_tasks(family: str) -> dict[str, SynthTask]:
    """The tasks of a family module (mmcl.data.synth.<family>)."""
    return importlib.import_module(f"mmcl.data.synth.{family}").TASKS


def write_samples(
    family: str, task: str, split: str, seed: int, folder: Path, indices: range
) -> list[Record]:
    """Generate samples `indices` of a task's split into `folder` (media files) and return their
    records. Arguments are names, so a worker process can run it."""
    make = family_tasks(family)[task].make
    media_dir = folder / "media"
    media_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i in indices:
        s = make(sample_rng(seed, task, split, i), split)
        media: dict[str, tuple[Path, ...]] = {}
        for modality, objs in (("image", s.images), ("audio", s.audios), ("video", s.videos)):
            if not objs:
                continue
            ext, writer = MEDIA_WRITERS[modality]
            paths = []
            for j, obj in enumerate(objs):
                path = media_dir / f"{split}_{i:05d}_{j}{ext}"
                writer(obj, path)
                paths.append(path)
            media[modality] = tuple(paths)
        placeholders = "".join(PLACEHOLDER[m] * len(p) for m, p in media.items())
        prompt = f"{placeholders}\n{s.question}" if placeholders else s.question
        rid = f"{task}-{split}-{i:05d}"
        records.append(Record(rid, ((prompt, s.answers[0]),), media, tuple(s.answers), s.meta))
    return records


# Samples per job of the generation pool, and the fewest samples per worker: a worker process
# starts in about 2 s and renders 1000 scenes in about 2 s.
CHUNK = 2000


def generate(
    family: str, tasks: list[str], sizes: dict[str, int], seed: int, out: Path, info: dict[str, Any]
) -> None:
    """Write every task's splits under `out/<task>/` atomically (a temp dir renamed at the end),
    on a pool of processes when there are many samples (every sample has its own generator, so
    the result does not depend on the pool). Measured on the base corpus (21 000 scenes, 2 cores):
    25 s on the pool, 48 s in one process. A script that calls it needs the usual
    `if __name__ == "__main__":` guard of spawned pools."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    specs = family_tasks(family)
    counts = {
        (t, split): n * (specs[t].train_scale if split == "train" else 1)
        for t in tasks
        for split, n in sizes.items()
    }
    jobs = [
        (family, task, split, seed, tmp / task, range(a, min(a + CHUNK, n)))
        for (task, split), n in counts.items()
        for a in range(0, n, CHUNK)
    ]
    workers = min(os.cpu_count() or 1, sum(counts.values()) // CHUNK)
    try:
        if workers > 1:
            with worker_pool(workers) as pool:
                chunks = list(pool.map(write_samples, *zip(*jobs, strict=True)))
        else:
            chunks = [write_samples(*job) for job in jobs]
        # Every split gets its file, an empty one too (the general suite has no train split).
        splits: dict[tuple[str, str], list[Record]] = {(t, s): [] for t in tasks for s in sizes}
        for (_, task, split, *_), records in zip(jobs, chunks, strict=True):  # in sample order
            splits[task, split].extend(records)
        for (task, split), records in splits.items():
            layout = "llava" if split == "train" else "test"
            write_records(tmp / task / f"{split}.json", records, layout=layout)
        write_json(tmp / "benchmark.json", info)
        # Another process may have written the same (deterministic) data meanwhile and be
        # reading it now: a complete copy is kept, and only an incomplete one replaced.
        if (out / "benchmark.json").exists():
            return
        if out.exists():
            shutil.rmtree(out)
        try:
            tmp.rename(out)
        except OSError:
            if not (out / "benchmark.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
