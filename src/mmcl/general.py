"""General-ability retention: what continual tuning costs the base model, step by step.

General suites are never trained on. They are evaluated on the base model (the zero-shot row)
and after every `eval.general_every`-th step (always after the last), and results.json gets a
`general` section: per benchmark its score after each step and the retention, score / base
score. Suites:
- `builtin`: the embedded base's own pretraining skills on held-out scenes (data/synth/general);
- `mme`: MME's released folder (`MME_Benchmark_release_version`): one folder per subtask, either
  images beside `<image>.txt` files or `images/` + `questions_answers_YN/`; each text file holds
  two lines `question<TAB>Yes|No` about its image. Scored as MME's eval_tool: per subtask,
  accuracy over questions + accuracy+ (images with both questions right), each 0-100; the
  perception and cognition totals are the sums over their subtasks, the score their sum;
- `pope`: POPE's question files `coco/coco_pope_{adversarial,popular,random}.json` (one JSON
  object per line: question_id, image, text, label) with the COCO images in `val2014/`; scored
  with POPE's rule (metrics.pope_scores), the score the mean accuracy over the three;
- a stream YAML: each of its tasks' test files, scored with the task's scorer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmcl.data.benchmarks import SynthBenchmark, Task, TaskSpec
from mmcl.data.real import _check_media_exist, _subsample, load_stream
from mmcl.data.records import parse_record
from mmcl.errors import DataError, MmclError
from mmcl.evaluate import TaskResult, evaluate_task
from mmcl.io import derive_seed, process_state, write_jsonl
from mmcl.metrics import METRIC_NAMES

if TYPE_CHECKING:
    from mmcl.config import EvalSettings
    from mmcl.methods.base import Method
    from mmcl.models.base import Backbone

BUILTIN = SynthBenchmark(
    "general",
    "the embedded base's pretraining skills on held-out scenes (never trained on)",
    "general",
    ("describe", "colour", "position"),
    train_size=0,
    test_size=100,
)
MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)
POPE_CATEGORIES = ("adversarial", "popular", "random")
POPE_FILES = "coco/coco_pope_{}.json"
POPE_IMAGES = "val2014"
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")

Summary = Callable[[list[Task], list[TaskResult]], tuple[float, dict[str, float]]]


def _single(tasks: list[Task], results: list[TaskResult]) -> tuple[float, dict[str, float]]:
    return results[0].score, results[0].extra


@dataclass(frozen=True)
class GeneralBenchmark:
    """One row of the `general` section: its tasks and how their results make one score."""

    name: str
    metric: str
    tasks: list[Task]
    summarize: Summary = _single


# --- MME ---------------------------------------------------------------------------------------
def _mme_subtask(root: Path, name: str, images: int | None, seed: int) -> tuple[Task, list[str]]:
    """One subtask's questions (two per image, in file order), and the problems found."""
    folder = root / name
    split = (folder / "questions_answers_YN").is_dir() and (folder / "images").is_dir()
    text_dir, image_dir = (
        (folder / "questions_answers_YN", folder / "images") if split else (folder, folder)
    )
    files = sorted(text_dir.glob("*.txt"))
    problems = [] if files else [f"{text_dir}: no question files (*.txt) of MME {name}"]
    files = _subsample(files, images, derive_seed(seed, "mme", name))  # whole images: acc+
    records = []
    for path in files:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        found = [image_dir / (path.stem + s) for s in IMAGE_SUFFIXES]
        image = next((f for f in found if f.is_file()), None)
        if image is None:
            problems.append(f"{path}: no image {found[0].name} (or .png, .jpeg) in {image_dir}")
            continue
        if len(lines) != 2 or any(
            ln.count("\t") != 1 or ln.split("\t")[1].strip().lower() not in ("yes", "no")
            for ln in lines
        ):
            problems.append(f"{path}: expected two lines 'question<TAB>Yes|No'")
            continue
        for k, line in enumerate(lines):
            question, answer = line.split("\t")
            raw = {
                "question_id": f"mme-{name}-{path.stem}-{k}",
                "image": image.name,
                "text": question,
                "answer": answer.strip(),
                "mme_image": path.stem,
            }
            rec, probs = parse_record(raw, f"{path} line {k + 1}", image_dir)
            problems += probs
            if rec is not None:
                records.append(rec)
    return Task(TaskSpec(name, "image", "mme", f"MME {name}"), [], records), problems


def mme_summary(tasks: list[Task], results: list[TaskResult]) -> tuple[float, dict[str, float]]:
    """MME's scores: per subtask accuracy, accuracy+ and their sum; perception and cognition
    totals; the score is perception + cognition (of the subtasks present)."""
    extra: dict[str, float] = {"perception": 0.0, "cognition": 0.0}
    for task, res in zip(tasks, results, strict=True):
        right: dict[str, list[float]] = {}
        for rec, row in zip(task.test, res.rows, strict=True):
            right.setdefault(rec.meta["mme_image"], []).append(row["score"])
        acc_plus = 100 * sum(all(s == 1.0 for s in v) for v in right.values()) / len(right)
        extra[f"{task.name}_acc"] = res.score
        extra[f"{task.name}_acc_plus"] = acc_plus
        extra[task.name] = res.score + acc_plus
        extra["perception" if task.name in MME_PERCEPTION else "cognition"] += extra[task.name]
    return extra["perception"] + extra["cognition"], extra


def load_mme(root: Path, size: int | None, seed: int) -> GeneralBenchmark:
    """MME from its released folder; `size` questions per subtask (size // 2 images)."""
    subtasks = MME_PERCEPTION + MME_COGNITION
    missing = [root / n for n in subtasks if not (root / n).is_dir()]
    if missing:
        raise MmclError(
            f"MME: {len(missing)} subtask folder(s) missing under {root}:\n"
            + "\n".join(f"  - {m}" for m in missing)
            + "\nPoint root at MME_Benchmark_release_version (the folder of the subtasks)."
        )
    images = max(1, size // 2) if size else None
    found = [_mme_subtask(root, n, images, seed) for n in subtasks]
    problems = [p for _, probs in found for p in probs]
    if problems:
        raise DataError(problems)
    tasks = [task for task, _ in found]
    return GeneralBenchmark("mme", "mme_score", tasks, mme_summary)


# --- POPE --------------------------------------------------------------------------------------
def pope_summary(tasks: list[Task], results: list[TaskResult]) -> tuple[float, dict[str, float]]:
    """POPE's figures per category, their means, and the mean accuracy as the score."""
    extra = {
        f"{t.name}_{k}": v for t, r in zip(tasks, results, strict=True) for k, v in r.extra.items()
    }
    for key in results[0].extra:
        extra[key] = sum(r.extra[key] for r in results) / len(results)
    return extra["accuracy"], extra


def load_pope(root: Path, size: int | None, seed: int) -> GeneralBenchmark:
    """POPE's three COCO categories; `size` questions per category."""
    expected = [root / POPE_FILES.format(c) for c in POPE_CATEGORIES] + [root / POPE_IMAGES]
    missing = [p for p in expected if not p.exists()]
    if missing:
        raise MmclError(
            f"POPE: {len(missing)} expected path(s) missing under {root}:\n"
            + "\n".join(f"  - {m}" for m in missing)
        )
    tasks = []
    for cat in POPE_CATEGORIES:
        path = root / POPE_FILES.format(cat)
        records, problems = [], []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                raw = {**raw, "answer": raw.pop("label")}
                if raw["answer"] not in ("yes", "no"):
                    raise ValueError
            except (json.JSONDecodeError, TypeError, KeyError, AttributeError, ValueError):
                problems.append(f"{path} line {i + 1}: not a JSON object with a yes/no 'label'")
                continue
            rec, probs = parse_record(raw, f"{path} line {i + 1}", root / POPE_IMAGES)
            problems += probs
            if rec is not None:
                records.append(rec)
        if problems:
            raise DataError(problems)
        records = _subsample(records, size, derive_seed(seed, "pope", cat))
        _check_media_exist(records, path)
        tasks.append(Task(TaskSpec(cat, "image", "pope", f"POPE {cat}"), [], records))
    return GeneralBenchmark("pope", "accuracy", tasks, pope_summary)


# --- all suites of a config ----------------------------------------------------------------------
def load_general(settings: EvalSettings, seed: int) -> list[GeneralBenchmark]:
    """The general benchmarks a config asks for (none by default), with a seeded subset of
    `general_size` samples per task."""
    from mmcl.config import GeneralSuite

    size = settings.general_size
    benches: list[GeneralBenchmark] = []
    for entry in settings.general:
        entry = GeneralSuite(suite=entry) if isinstance(entry, str) else entry
        suite, root = entry.suite, entry.root
        if suite in ("mme", "pope"):
            if root is None:
                raise MmclError(f"eval.general: suite {suite!r} needs a root (its data folder)")
            loader = load_mme if suite == "mme" else load_pope
            found = [loader(Path(root), size, seed)]
        elif suite == "builtin" or suite.endswith((".yaml", ".yml")):
            bench = BUILTIN if suite == "builtin" else load_stream(suite)
            found = [
                GeneralBenchmark(t.name, METRIC_NAMES.get(t.spec.metric, t.spec.metric), [t])
                for t in bench.load(seed, None, size)
            ]
        else:
            raise MmclError(
                f"eval.general: unknown suite {suite!r}; use builtin, mme, pope or a stream YAML"
            )
        if entry.prompt_suffix:  # e.g. LLaVA-1.5's "Answer the question using a single word..."
            for bench in found:
                for task in bench.tasks:
                    task.test = [
                        r.with_turns([*r.turns[:-1], (r.prompt + entry.prompt_suffix, r.answer)])
                        for r in task.test
                    ]
        benches += found
    names = [b.name for b in benches]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MmclError(f"eval.general: benchmark name(s) {repeated} appear in two suites")
    return benches


def is_due(step: int, n_steps: int, every: int) -> bool:
    """Whether the general suites are evaluated after `step` (0-based): every N-th and the last."""
    return (step + 1) % every == 0 or step == n_steps - 1


def evaluate_general(
    backbone: Backbone,
    method: Method | None,
    benches: list[GeneralBenchmark],
    batch_size: int,
    predictions: Path | None,
) -> tuple[dict[str, dict[str, Any]], float]:
    """Evaluate every general benchmark; write per-sample predictions under `predictions` (when
    given) as <benchmark>/<task>.jsonl. Returns ({benchmark: score, extra, counts}, seconds)."""
    t0 = time.perf_counter()
    out: dict[str, dict[str, Any]] = {}
    for bench in benches:
        results = [evaluate_task(backbone, t, method, batch_size) for t in bench.tasks]
        for res in results:
            if res.scored != res.total:
                raise MmclError(
                    f"general {bench.name}/{res.task}: scored {res.scored} of {res.total}"
                )
            if predictions is not None and process_state().is_main_process:
                write_jsonl(predictions / bench.name / f"{res.task}.jsonl", res.rows)
        score, extra = bench.summarize(bench.tasks, results)
        out[bench.name] = {
            "score": round(score, 4),
            "extra": {k: round(v, 4) for k, v in extra.items()},
            "counts": {
                "scored": sum(r.scored for r in results),
                "total": sum(r.total for r in results),
            },
        }
    return out, time.perf_counter() - t0


def _retention(score: float | None, base: float) -> float | None:
    return None if score is None or base == 0 else round(score / base, 4)


def general_section(
    benches: list[GeneralBenchmark],
    evals: dict[str, dict],
    row_tags: list[str],
    settings: EvalSettings,
) -> dict[str, Any]:
    """results.json's `general`: per benchmark the base score, the score and retention after
    each step (None where the suites were not due), and the mean retention over benchmarks."""
    base = evals["zero_shot"]
    rows = [evals.get(tag) for tag in row_tags]
    out: dict[str, Any] = {}
    for b in benches:
        scores = [r[b.name]["score"] if r else None for r in rows]
        out[b.name] = {
            "metric": b.metric,
            "base": base[b.name]["score"],
            "scores": scores,
            "retention": [_retention(s, base[b.name]["score"]) for s in scores],
            "counts": base[b.name]["counts"],
            "extra": {
                "base": base[b.name]["extra"],
                "per_step": [r[b.name]["extra"] if r else None for r in rows],
            },
        }
    mean = []
    for k in range(len(rows)):
        kept = [v["retention"][k] for v in out.values() if v["retention"][k] is not None]
        mean.append(round(sum(kept) / len(kept), 4) if kept else None)
    return {
        "every": settings.general_every,
        "size": settings.general_size,
        "benchmarks": out,
        "retention": mean,
        "final_retention": mean[-1],
    }
