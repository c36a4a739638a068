"""The seeds x orders grid of `mmcl compare`: orders, statistics, a killed grid continued on the
local pool, the aggregate recomputed from the cells' files, the same numbers on Ray, and a
failed cell that does not stop the others."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mmcl.cli import app
from mmcl.config import load_config
from mmcl.data.synth.micl import ORDER_1, ORDER_2
from mmcl.errors import MmclError
from mmcl.grid import run_methods, warm_caches
from mmcl.grid.cells import Cell, grid_orders
from mmcl.grid.stats import aggregate, summarize
from tiny_hf import write_colour_stream

runner = CliRunner()
TASKS = ["driving", "science"]  # micro scores are not all zero on these after one epoch
GRID = ["--methods", "lora-ft,zero-shot", "--seeds", "0,1", "--orders", "2"]
CELLS = [f"{m}/seed{s}-order{o}" for m in ("lora-ft", "zero-shot") for s in (0, 1) for o in (1, 2)]


@pytest.fixture(scope="module")
def grid_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("grid") / "micro.yaml"
    path.write_text(
        "benchmark: domain\nmodel: {preset: micro}\ntasks: [driving, science]\n"
        "data: {train_size: 48, test_size: 12}\ntrain: {epochs: 1, batch_size: 16}\n"
        "eval: {max_new_tokens: 6}\n"
    )
    return path


def _compare_args(config: Path, out: Path) -> list[str]:
    return ["compare", "-c", str(config), *GRID, "--reference", "zero-shot", "--out", str(out)]


def _results(out: Path) -> dict[str, dict]:
    return {c: json.loads((out / c / "results.json").read_text()) for c in CELLS}


# --- orders and statistics (no training) ---------------------------------------------------
def test_orders_published_permuted_and_explicit():
    base = list(ORDER_1)
    assert grid_orders("2", "micl-order1", base, given=False) == [list(ORDER_1), list(ORDER_2)]
    assert grid_orders("1", "micl-order2", list(ORDER_2), given=False) == [list(ORDER_2)]
    abl = ["ocr", "math", "perception", "gui"]
    orders = grid_orders("5", "ability", abl, given=False)
    assert orders[0] == abl and len({tuple(o) for o in orders}) == 5
    assert all(sorted(o) == sorted(abl) for o in orders)
    assert grid_orders("5", "ability", abl, given=False) == orders  # seeded
    # --tasks gave the order: no published order is put before it
    assert grid_orders("1", "micl-order1", list(ORDER_2), given=True) == [list(ORDER_2)]
    assert grid_orders("ocr,gui;gui,ocr", "ability", ["ocr", "gui"], given=True) == [
        ["ocr", "gui"],
        ["gui", "ocr"],
    ]
    with pytest.raises(MmclError, match="order 2 .* not a permutation"):
        grid_orders("ocr,gui;gui,math", "ability", ["ocr", "gui"], given=True)
    with pytest.raises(MmclError, match="have only 2"):
        grid_orders("3", "ability", ["ocr", "gui"], given=True)


def test_summary_and_bootstrap_interval():
    s = summarize([10.0, 20.0, 30.0, 40.0])
    assert s["n"] == 4 and s["mean"] == 25.0
    assert s["std"] == pytest.approx(statistics.stdev([10, 20, 30, 40]))
    lo, hi = s["ci95"]
    assert 10.0 <= lo < 25.0 < hi <= 40.0
    assert summarize([7.0]) == {"n": 1, "mean": 7.0, "std": 0.0, "ci95": [7.0, 7.0]}


def _fake(method: str, seed: int, tasks: list[str], scores: dict[str, tuple[float, float]]):
    """A results dict whose task t scores scores[t] = (right after learning, final)."""
    from mmcl.metrics import continual_metrics

    n = len(tasks)
    a = [[0.0] * n for _ in range(n)]
    for i, t in enumerate(tasks):
        a[i][i] = scores[t][0]
        a[-1][i] = scores[t][1]
    zero = [0.0] * n
    return {
        "method": method,
        "seed": seed,
        "tasks": tasks,
        "accuracy_matrix": a,
        "zero_shot": zero,
        "metrics": continual_metrics(a, zero),
        "timing": {"train_s": 1.0},
    }


def test_aggregate_aligns_orders_by_name_and_pairs_cells():
    ab, ba = ["a", "b"], ["b", "a"]
    results = [
        _fake("ref", 0, ab, {"a": (80, 40), "b": (90, 90)}),
        _fake("ref", 0, ba, {"a": (70, 70), "b": (60, 20)}),
        _fake("ref", 1, ab, {"a": (80, 50), "b": (90, 90)}),
        _fake("new", 0, ab, {"a": (80, 60), "b": (90, 90)}),
        _fake("new", 0, ba, {"a": (70, 70), "b": (60, 50)}),
        _fake("new", 1, ab, {"a": (80, 72), "b": (90, 90)}),
    ]
    agg = aggregate(results, ab, reference="ref")
    ref = agg["methods"]["ref"]
    assert ref["n"] == 3
    assert ref["tasks"]["a"]["final"]["mean"] == pytest.approx(160 / 3)  # 40, 70 (order b,a), 50
    assert ref["tasks"]["b"]["learned"]["mean"] == 80.0
    # row "after a": in order b,a that is the last row
    assert ref["mean_matrix"][0] == pytest.approx([230 / 3, 20 / 3], abs=1e-4)  # rounded
    paired = agg["paired"]["new"]
    assert paired["n"] == 3 and paired["metrics"]["mfn"]["wins"] == 3
    assert paired["metrics"]["mfn"]["mean"] == pytest.approx(12.0)  # +10, +15, +11
    assert paired["metrics"]["mfn"]["established"]  # interval within [10, 15]
    assert paired["metrics"]["forgetting"]["wins"] == 3  # lower forgetting wins
    assert paired["metrics"]["mft"]["established"] is False  # all differences 0
    two = aggregate(results[:2] + results[3:5], ab, reference="ref")["paired"]["new"]
    assert two["metrics"]["mfn"]["wins"] == 2 and not two["metrics"]["mfn"]["established"]
    with pytest.raises(MmclError, match="not an order"):
        aggregate([*results, _fake("x", 1, ["a", "c"], {"a": (1, 1), "c": (1, 1)})], ab)


def test_a_cell_made_with_other_recording_settings_is_the_same_run(tmp_path):
    """Tracking and the checkpoints kept change no result: a cell written before
    `keep_checkpoints` existed, or with another tracker, is reused; another seed is refused."""
    config = load_config(None, {"track": [], "keep_checkpoints": "all"}).model_dump(mode="json")
    older = {k: v for k, v in config.items() if k != "keep_checkpoints"} | {"track": ["wandb"]}
    (tmp_path / "cell.json").write_text(json.dumps({"config": older}))
    Cell("lora-ft", 0, 0, tmp_path, config).claim()
    with pytest.raises(MmclError, match="another configuration"):
        Cell("lora-ft", 1, 0, tmp_path, config | {"seed": 1}).claim()


# --- the grid on the local pool, killed and run again ---------------------------------------
@pytest.fixture(scope="module")
def killed_grid(grid_config, tmp_path_factory):
    """Start the grid in its own process on one worker, kill it (and its worker) while a cell
    is half-way, then run the same command again to the end."""
    out = tmp_path_factory.mktemp("pool") / "grid"
    cmd = [sys.executable, "-m", "mmcl.cli", *_compare_args(grid_config, out), "--workers", "1"]
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def state() -> tuple[list[str], list[str]]:
        """Cells finished, and cells started (a checkpoint) but not finished."""
        done = [c for c in CELLS if (out / c / "results.json").exists()]
        started = [c for c in CELLS if (out / c / "checkpoints" / "latest.json").exists()]
        return done, [c for c in started if c not in done]

    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done, started = state()
            if len(done) >= 2 and started:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done, started = state()  # what the kill left
    stamps = {c: (out / c / "results.json").stat().st_mtime_ns for c in done}
    res = runner.invoke(app, [*_compare_args(grid_config, out), "--workers", "2"])
    assert res.exit_code == 0, res.output
    return out, done, started, stamps, res.output


def test_killed_grid_runs_only_the_missing_cells(killed_grid, grid_config):
    out, done, started, stamps, output = killed_grid
    assert 2 <= len(done) < len(CELLS) and started
    assert f"{len(done)} finished, {len(CELLS) - len(done)} to run" in output
    for c in done:  # kept as they were
        assert (out / c / "results.json").stat().st_mtime_ns == stamps[c]
    for c in CELLS:
        assert (out / c / "results.json").exists() and (out / c / "log.txt").exists()
    again = runner.invoke(app, [*_compare_args(grid_config, out), "--preset", "tiny"])
    assert again.exit_code != 0  # another configuration for the same folders is refused
    assert "another configuration" in str(again.exception)


def test_aggregate_recomputed_from_the_cells_files(killed_grid):
    out = killed_grid[0]
    cmp = json.loads((out / "comparison.json").read_text())
    cells = _results(out)
    assert cmp["orders"] == [TASKS, TASKS[::-1]] and cmp["seeds"] == [0, 1]
    for method in ("lora-ft", "zero-shot"):
        mine = [r for c, r in cells.items() if c.startswith(method + "/")]
        got = cmp["methods"][method]
        assert got["n"] == 4
        for key in ("mft", "mfn", "maa", "bwt", "fwt", "forgetting"):
            values = [r["metrics"][key] for r in mine]
            assert got["metrics"][key]["mean"] == pytest.approx(statistics.mean(values))
            assert got["metrics"][key]["std"] == pytest.approx(statistics.stdev(values))
            # the bootstrap as documented: 10,000 resamples of the 4 cells, seed 0
            rng = np.random.default_rng(0)
            boot = np.array(values)[rng.integers(0, 4, size=(10_000, 4))].mean(axis=1)
            assert got["metrics"][key]["ci95"] == pytest.approx(
                np.quantile(boot, [0.025, 0.975]).tolist()
            )
        for task in TASKS:
            finals = [r["accuracy_matrix"][-1][r["tasks"].index(task)] for r in mine]
            assert got["tasks"][task]["final"]["mean"] == pytest.approx(statistics.mean(finals))
    diffs = [
        cells[f"lora-ft/seed{s}-order{o}"]["metrics"]["mfn"]
        - cells[f"zero-shot/seed{s}-order{o}"]["metrics"]["mfn"]
        for s in (0, 1)
        for o in (1, 2)
    ]
    paired = cmp["paired"]["lora-ft"]["metrics"]["mfn"]
    assert paired["mean"] == pytest.approx(statistics.mean(diffs))
    assert paired["wins"] == sum(d > 0 for d in diffs)
    assert any(cmp["methods"]["lora-ft"]["metrics"][k]["std"] > 0 for k in ("mfn", "bwt"))
    md = (out / "comparison.md").read_text()
    assert "± " in md and "driving -> science" in md and "science -> driving" in md
    html = (out / "comparison.html").read_text()
    assert "data:image/png;base64," in html and "Paired differences" in html
    assert (out / "comparison.png").stat().st_size > 0


def test_ray_gives_the_same_numbers(killed_grid, grid_config, tmp_path):
    ray = pytest.importorskip("ray")
    # address="local": a new instance of the test's own, even beside a user's running cluster
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20)
    try:
        address = ray.get_runtime_context().gcs_address
        out = tmp_path / "ray"
        cmd = [
            sys.executable,
            "-m",
            "mmcl.cli",
            *_compare_args(grid_config, out),
            "--executor",
            "ray",
            "--address",
            address,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        # A driver without the cluster's auth token: Ray's reason, in one line, not a traceback.
        cmd[cmd.index(str(out))] = str(tmp_path / "no-token")
        # One connection attempt: Ray's driver retries a refused one once a second for ~20 s.
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_gcs_server_port_wait_time_s": "1"}
        refused = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    finally:
        ray.shutdown()
    said = " ".join(refused.stderr.split())  # the console wraps long lines
    assert refused.returncode == 2 and "Traceback" not in said, said
    assert f"--address {address}: Failed to connect" in said and "AuthenticationError" in said
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The pool's grid was killed and continued, this one ran straight through: equal cells also
    # show that a continued cell ends as an uninterrupted one.
    on_pool, on_ray = _results(killed_grid[0]), _results(out)
    for c in CELLS:
        for key in ("accuracy_matrix", "zero_shot", "metrics", "counts"):
            assert on_ray[c][key] == on_pool[c][key], (c, key)
    pool_cmp = json.loads((killed_grid[0] / "comparison.json").read_text())
    ray_cmp = json.loads((out / "comparison.json").read_text())
    for m, summary in ray_cmp["methods"].items():  # all but the time the cells took
        assert {**summary, "train_s": None} == {**pool_cmp["methods"][m], "train_s": None}
    assert ray_cmp["paired"] == pool_cmp["paired"]


def test_a_failed_cell_is_reported_and_retried(grid_config, tmp_path):
    out = tmp_path / "grid"
    args = ["compare", "-c", str(grid_config), "--methods", "zero-shot", "--seeds", "0,1"]
    args += ["--out", str(out), "--workers", "1"]  # the first cell fails, the second runs after
    blocker = out / "zero-shot" / "seed0-order1" / "predictions"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the run wants a folder")
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    assert "zero-shot seed 0 order 1 FAILED" in res.output
    assert (out / "zero-shot" / "seed1-order1" / "results.json").exists()  # the other ran
    log = (out / "zero-shot" / "seed0-order1" / "log.txt").read_text()
    assert "Traceback" in log
    assert "Failed cells" in (out / "comparison.md").read_text()
    blocker.unlink()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "1 finished, 1 to run" in res.output
    assert (out / "zero-shot" / "seed0-order1" / "results.json").exists()


def test_the_reference_may_finish_last(grid_config, tmp_path):
    """Cells finish in any order (Ray's): the comparison written while others run leaves out
    the paired differences until the reference has a cell, then has them."""
    out = tmp_path / "grid"
    args = ["compare", "-c", str(grid_config), "--methods", "lora-ft,zero-shot", "--seeds", "0"]
    args += ["--orders", "1", "--reference", "zero-shot", "--out", str(out), "--workers", "1"]
    res = runner.invoke(app, args)  # one worker: lora-ft's cell finishes first
    assert res.exit_code == 0, res.output
    assert res.output.index("[1/2] lora-ft") < res.output.index("[2/2] zero-shot")
    assert "Paired differences against zero-shot" in (out / "comparison.md").read_text()


def test_a_grid_being_run_is_not_run_twice(grid_config, tmp_path):
    import fcntl

    out = tmp_path / "grid"
    out.mkdir()
    with open(out / "grid.lock", "w") as held:  # as a running `mmcl compare` holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        res = runner.invoke(app, _compare_args(grid_config, out))
    assert res.exit_code != 0 and "being run by another" in str(res.exception)
    assert not (out / "lora-ft").exists()


def test_a_setting_one_method_lacks_stops_the_grid_before_any_cell(grid_config, tmp_path):
    """The config's `method` settings go to every method: one that another method does not
    take fails at once, naming both, not in that method's cells after the others trained."""
    config = tmp_path / "unifier.yaml"
    config.write_text(grid_config.read_text() + "method: {name: unifier, vcc: false}\n")
    out = tmp_path / "grid"
    res = runner.invoke(
        app, ["compare", "-c", str(config), "--methods", "lora-ft,unifier", "--out", str(out)]
    )
    assert res.exit_code != 0
    assert isinstance(res.exception, MmclError)
    assert "--methods lora-ft" in str(res.exception) and "vcc" in str(res.exception)
    assert not out.exists()


def test_a_bad_data_file_stops_the_grid_before_any_base_is_built(tmp_path, monkeypatch):
    """Generated streams render while the bases train; a user's files are read before, so a
    bad one is reported at once, not after minutes of base pretraining."""
    stream = write_colour_stream(tmp_path, ["a", "b"], n_train=4, n_test=2)
    (tmp_path / "b" / "train.json").write_text("[{")

    def no_base(*args):
        raise AssertionError("a base was built before the data was read")

    monkeypatch.setattr("mmcl.runner.load_backbone", no_base)
    cfg = load_config(None, {"benchmark": str(stream), "model.preset": "micro"})
    cell = Cell("lora-ft", 0, 0, tmp_path / "out", cfg.model_dump(mode="json"))
    with pytest.raises(MmclError, match="b/train.json"):
        warm_caches([cell])


def test_the_demo_runner_runs_each_method_once_side_by_side(micro_overrides, tmp_path):
    """`mmcl demo`'s runner: every method on the same stream and seed into out/<method>/, then
    one comparison; run again, the finished methods are kept and nothing runs."""
    methods, lines = ["zero-shot", "lora-ft"], []
    text = run_methods(methods, tmp_path, micro_overrides, say=lines.append)
    assert lines[0].startswith("running 2 method(s)")
    assert sorted(line.split(":")[0] for line in lines[1:]) == ["lora-ft", "zero-shot"]
    assert "| zero-shot |" in text and "| lora-ft |" in text
    assert {p.name for p in tmp_path.iterdir()} >= {"zero-shot", "lora-ft", "comparison.md"}
    lines.clear()
    assert run_methods(methods, tmp_path, micro_overrides, say=lines.append) == text
    assert lines == []
