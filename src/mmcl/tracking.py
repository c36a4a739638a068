"""Experiment tracking through accelerate's trackers (TensorBoard, Weights & Biases, MLflow).

`track:` in a config names the trackers; by default TensorBoard when it is installed
(offline, into `RUN_DIR/tensorboard/`, an event file per step), `[]` turns tracking off. Only
the first process logs.

Every value shares one x-axis, the run's training batch count (kept in the checkpoint state,
so a resumed run continues it; wandb drops values logged at an earlier step than its last):

- per training batch: `train/loss` (what is optimised), `train/answer_loss`, one
  `train/<term>` per extra loss term of the method, `train/lr`, `train/samples_per_s`, and
  `task/<task>/loss` (the same loss, one curve per task);
- before training: `zero_shot/<task>`;
- after each step k: `eval/<task>` (the accuracy row A[k]), `eval/mean_seen`, `eval/step`,
  `continual/<metric>` (MFT, MFN, MAA, BWT, FWT, forgetting over the tasks seen so far) and,
  for routed methods, `routing/<task>` (routing accuracy, %) and `routing/fallbacks`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker
from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

from mmcl.errors import MmclError
from mmcl.io import process_state
from mmcl.metrics import continual_metrics

_AVAILABLE = {
    "tensorboard": (is_tensorboard_available, "tensorboardX"),
    "wandb": (is_wandb_available, "wandb"),
    "mlflow": (is_mlflow_available, "mlflow"),
}


def resolve_trackers(track: list[str] | None) -> list[str]:
    """The trackers to use: as named, or by default TensorBoard when it is installed."""
    if track is None:
        return ["tensorboard"] if is_tensorboard_available() else []
    for name in track:
        available, package = _AVAILABLE[name]
        if not available():
            raise MmclError(f"track: {name} needs the {package} package (pip install {package})")
    return list(dict.fromkeys(track))


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """A nested config as dotted keys with scalar values (what trackers take as run config)."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, str | int | float | bool):
            out[name] = value
        else:  # None, lists, empty mappings
            out[name] = json.dumps(value)
    return out


def _fresh_suffix(folder: Path) -> str:
    """A suffix that names a new TensorBoard event file apart from those already in `folder`.

    An event file's name holds only the second it was opened in, so a resumed run (or the
    next step) opening one in the same second as an earlier file would overwrite it."""
    return f".{len(list(folder.glob('events.out.tfevents.*'))):04d}"


def _make(name: str, out: Path, run_name: str) -> GeneralTracker:
    if name == "tensorboard":
        from accelerate.tracking import TensorBoardTracker

        return TensorBoardTracker(
            "tensorboard", out, filename_suffix=_fresh_suffix(out / "tensorboard")
        )
    if name == "wandb":
        from accelerate.tracking import WandBTracker

        return WandBTracker("mmcl", name=run_name, dir=str(out))
    from accelerate.tracking import MLflowTracker

    return MLflowTracker("mmcl", run_name=run_name)


class RunTracker:
    """The trackers of one run; every call is a no-op when there are none or on other processes
    than the first."""

    def __init__(self, trackers: list[GeneralTracker], tasks: list[str]):
        self.trackers = trackers
        self.tasks = tasks

    @classmethod
    def open(
        cls, track: list[str] | None, out: Path, config: dict[str, Any], tasks: list[str]
    ) -> RunTracker:
        """Start the configured trackers (on the first process only) and store the config."""
        names = resolve_trackers(track)
        if not names or not process_state().is_main_process:
            return cls([], tasks)
        run_name = f"{config.get('benchmark')}-{config.get('method', {}).get('name')}-{out.name}"
        trackers = [_make(n, Path(out), run_name) for n in names]
        values = flat_config(config)
        for t in trackers:
            t.start()
            t.store_init_configuration(values)
        return cls(trackers, tasks)

    def log(self, values: dict[str, float], step: int) -> None:
        for t in self.trackers:
            t.log(values, step=step)

    def train_logger(self, task: str, state: dict[str, Any]) -> Callable[[dict[str, float]], None]:
        """What `train` calls after every batch; counts the run's batches in `state`."""

        def log(values: dict[str, float]) -> None:
            state["track_step"] = state.get("track_step", 0) + 1
            if self.trackers:
                scalars = {f"train/{k}": v for k, v in values.items()}
                self.log({**scalars, f"task/{task}/loss": values["loss"]}, state["track_step"])

        return log

    def zero_shot(self, row: list[float], general: dict[str, dict] | None = None) -> None:
        """The base model's row and, when general suites run, their base scores."""
        values = {f"zero_shot/{n}": v for n, v in zip(self.tasks, row, strict=True)}
        values.update({f"general/{n}": e["score"] for n, e in (general or {}).items()})
        self.log(values, 0)

    def after_step(
        self,
        k: int,
        state: dict[str, Any],
        routing: list[float | None] | None = None,
        report: dict[str, Any] | None = None,
        general: dict[str, dict] | None = None,
    ) -> None:
        """The accuracy row of step k, the continual metrics over the tasks seen so far, for
        routed methods the routing accuracy and fallbacks (from the method's `report`) and,
        when the general suites ran after this step, their scores and retention."""
        if not self.trackers:
            return
        row, seen = state["rows"][k], k + 1
        rows = [r[:seen] for r in state["rows"][:seen]]
        values = {f"eval/{n}": v for n, v in zip(self.tasks, row, strict=True)}
        values["eval/mean_seen"] = sum(row[:seen]) / seen
        values["eval/step"] = k
        metrics = continual_metrics(rows, state["zero_shot"][:seen])
        values.update({f"continual/{m}": v for m, v in metrics.items()})
        if routing:
            for n, acc in zip(self.tasks, routing, strict=True):
                if acc is not None:
                    values[f"routing/{n}"] = 100 * acc
            fallbacks = (report or {}).get("routing", {}).get("fallbacks")
            if fallbacks is not None:
                values["routing/fallbacks"] = fallbacks
        base = state.get("general", {}).get("zero_shot", {})
        for name, e in (general or {}).items():
            values[f"general/{name}"] = e["score"]
            if base.get(name, {}).get("score"):
                values[f"general/{name}/retention"] = e["score"] / base[name]["score"]
        self.log(values, state.get("track_step", 0))
        for t in self.trackers:
            if t.name == "tensorboard":
                # Its writer writes from a queue and syncs every 2 minutes; closing it makes
                # the step's values durable before the checkpoint commits the step (a killed
                # run would lose them otherwise). The next step writes a new event file.
                t.writer.close()
                t.init_kwargs["filename_suffix"] = _fresh_suffix(Path(t.logging_dir))
                t.start()

    def finish(self, failed: bool = False) -> None:
        """End every tracker. A run stopped by an error (or Ctrl-C) is marked failed where the
        tracker has such a status, so it does not read as a finished run."""
        for t in self.trackers:
            if failed and t.name == "wandb":
                t.run.finish(exit_code=1)
            elif failed and t.name == "mlflow":
                import mlflow

                mlflow.end_run(status="FAILED")
            else:
                t.finish()

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        # Also on an error: TensorBoard's writer thread would otherwise outlive the run.
        self.finish(failed=kind is not None)
