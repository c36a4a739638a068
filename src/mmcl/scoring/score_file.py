"""`mmcl score`: a prediction file scored against a test file by a named rule.

Predictions are JSONL with `question_id` and `text` per line (MLLM-CL's answer files as they
are; other keys are ignored). Every test record needs exactly one prediction, and every
prediction a test record: anything else is an error naming the ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmcl.data.records import Record, load_records
from mmcl.errors import DataError, MmclError
from mmcl.io import write_json, write_jsonl
from mmcl.metrics import METRIC_NAMES, score_task
from mmcl.scoring import RULES, missing_fields
from mmcl.scoring.judge import Judge, judge_predictions


def read_predictions(path: Path) -> dict[str, str]:
    """{question_id: text} from a JSONL file; one error lists every bad line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MmclError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise MmclError(f"{path}: not UTF-8 text ({e})") from None
    found: dict[str, str] = {}
    problems = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not valid JSON ({e})")
            continue
        if not isinstance(row, dict) or row.get("question_id") is None:
            problems.append(f"{where}: needs a 'question_id'")
            continue
        if not isinstance(row.get("text"), str):
            problems.append(f"{where}: needs a string 'text' (the prediction)")
            continue
        qid = str(row["question_id"])
        if qid in found:
            problems.append(f"{where}: question_id {qid!r} predicted twice")
            continue
        found[qid] = row["text"]
    if problems:
        raise DataError(problems)
    return found


def task_test_records(
    benchmark: str, task: str, root: Path | None
) -> tuple[list[Record], Path, str]:
    """The test records of a real-data benchmark's task, found and read as `mmcl run` finds
    and reads them, their file, and the task's scorer."""
    from mmcl.data.benchmarks import get_benchmark
    from mmcl.data.real import RealBenchmark

    bench = get_benchmark(benchmark, root)
    if not isinstance(bench, RealBenchmark):
        raise MmclError(
            f"benchmark {benchmark!r} is generated, not read from a data root; "
            "score its files with --test and --scorer"
        )
    specs = {s.name: s for s in bench.specs()}
    if task not in specs:
        raise MmclError(f"benchmark {benchmark!r} has no task {task!r}; its tasks: {list(specs)}")
    path = bench.resolve([task], splits=("test",))[task]["test"]
    return bench.read(task, "test", path), path, specs[task].metric


def score_file(
    test: Path,
    predictions: Path,
    scorer: str,
    out: Path,
    judge: Judge | None = None,
    records: list[Record] | None = None,
) -> dict[str, Any]:
    """Score `predictions` against the test file `test` (or its already read `records`) with
    `scorer`; write out/scores.jsonl (one row per test record: question_id, prediction, score
    in [0, 1]) and out/summary.json; return the summary."""
    if scorer not in RULES:
        raise MmclError(f"unknown scorer {scorer!r}; `mmcl list` shows them: {sorted(RULES)}")
    if records is None:
        records = load_records(test, check_media=False)  # a score reads names, not pixels
    problems = missing_fields(scorer, records, str(test))
    predicted = read_predictions(predictions)
    missing = [r.id for r in records if r.id not in predicted]
    if missing:
        problems.append(
            f"{predictions}: no prediction for {len(missing)} test record(s) of {test}: "
            + ", ".join(missing[:20])
            + (" ..." if len(missing) > 20 else "")
        )
    ids = {r.id for r in records}
    unknown = [q for q in predicted if q not in ids]
    if unknown:
        problems.append(
            f"{predictions}: {len(unknown)} prediction(s) for question_id(s) not in {test}: "
            + ", ".join(unknown[:20])
            + (" ..." if len(unknown) > 20 else "")
        )
    if problems:
        raise DataError(problems)
    texts = [predicted[r.id] for r in records]
    compared = judge_predictions(scorer, texts, records, judge)
    refs = [list(r.references) for r in records]
    scores, task_score, extra = score_task(scorer, compared, refs, records)
    rows = []
    for rec, text, seen, s in zip(records, texts, compared, scores, strict=True):
        row: dict[str, Any] = {"question_id": rec.id, "prediction": text, "score": s}
        if seen != text:
            row["extracted"] = seen
        rows.append(row)
    summary: dict[str, Any] = {
        "scorer": scorer,
        "rule": RULES[scorer],
        "metric": METRIC_NAMES.get(scorer, scorer),
        "test": str(test),
        "predictions": str(predictions),
        "samples": len(rows),
        "score": task_score,
        "extra": extra,
    }
    if judge is not None:
        summary["judge"] = judge.describe()
    write_jsonl(out / "scores.jsonl", rows)
    write_json(out / "summary.json", summary)
    return summary
