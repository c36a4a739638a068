"""The continual loop: for each task, train -> evaluate every task -> checkpoint; and resume.

After each step the whole state needed to continue is written under `checkpoints/` (the
format: checkpoint.py). `--resume` continues after the last completed step; seeds are derived
from (seed, step), so a resumed run ends as an uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmcl import checkpoint
from mmcl.checkpoint import Checkpoint
from mmcl.config import ExperimentConfig, results_part
from mmcl.data.benchmarks import SynthBenchmark, Task, get_benchmark
from mmcl.data.real import RealBenchmark
from mmcl.data.tasks import TaskSpec, select
from mmcl.errors import MmclError
from mmcl.evaluate import TaskResult, evaluate_task
from mmcl.general import GeneralBenchmark, evaluate_general, general_section, is_due, load_general
from mmcl.io import (
    derive_seed,
    process_state,
    seed_everything,
    write_json,
    write_jsonl,
)
from mmcl.learn import learn_task
from mmcl.methods import make_method, method_options
from mmcl.methods.base import Method
from mmcl.models.base import Backbone
from mmcl.results import assemble_results
from mmcl.scoring.judge import judge_of
from mmcl.tracking import RunTracker, resolve_trackers
from mmcl.train import TrainSettings

ZERO_SHOT_STEP = -1  # the checkpoint "step" holding the base model's evaluation


def stream(cfg: ExperimentConfig) -> SynthBenchmark | RealBenchmark:
    """The configured benchmark, bound to its data root and per-task files."""
    files = {k: v.model_dump(exclude_none=True) for k, v in cfg.data.files.items()}
    return get_benchmark(cfg.benchmark, cfg.data.root, files)


def stream_specs(cfg: ExperimentConfig) -> list[TaskSpec]:
    """The configured tasks' specs in order, without loading their data."""
    return select(cfg.benchmark, stream(cfg).specs(), cfg.tasks)


def load_tasks(cfg: ExperimentConfig) -> list[Task]:
    return stream(cfg).load(cfg.seed, cfg.data.train_size, cfg.data.test_size, cfg.tasks)


def load_backbone(cfg: ExperimentConfig, specs: list[TaskSpec] | None = None) -> Backbone:
    """The configured model, for a stream of tasks `specs` (which modalities it needs)."""
    if cfg.model.backbone == "hf-native":
        from mmcl.models.hf_native import load_hf_native

        return load_hf_native(cfg.model)
    if cfg.model.backbone == "pretrained-parts":
        from mmcl.models.pretrained import load_pretrained_parts

        return load_pretrained_parts(cfg.model)
    if any(s.modality != "image" for s in specs or []):
        # Audio/video streams get the image base extended with its own encoders (cached apart).
        from mmcl.pretraining.media import media_backbone

        return media_backbone(cfg.model.preset, seed=cfg.model.base_seed)
    from mmcl.pretraining.base import pretrained_backbone

    return pretrained_backbone(cfg.model.preset, seed=cfg.model.base_seed)


def is_main_process() -> bool:
    """Under torchrun/accelerate every process runs the loop; only the first writes files."""
    return process_state().is_main_process


def _fresh_state(config: dict[str, Any]) -> dict[str, Any]:
    """What a run checkpoints, before its zero-shot evaluation."""
    return {
        "config": config,
        "zero_shot": None,
        "rows": [],
        "counts": {},
        "routing": [],
        "trained_params": [],
        "next_step": 0,
        "train_s": 0.0,
        "eval_s": 0.0,
        "train_samples": 0,
    }


class Run:
    """One experiment (benchmark x method x seed) writing into `out`."""

    def __init__(self, cfg: ExperimentConfig, out: Path):
        self.cfg, self.out = cfg, Path(out)
        self.ckpt = self.out / "checkpoints"

    # --- checkpoints ------------------------------------------------------------------------
    def _save(self, step: int, state: dict[str, Any], backbone: Backbone, method: Method) -> None:
        if is_main_process():
            weights = backbone.state_dict()
            trained = {k: weights[k] for k in state["trained_params"] if k in weights}
            keep_all = self.cfg.keep_checkpoints == "all"
            checkpoint.save(self.ckpt, step, state, trained, method.state_dict(), keep_all)

    def _find_checkpoint(self, step: int | None = None) -> Checkpoint | None:
        """The newest usable checkpoint (or step `step`'s), read in full before anything is
        applied; one made with another configuration is an error, not a fresh start."""
        found = checkpoint.find(self.ckpt) if step is None else checkpoint.at_step(self.ckpt, step)
        ours = results_part(self.cfg.model_dump(mode="json"))
        if found is not None and results_part(found.state.get("config")) != ours:
            raise MmclError(
                f"{found.folder}: the checkpoint was made with another configuration; "
                "resume with the same config, or use a new --out"
            )
        return found

    def _restore(self, ckpt: Checkpoint, backbone: Backbone, method: Method) -> dict[str, Any]:
        method.load_state_dict(ckpt.method_state)
        current = backbone.state_dict()
        current.update(ckpt.model)
        backbone.load_state_dict(current)
        return dict(ckpt.state)

    # --- the loop ---------------------------------------------------------------------------
    def execute(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        if not resume and (self.out / "checkpoints").exists():
            raise MmclError(
                f"{self.out} already holds a run; pass --resume to continue it, "
                "or choose another --out"
            )
        resolve_trackers(cfg.track)  # a tracker that is not installed fails before any work
        method_options(cfg.method.name, cfg.method.options())  # a typo fails before the loads
        with process_state().main_process_first():  # the first process fills the caches
            tasks = load_tasks(cfg)
            general = load_general(cfg.eval, cfg.seed)
            specs = [t.spec for t in tasks]
            backbone = load_backbone(cfg, specs)
        backbone.max_new_tokens = cfg.eval.max_new_tokens
        seed_everything(derive_seed(cfg.seed, "setup"))
        method = make_method(cfg.method.name, cfg.method.options(), backbone, specs, cfg.seed)
        settings = TrainSettings(
            **{**method.train_defaults, **cfg.train.model_dump(exclude_unset=True)}
        )
        found = self._find_checkpoint() if resume else None
        config = cfg.model_dump(mode="json")
        with RunTracker.open(cfg.track, self.out, config, [t.name for t in tasks]) as tracker:
            if found is None:
                state = _fresh_state(config)
                # The base model is evaluated before the method adds anything to it.
                state["zero_shot"], _, _ = self._evaluate(backbone, None, tasks, "zero_shot", state)
                self._general(backbone, None, general, "zero_shot", state)
                tracker.zero_shot(state["zero_shot"], state.get("general", {}).get("zero_shot"))
                method.setup()
                self._save(ZERO_SHOT_STEP, state, backbone, method)
            else:
                method.setup()
                state = self._restore(found, backbone, method)
                method.restore_tasks(tasks[: state["next_step"]])
            if not method.trains:
                state["rows"] = [state["zero_shot"]] * len(tasks)
            elif method.joint and state["next_step"] == 0:
                merged = Task(specs[0], [r for t in tasks for r in t.train], [])
                self._train_step(method, merged, 0, settings, state, tracker, joint=True)
                row, counts, routing = self._evaluate(backbone, method, tasks, "step0", state)
                self._general(backbone, method, general, "step0", state)
                state["rows"] = [row] * len(tasks)
                tracker.after_step(
                    len(tasks) - 1,
                    state,
                    routing,
                    method.report(),
                    state.get("general", {}).get("step0"),
                )
                state.update(counts=counts, next_step=len(tasks))
                self._save(0, state, backbone, method)
            else:
                for step in range(state["next_step"], len(tasks)):
                    self._train_step(method, tasks[step], step, settings, state, tracker)
                    row, counts, routing = self._evaluate(
                        backbone, method, tasks, f"step{step}", state
                    )
                    if is_due(step, len(tasks), cfg.eval.general_every):
                        self._general(backbone, method, general, f"step{step}", state)
                    state["rows"].append(row)
                    state["routing"].append(routing)
                    general_now = state.get("general", {}).get(f"step{step}")
                    tracker.after_step(step, state, routing, method.report(), general_now)
                    state.update(counts=counts, next_step=step + 1)
                    self._save(step, state, backbone, method)
            method.after_stream()
        results = assemble_results(cfg, tasks, method, state)
        if general:
            tags = [
                "zero_shot" if not method.trains else "step0" if method.joint else f"step{k}"
                for k in range(len(tasks))
            ]
            results["general"] = general_section(general, state["general"], tags, cfg.eval)
            results["timing"]["general_eval_s"] = round(state["general_s"], 2)
        if is_main_process():
            from mmcl.report import write_report

            write_json(self.out / "results.json", results)
            write_report(self.out, results)
        return results

    def _train_step(
        self,
        method: Method,
        task: Task,
        step: int,
        settings: TrainSettings,
        state: dict,
        tracker: RunTracker,
        joint: bool = False,
    ) -> None:
        stats = learn_task(
            method,
            task,
            step,
            settings,
            self.cfg.seed,
            desc=f"{method.name} step {step + 1}: {'all tasks' if joint else task.name}",
            log=tracker.train_logger("all" if joint else task.name, state),
        )
        state["trained_params"] = sorted(set(state["trained_params"]) | set(stats.trained))
        state["train_s"] += stats.seconds
        state["train_samples"] += stats.train.samples

    def _general(
        self,
        backbone: Backbone,
        method: Method | None,
        general: list[GeneralBenchmark],
        tag: str,
        state: dict,
    ) -> None:
        """Evaluate the general suites (never trained on) into state["general"][tag]."""
        if general:
            evals, seconds = evaluate_general(
                backbone,
                method,
                general,
                self.cfg.eval.batch_size,
                self.out / "predictions" / tag / "general",
            )
            state.setdefault("general", {})[tag] = evals
            state["general_s"] = state.get("general_s", 0.0) + seconds

    def _evaluate(
        self, backbone: Backbone, method: Method | None, tasks: list[Task], tag: str, state: dict
    ) -> tuple[list[float], dict, list[float] | None]:
        row, counts, routing, extras = [], {}, [], {}
        for task in tasks:
            res: TaskResult = evaluate_task(
                backbone, task, method, self.cfg.eval.batch_size, judge_of(self.cfg.eval)
            )
            if is_main_process():
                write_jsonl(self.out / "predictions" / tag / f"{task.name}.jsonl", res.rows)
            if res.scored != res.total:
                raise MmclError(f"{task.name}: scored {res.scored} of {res.total} samples")
            row.append(round(res.score, 4))
            counts[task.name] = {"scored": res.scored, "total": res.total}
            routing.append(res.routing_accuracy)
            state["eval_s"] += res.seconds
            if res.extra:
                extras[task.name] = {k: round(v, 4) for k, v in res.extra.items()}
        if extras:  # a scorer's figures beside the task score (e.g. grounding F1), per evaluation
            state.setdefault("task_extra", {})[tag] = extras
        return row, counts, (routing if any(r is not None for r in routing) else None)
