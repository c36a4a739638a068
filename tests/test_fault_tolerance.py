"""A run killed anywhere (mid-epoch, mid-evaluation, during a checkpoint write, or by SIGKILL)
and resumed ends with the results of an uninterrupted run; corrupt checkpoints are detected
and the previous step's checkpoint is used."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

import mmcl.checkpoint
import mmcl.runner
from mmcl.config import load_config
from mmcl.errors import MmclError
from mmcl.models.base import Backbone
from mmcl.runner import Run


class Killed(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


def _cfg(micro_overrides):
    return load_config(None, {**micro_overrides, "method.name": "lora-ft"})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, micro_overrides):
    """An uninterrupted run, and the folder it wrote."""
    out = tmp_path_factory.mktemp("reference") / "run"
    return Run(_cfg(micro_overrides), out).execute(), out


def _same(res, ref):
    assert res["accuracy_matrix"] == ref["accuracy_matrix"]
    assert res["zero_shot"] == ref["zero_shot"]
    assert res["counts"] == ref["counts"]


def _kill_on_call(monkeypatch, owner, name, n, when=lambda *a, **k: True):
    """Make owner.name raise Killed on its n-th call (counting calls where `when` holds)."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        if when(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


# Each kill point: (object, attribute, n-th call, filter). Two tasks, 3 batches each; the
# evaluations are zero-shot (calls 1-2), after step 0 (3-4) and after step 1 (5-6); each
# checkpoint writes model then method tensors, then state.json, then latest.json.
KILL_POINTS = {
    "mid-epoch of the second task": (Backbone, "forward", 5, None),
    "mid-evaluation after the first task": (mmcl.runner, "evaluate_task", 4, None),
    "while writing step 0's method tensors": (mmcl.checkpoint, "save_tensors", 4, None),
    "between step 0's folder and its commit": (
        mmcl.checkpoint,
        "write_json",
        2,
        lambda path, obj: path.name == "latest.json",
    ),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_anywhere_then_resumed_gives_the_same_results(
    tmp_path, micro_overrides, reference, monkeypatch, point
):
    owner, name, n, when = KILL_POINTS[point]
    cfg = _cfg(micro_overrides)
    with monkeypatch.context() as m:
        _kill_on_call(m, owner, name, n, when or (lambda *a, **k: True))
        with pytest.raises(Killed):
            Run(cfg, tmp_path).execute()
    assert not (tmp_path / "results.json").exists()
    # Keeping every step is not a results setting: a resumed run may turn it on.
    keep = "all" if point == "mid-epoch of the second task" else "last"
    again = cfg.model_copy(update={"keep_checkpoints": keep})
    _same(Run(again, tmp_path).execute(resume=True), reference[0])
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step*"))
    assert kept == (["step0", "step1"] if keep == "last" else ["step-1", "step0", "step1"])


def _copy(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference[1], out)
    (out / "results.json").unlink()
    return out


def test_truncated_weights_fall_back_to_the_previous_step(
    tmp_path, micro_overrides, reference, caplog
):
    out = _copy(reference, tmp_path)
    weights = out / "checkpoints" / "step1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="mmcl.runner"):
        res = Run(_cfg(micro_overrides), out).execute(resume=True)
    assert any("corrupt or partial safetensors" in r.message for r in caplog.records)
    assert any(str(weights) in r.message for r in caplog.records)
    _same(res, reference[0])


def test_bad_state_json_falls_back_and_bad_latest_json_uses_newest_complete_step(
    tmp_path, micro_overrides, reference, caplog
):
    out = _copy(reference, tmp_path)
    (out / "checkpoints" / "step1" / "state.json").write_text('{"config": ')
    (out / "checkpoints" / "latest.json").write_text("not json")
    with caplog.at_level(logging.WARNING, logger="mmcl.runner"):
        res = Run(_cfg(micro_overrides), out).execute(resume=True)
    messages = " ".join(r.message for r in caplog.records)
    assert "latest.json is unreadable" in messages and "not valid JSON" in messages
    _same(res, reference[0])


def test_no_usable_checkpoint_is_a_clear_error(tmp_path, micro_overrides, reference):
    out = _copy(reference, tmp_path)
    for f in (out / "checkpoints").rglob("method.safetensors"):
        f.write_bytes(b"\x00" * 10)
    with pytest.raises(MmclError, match="no usable checkpoint.*method.safetensors"):
        Run(_cfg(micro_overrides), out).execute(resume=True)


def _nested(dotted: dict) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def test_sigkill_of_the_cli_then_resume(tmp_path, micro_overrides, reference):
    """A real `mmcl run` process killed with SIGKILL at a random moment after its first
    committed step, then `mmcl run --resume`."""
    config = tmp_path / "micro.yaml"
    config.write_text(yaml.safe_dump(_nested({**micro_overrides, "method.name": "lora-ft"})))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mmcl.cli", "run", "--config", str(config), "--out", str(out)]
    latest = out / "checkpoints" / "latest.json"
    # The micro run's last step can end within the random delay; then the kill came too late
    # to test anything, and it is tried again with a shorter delay.
    for longest in (0.2, 0.05, 0.0):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if json.loads(latest.read_text())["step"] == 0:  # the first task committed
                        break
                except (OSError, ValueError):
                    pass
                time.sleep(0.01)
            time.sleep(random.Random(os.getpid()).uniform(0, longest))
            proc.send_signal(signal.SIGKILL)
        finally:
            _, err = proc.communicate(timeout=60)
        if not (out / "results.json").exists():
            break
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not (out / "results.json").exists()
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _same(json.loads((out / "results.json").read_text()), reference[0])


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_end_when_their_parent_is_killed(tmp_path):
    """A `mmcl compare` killed with SIGKILL must not leave its workers running the cells handed
    to them, beside the command started again on the same folder."""
    script = (
        "import os, time\n"
        "from mmcl.io import worker_pool\n"
        "if __name__ == '__main__':\n"
        "    pool = worker_pool(1)\n"
        "    pid = pool.submit(os.getpid).result()\n"
        "    job = pool.submit(time.sleep, 120)  # a cell handed over when the parent dies\n"
        "    while not job.running():\n"
        "        time.sleep(0.01)\n"
        "    print(pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    (tmp_path / "parent.py").write_text(script)
    parent = subprocess.Popen(
        [sys.executable, str(tmp_path / "parent.py")], stdout=subprocess.PIPE, text=True
    )
    worker = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 15
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = _alive(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the pool's worker outlived its killed parent"
