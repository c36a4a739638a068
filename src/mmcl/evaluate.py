"""Evaluation: batched, KV-cached greedy generation on every test sample, then scoring.

Every sample is generated and scored, or evaluation fails; each returns a prediction row.
Samples are batched in order of prompt length (less padding); a routing method answers each
sample with its chosen adapter, in mixed batches through peft's `adapter_names`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from accelerate.utils import gather_object

from mmcl.data.benchmarks import Task
from mmcl.errors import MmclError
from mmcl.io import process_state
from mmcl.metrics import score_task
from mmcl.question_types import PREFIX, qtype_scores
from mmcl.scoring.judge import Judge, judge_predictions

if TYPE_CHECKING:
    from mmcl.methods.base import Method
    from mmcl.models.base import Backbone


@dataclass
class TaskResult:
    task: str
    score: float  # 0-100
    scored: int
    total: int
    rows: list[dict]
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)
    routing_accuracy: float | None = None


def evaluate_task(
    backbone: Backbone,
    task: Task,
    method: Method | None = None,
    batch_size: int = 64,
    judge: Judge | None = None,
) -> TaskResult:
    """Answer and score every test sample of `task`; a judge (math) extracts answers first."""
    t0 = time.perf_counter()
    records = sorted(task.test, key=lambda r: (len(r.prompt), r.id))
    batches = [records[s : s + batch_size] for s in range(0, len(records), batch_size)]
    # Under torchrun/accelerate, process k answers batches k, k + n, ... (the very batches of
    # one process, hence the same answers). All make the same number of calls, since a sharded
    # model (ZeRO-3; FSDP's model is whole again after training, see train.py) generates in
    # lockstep: one out of batches repeats the last and drops its answers.
    dist = process_state()
    rank, world = dist.process_index, dist.num_processes
    answered: list[tuple[str, str, str | None]] = []
    for j in range(rank, world * math.ceil(len(batches) / world), world):
        chunk = batches[min(j, len(batches) - 1)]
        batch = backbone.collate(chunk, train=False).to(backbone.device)
        batch = method.prepare_batch(batch) if method is not None else batch
        names = method.predict(batch) if method is not None else None
        answers = backbone.generate(batch, adapter_names=names)
        if j < len(batches):
            chosen = names or [None] * len(chunk)
            answered += zip([r.id for r in chunk], answers, chosen, strict=True)
    if world > 1:
        answered = gather_object(answered)
    predictions: dict[str, str] = {}
    routes: dict[str, str] = {}
    for rid, ans, route in answered:
        if rid in predictions:  # every sample exactly once, or the run fails
            raise MmclError(f"task {task.name}: sample {rid} was answered twice")
        predictions[rid] = ans
        if route is not None:
            routes[rid] = route
    missing = [r.id for r in task.test if r.id not in predictions]
    if missing:
        raise MmclError(
            f"task {task.name}: {len(missing)} samples got no prediction: {missing[:5]}"
        )
    preds = [predictions[r.id] for r in task.test]
    refs = [list(r.references) for r in task.test]
    compared = judge_predictions(task.spec.metric, preds, task.test, judge)
    scores, score, extra = score_task(task.spec.metric, compared, refs, task.test)
    by_type = qtype_scores(task.spec.metric, compared, task.test)
    extra = {**extra, **{f"{PREFIX}{k}": v for k, v in by_type.items()}}
    rows = []
    for rec, pred, seen, s in zip(task.test, preds, compared, scores, strict=True):
        row = {
            "id": rec.id,
            "prompt": rec.prompt,
            "prediction": pred,
            "reference": list(rec.references),
            "score": s,
        }
        if seen != pred:  # the judge's extraction is what was scored
            row["extracted"] = seen
        if rec.id in routes:
            row["route"] = routes[rec.id]
        if rec.media:  # the report shows samples with their media
            row["media"] = {m: [str(p) for p in paths] for m, paths in rec.media.items()}
        rows.append(row)
    routing = None
    if routes:  # the right expert: one whose task has this task's description (itself, if unique)
        desc = {t.name: t.description for t in method.tasks}
        right = sum(desc.get(routes[r.id]) == task.spec.description for r in task.test)
        routing = right / len(task.test)
    return TaskResult(
        task.name,
        score,
        len(scores),
        len(task.test),
        rows,
        time.perf_counter() - t0,
        extra,
        routing,
    )
