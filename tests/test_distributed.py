"""A micro stream under `torchrun --nproc_per_node 2` (gloo, CPU) against one process.

Tolerance: training with 2 processes splits each global batch in two and sums the gradients
in another order, so the trained weights agree with one process's to float32 rounding (checked
within 1e-4 absolute); evaluation shards whole batches, the same batches one process makes,
so the predictions, scores and metrics are required to be identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mmcl.config import load_config
from mmcl.models.base import Backbone
from mmcl.runner import Run
from tiny_hf import one_thread, save_tiny_llava, write_colour_stream  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

N_TEST = 5  # with eval batches of 2: 3 batches, so one process also makes a filler call

DRIVER = """
import json, sys
from pathlib import Path
from mmcl.config import load_config
from mmcl.io import end_processes, process_state
from mmcl.models.base import Backbone
from mmcl.runner import Run

calls, trained = [], []
generate, forward = Backbone.generate, Backbone.forward
def counted(self, batch, *args, **kwargs):
    calls.append(len(batch))
    return generate(self, batch, *args, **kwargs)
def seen(self, batch, *args, **kwargs):
    if batch.labels is not None:
        trained.append(len(batch))
    return forward(self, batch, *args, **kwargs)
Backbone.generate, Backbone.forward = counted, seen
out = Path(sys.argv[2])
Run(load_config(sys.argv[1]), out).execute()
rank = process_state().process_index
(out.parent / f"calls-rank{rank}.json").write_text(json.dumps([calls, trained]))
end_processes()
"""


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _predictions(folder: Path) -> dict[str, list[tuple[str, str]]]:
    return {
        str(p.relative_to(folder)): [
            (r["id"], r["prediction"]) for r in map(json.loads, p.read_text().splitlines())
        ]
        for p in sorted((folder / "predictions").rglob("*.jsonl"))
    }


def test_two_processes_match_one(tmp_path, monkeypatch):
    model = save_tiny_llava(tmp_path / "llava")
    stream = write_colour_stream(tmp_path / "data", ["first", "second"], 16, N_TEST)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"benchmark: {stream}\n"
        f"model: {{backbone: hf-native, path: {model}}}\n"
        "method: {name: lora-ft}\n"
        "train: {epochs: 2, batch_size: 8, lr: 0.01}\n"
        "eval: {batch_size: 2, max_new_tokens: 4}\n"
    )
    # One process, in this one (counting generate calls as the driver does).
    calls: list[int] = []
    generate = Backbone.generate

    def counted(self, batch, *args, **kwargs):
        calls.append(len(batch))
        return generate(self, batch, *args, **kwargs)

    monkeypatch.setattr(Backbone, "generate", counted)
    one = Run(load_config(config), tmp_path / "one" / "run").execute()
    monkeypatch.setattr(Backbone, "generate", generate)

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(driver), str(config), str(tmp_path / "two" / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out_one, out_two = tmp_path / "one" / "run", tmp_path / "two" / "run"
    two = json.loads((out_two / "results.json").read_text())

    # every sample scored exactly once, with the same predictions and metrics
    assert (
        two["counts"]
        == one["counts"]
        == {n: {"scored": N_TEST, "total": N_TEST} for n in two["tasks"]}
    )
    assert _predictions(out_two) == _predictions(out_one)
    assert any(row != one["zero_shot"] for row in one["accuracy_matrix"])  # training mattered
    for key in ("zero_shot", "accuracy_matrix", "metrics"):
        assert two[key] == one[key], key
    # training: the same weights up to float32 rounding
    for step in ("step0", "step1"):
        w1 = load_file(out_one / "checkpoints" / step / "model.safetensors")
        w2 = load_file(out_two / "checkpoints" / step / "model.safetensors")
        assert w1.keys() == w2.keys() and w1
        assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4
    per_rank = [json.loads((out_two.parent / f"calls-rank{r}.json").read_text()) for r in (0, 1)]
    # training was split: each process took half of every batch of 8, for 2 tasks x 2 epochs
    assert [trained for _, trained in per_rank] == [[4] * 8, [4] * 8]
    # evaluation was sharded: 3 batches per task, one process answers 2 (one of them a filler)
    evaluations = 3 * 2  # zero-shot + two steps, two tasks each
    assert len(calls) == 3 * evaluations
    assert [len(c) for c, _ in per_rank] == [2 * evaluations, 2 * evaluations]
    # only the first process wrote the run's files
    assert _files(out_two) == _files(out_one)
