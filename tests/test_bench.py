"""A smoke test of `mmcl bench` at the smallest sizes (the real figures come from `mmcl bench`)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mmcl.bench import BenchPreset, matmul_gflops, run_bench
from mmcl.bench.scaling import growth
from mmcl.cli import app
from mmcl.errors import MmclError

SMOKE = BenchPreset(
    model="micro",
    train_records=16,
    batch_size=8,
    repeats=1,
    eval_records=8,
    eval_batch=8,
    new_tokens=3,
    adapters=2,
    steps=3,
    scaling_records=8,
)


def test_bench_writes_every_figure(tmp_path):
    res = run_bench(tmp_path, SMOKE, methods=["mr-lora", "no-such-method"])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved == json.loads(json.dumps(res))
    train = res["train"]
    assert train["mmcl_samples_per_s"] > 0 and train["bare_samples_per_s"] > 0
    assert train["ratio"] > 0 and train["fraction_of_matmul_peak"] > 0
    assert res["matmul"]["peak_gflops"] > 0
    ev = res["eval"]
    assert ev["kv_cache_samples_per_s"] > 0 and ev["no_cache_samples_per_s"] > 0
    # the no-cache loop decodes exactly what the KV-cached generate does
    assert ev["same_answers"] == "8/8"
    assert res["routing"]["time_ratio"] > 0
    mr = res["scaling"]["mr-lora"]
    pts = mr["points"]
    assert [p["step"] for p in pts] == [1, 2, 3]
    assert all(p["peak_rss_mb"] > 0 and p["trainable_params"] > 0 for p in pts)
    assert all(p["train_s"] > 0 and p["eval_s"] > 0 and p["after_task_s"] > 0 for p in pts)
    # mr-lora adds an expert per task: its parameters grow by one LoRA per step
    added = [pts[i + 1]["total_params"] - pts[i]["total_params"] for i in range(2)]
    assert added[0] == added[1] > 0
    assert mr["growth"]["total_params"]["slope_per_task"] == added[0]
    assert "skipped" in res["scaling"]["no-such-method"]
    md = (tmp_path / "bench.md").read_text()
    assert "ratio mmcl / bare" in md and "GFLOP/s" in md and "no-such-method" in md
    assert "Cost against the step index" in md and "slope s/task" in md


def test_growth_is_the_fitted_slope_and_ratio_from_the_second_step():
    """Step 1 (one-time costs) is left out; a cost rising by 0.5 s per task from 1 s at step 2
    has slope 0.5 and, at step 4, a ratio of 2 to step 2."""
    g = growth([9.0, 1.0, 1.5, 2.0])
    assert g == {"slope_per_task": 0.5, "fit_last_vs_2": 2.0, "last_vs_2": 2.0}
    flat = growth([5.0, 2.0, 2.2, 1.8, 2.0])
    assert abs(flat["slope_per_task"]) < 0.05 and flat["last_vs_2"] == 1.0


def test_matmul_throughput_is_measured_per_size():
    out = matmul_gflops(sizes=(64, 128), seconds=0.05)
    assert set(out["gflops_by_size"]) == {"64", "128"}
    assert out["peak_gflops"] == max(out["gflops_by_size"].values()) > 0


def test_unknown_bench_preset_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--preset", "huge", "--out", str(tmp_path)])
    assert isinstance(res.exception, MmclError) and "unknown bench preset 'huge'" in str(
        res.exception
    )
