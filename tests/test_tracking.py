"""Experiment tracking: a micro run logs to TensorBoard, and the event files read back."""

from __future__ import annotations

import itertools
import math
import struct
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.utils import is_wandb_available

from mmcl.config import load_config
from mmcl.data.synth import family_tasks
from mmcl.errors import MmclError
from mmcl.runner import Run
from mmcl.tracking import RunTracker, flat_config, resolve_trackers

pytest.importorskip("tensorboardX")


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files under `folder`: tag -> [(step, value)]."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):  # TFRecord: length (8), its crc (4), payload, payload crc (4)
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    return scalars


def test_tensorboard_holds_losses_and_one_accuracy_row_per_step(
    tmp_path, micro_overrides, killed_after_first_step, monkeypatch
):
    # Every event file opened in the same second, as on a fast machine: an event file's name
    # holds only that second, and a file of the resumed run must not overwrite the killed one's.
    import tensorboardX.event_file_writer as event_file_writer

    # Frozen at the real time: a writer thread that outlived its test would compare it with the
    # real clock once the patch is gone (a distant time overflowed its queue's timeout).
    frozen = time.time()
    monkeypatch.setattr(event_file_writer, "time", SimpleNamespace(time=lambda: frozen))
    cfg = load_config(None, {**micro_overrides, "method.name": "ewc", "track": ["tensorboard"]})
    with killed_after_first_step():
        Run(cfg, tmp_path / "run").execute()
    # The killed run closed its writer: no writer thread of it is left behind.
    assert not [
        t for t in threading.enumerate() if isinstance(t, event_file_writer._EventLoggerThread)
    ]
    # Resumed: the x-axis continues where the killed run's last step ended.
    res = Run(cfg, tmp_path / "run").execute(resume=True)
    scalars = read_scalars(tmp_path / "run" / "tensorboard")
    tasks, matrix = res["tasks"], res["accuracy_matrix"]

    # 48 samples a task times its train_scale, batch 16, 1 epoch: 3 batches a unit of scale,
    # one value each; the steps count on across tasks.
    assert tasks == ["ocr", "gui"]
    first, last = itertools.accumulate(3 * family_tasks("ability")[t].train_scale for t in tasks)
    losses = scalars["train/loss"]
    assert [s for s, _ in losses] == list(range(1, last + 1))
    assert all(math.isfinite(v) and v > 0 for _, v in losses)
    assert [s for s, _ in scalars["task/ocr/loss"]] == list(range(1, first + 1))
    assert [s for s, _ in scalars["task/gui/loss"]] == list(range(first + 1, last + 1))
    assert len(scalars["train/lr"]) == len(scalars["train/samples_per_s"]) == last
    # ewc's penalty is an extra term from its second task on; the total is answer + penalty.
    ewc = dict(scalars["train/ewc"])
    answer = dict(scalars["train/answer_loss"])
    assert sorted(ewc) == list(range(first + 1, last + 1))
    for step, total in losses:
        assert total == pytest.approx(answer[step] + ewc.get(step, 0.0), rel=1e-5)

    # After each step its accuracy row, at the batch count where that step ended.
    for i, task in enumerate(tasks):
        row = scalars[f"eval/{task}"]
        assert [s for s, _ in row] == [first, last]
        assert [v for _, v in row] == pytest.approx([matrix[0][i], matrix[1][i]])
        assert scalars[f"zero_shot/{task}"] == [(0, pytest.approx(res["zero_shot"][i]))]
    assert all(len(scalars[f"continual/{m}"]) == 2 for m in res["metrics"])
    final = {m: scalars[f"continual/{m}"][-1][1] for m in res["metrics"]}
    assert final == pytest.approx(res["metrics"], abs=1e-3)


def test_no_tracking_and_clear_errors(tmp_path, micro_overrides):
    cfg = load_config(None, {**micro_overrides, "method.name": "zero-shot", "track": []})
    Run(cfg, tmp_path / "off").execute()
    assert not (tmp_path / "off" / "tensorboard").exists()
    assert resolve_trackers(None) == ["tensorboard"]  # installed: the default
    with pytest.raises(MmclError, match="track"):
        load_config(None, {"track": ["neptune"]})
    if not is_wandb_available():
        with pytest.raises(MmclError, match="pip install wandb"):
            resolve_trackers(["wandb"])
    assert flat_config({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": 1,
        "a.c": "[1, 2]",
        "d": "null",
    }


def test_a_run_stopped_by_an_error_is_marked_failed():
    class Fake:
        def __init__(self, name: str):
            self.name, self.ended = name, None
            self.run = SimpleNamespace(finish=lambda exit_code=0: setattr(self, "ended", exit_code))

        def finish(self) -> None:
            self.ended = "finished"

    trackers = [Fake("wandb"), Fake("tensorboard")]
    with pytest.raises(KeyboardInterrupt), RunTracker(trackers, ["t"]):
        raise KeyboardInterrupt
    assert [t.ended for t in trackers] == [1, "finished"]  # W&B's crashed run is not "finished"
    trackers = [Fake("wandb")]
    with RunTracker(trackers, ["t"]):
        pass
    assert trackers[0].ended == "finished"


def test_each_task_warms_up_its_own_schedule(tmp_path, micro_overrides):
    # A fresh optimiser per task: its lr rises from 0 over the warmup, peaks, then decays.
    cfg = load_config(None, {**micro_overrides, "train.batch_size": 4, "track": ["tensorboard"]})
    Run(cfg, tmp_path / "run").execute()
    scalars = read_scalars(tmp_path / "run" / "tensorboard")
    lr = dict(scalars["train/lr"])
    peak = cfg.train.lr
    for task in cfg.tasks:
        rates = [lr[s] for s, _ in scalars[f"task/{task}/loss"]]
        warmup = int(cfg.train.warmup_ratio * len(rates))
        assert warmup >= 2, task
        assert rates[: warmup + 1] == pytest.approx([peak * i / warmup for i in range(warmup + 1)])
        assert all(a > b for a, b in itertools.pairwise(rates[warmup:])), task
