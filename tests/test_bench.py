"""A smoke test of `mmcl bench` at the smallest sizes (the real figures come from `mmcl bench`)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mmcl.bench import BenchPreset, matmul_gflops, run_bench
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
    task_counts=(1, 2),
    scaling_records=8,
)


def test_bench_writes_every_figure(tmp_path):
    res = run_bench(tmp_path, SMOKE, methods=["lora-ft", "no-such-method"])
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
    points = res["scaling"]["lora-ft"]["points"]
    assert [p["tasks"] for p in points] == [1, 2]
    assert all(p["peak_rss_mb"] > 0 and p["trainable_params"] > 0 for p in points)
    assert points[0]["total_params"] == points[1]["total_params"]  # one LoRA for every task
    assert "skipped" in res["scaling"]["no-such-method"]
    md = (tmp_path / "bench.md").read_text()
    assert "ratio mmcl / bare" in md and "GFLOP/s" in md and "no-such-method" in md


def test_matmul_throughput_is_measured_per_size():
    out = matmul_gflops(sizes=(64, 128), seconds=0.05)
    assert set(out["gflops_by_size"]) == {"64", "128"}
    assert out["peak_gflops"] == max(out["gflops_by_size"].values()) > 0


def test_unknown_bench_preset_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--preset", "huge", "--out", str(tmp_path)])
    assert isinstance(res.exception, MmclError) and "unknown bench preset 'huge'" in str(
        res.exception
    )
