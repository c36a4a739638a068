"""A micro stream under 2 processes (gloo, CPU) against one process: DDP (`torchrun
--nproc_per_node 2`), FSDP2 and DeepSpeed ZeRO-2 (`accelerate launch` with the configs in
configs/accelerate; DeepSpeed only where it is installed).

Tolerance: training with 2 processes splits each global batch in two and sums the gradients
in another order, so the trained weights agree with one process's to float32 rounding (checked
within 1e-3 absolute at lr 0.01); evaluation shards whole batches, the same batches one process makes,
so the predictions, scores and metrics are required to be identical.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

from mmcl.config import load_config
from mmcl.models.base import Backbone
from mmcl.runner import Run
from test_tracking import read_scalars
from tiny_hf import one_thread, save_tiny_llava, write_colour_stream  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

N_TEST = 5  # with eval batches of 2: 3 batches, so one process also makes a filler call
ACCELERATE_CONFIGS = Path(__file__).parents[1] / "configs" / "accelerate"
FSDP_MODEL = "FSDPPeftModel"  # fully_shard gives the sharded module class its name

DRIVER = """
import json, sys
from pathlib import Path
from mmcl.config import load_config
from mmcl.io import end_processes, process_state
from mmcl.models.base import Backbone
from mmcl.runner import Run

calls, trained, models = [], [], set()
generate, forward = Backbone.generate, Backbone.forward
def counted(self, batch, *args, **kwargs):
    calls.append(len(batch))
    return generate(self, batch, *args, **kwargs)
def seen(self, batch, *args, **kwargs):
    if batch.labels is not None:
        trained.append(len(batch))
        models.add(type(self.model).__name__)  # the model that trains: DDP, FSDP...
    return forward(self, batch, *args, **kwargs)
Backbone.generate, Backbone.forward = counted, seen
out = Path(sys.argv[2])
Run(load_config(sys.argv[1]), out).execute(resume="--resume" in sys.argv)
rank = process_state().process_index
(out.parent / f"calls-rank{rank}.json").write_text(json.dumps([calls, trained, sorted(models)]))
end_processes()
"""


def _files(folder: Path) -> set[str]:
    """A run's files but its TensorBoard logs (whose names hold the time)."""
    names = (str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return {n for n in names if not n.startswith("tensorboard/")}


def _predictions(folder: Path) -> dict[str, list[tuple[str, str]]]:
    return {
        str(p.relative_to(folder)): [
            (r["id"], r["prediction"]) for r in map(json.loads, p.read_text().splitlines())
        ]
        for p in sorted((folder / "predictions").rglob("*.jsonl"))
    }


def _run(cmd: list[str], *args: str | Path, env: dict | None = None) -> None:
    """Run a launcher command (one thread per process) and check that it succeeded."""
    proc = subprocess.run(
        [*cmd, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _launch(cmd: list[str], *args: str | Path, env: dict | None = None) -> list[list]:
    """Run the driver under a launcher; return each process's [generate calls, train batch
    sizes, class names of the model that trained]."""
    _run(cmd, *args, env=env)
    out = Path(args[2])
    return [json.loads((out.parent / f"calls-rank{r}.json").read_text()) for r in (0, 1)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _accelerate_launch(config: str) -> list[str]:
    """`accelerate launch` with a config of configs/accelerate, for 2 CPU processes."""
    return [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        *("--config_file", str(ACCELERATE_CONFIGS / config), "--num_processes", "2"),
        *("--mixed_precision", "no", "--main_process_port", str(_free_port())),
    ]


@pytest.fixture(scope="module")
def single(tmp_path_factory, one_thread):  # noqa: F811 (one thread first)
    """The micro stream's model, data and config, and its run in one process (counting
    generate calls as the driver does)."""
    tmp = tmp_path_factory.mktemp("distributed")
    model = save_tiny_llava(tmp / "llava")
    stream = write_colour_stream(tmp / "data", ["first", "second"], 16, N_TEST)
    config = tmp / "config.yaml"
    config.write_text(
        f"benchmark: {stream}\n"
        f"model: {{backbone: hf-native, path: {model}}}\n"
        "method: {name: lora-ft}\n"
        "train: {epochs: 2, batch_size: 8, lr: 0.01}\n"
        "eval: {batch_size: 2, max_new_tokens: 4}\n"
    )
    (tmp / "driver.py").write_text(DRIVER)
    calls: list[int] = []
    generate = Backbone.generate

    def counted(self, batch, *args, **kwargs):
        calls.append(len(batch))
        return generate(self, batch, *args, **kwargs)

    Backbone.generate = counted
    try:
        results = Run(load_config(config), tmp / "one" / "run").execute()
    finally:
        Backbone.generate = generate
    return SimpleNamespace(
        tmp=tmp,
        config=config,
        driver=tmp / "driver.py",
        out=tmp / "one" / "run",
        calls=calls,
        results=results,
    )


def _matches_one(single: SimpleNamespace, out_two: Path) -> None:
    """The 2-process run in `out_two` scored every sample once, with the predictions and
    metrics of one process, and trained the same weights up to float32 rounding."""
    one, out_one = single.results, single.out
    two = json.loads((out_two / "results.json").read_text())
    assert (
        two["counts"]
        == one["counts"]
        == {n: {"scored": N_TEST, "total": N_TEST} for n in two["tasks"]}
    )
    assert _predictions(out_two) == _predictions(out_one)
    assert any(row != one["zero_shot"] for row in one["accuracy_matrix"])  # training mattered
    for key in ("zero_shot", "accuracy_matrix", "metrics"):
        assert two[key] == one[key], key
    for step in ("step0", "step1"):
        w1 = load_file(out_one / "checkpoints" / step / "model.safetensors")
        w2 = load_file(out_two / "checkpoints" / step / "model.safetensors")
        assert w1.keys() == w2.keys() and w1
        # Adam moves a weight by about lr (0.01) whatever its gradient's size, so a sum of
        # gradients that rounds apart in the two runs moves it apart by more than float32's
        # epsilon: a tenth of lr bounds it (measured up to 3.6e-4).
        assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-3
    # only the first process wrote the run's files
    assert _files(out_two) == _files(out_one)


def test_two_processes_match_one(single):
    out_two = single.tmp / "two" / "run"
    per_rank = _launch(TORCHRUN, single.driver, single.config, out_two)
    _matches_one(single, out_two)
    # only the first process logged: the same tags at the same steps as one process
    steps = [
        {tag: [s for s, _ in v] for tag, v in read_scalars(out / "tensorboard").items()}
        for out in (out_two, single.out)
    ]
    assert steps[0] == steps[1] and steps[0]["train/loss"]
    assert [kind for _, _, kind in per_rank] == [["DistributedDataParallel"]] * 2
    # training was split: each process took half of every batch of 8, for 2 tasks x 2 epochs
    assert [trained for _, trained, _ in per_rank] == [[4] * 8, [4] * 8]
    # evaluation was sharded: 3 batches per task, one process answers 2 (one of them a filler)
    evaluations = 3 * 2  # zero-shot + two steps, two tasks each
    assert len(single.calls) == 3 * evaluations
    assert [len(c) for c, _, _ in per_rank] == [2 * evaluations, 2 * evaluations]


def test_fsdp_matches_one_and_resumes(single):
    """FSDP2 through accelerate with the shipped config (2 processes, no mixed precision on a
    CPU): the model is sharded while it trains, and whole again for evaluation and the
    checkpoints; a run resumed from the first task's checkpoint ends as the whole run."""
    out = single.tmp / "fsdp" / "run"
    per_rank = _launch(_accelerate_launch("fsdp.yaml"), single.driver, single.config, out)
    assert [kind for _, _, kind in per_rank] == [[FSDP_MODEL]] * 2
    assert [trained for _, trained, _ in per_rank] == [[4] * 8, [4] * 8]
    _matches_one(single, out)

    # Resume after the first task (the second one's step and results never written), this
    # time under torchrun with accelerate's FSDP variables.
    resumed = single.tmp / "fsdp-resumed" / "run"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step1")
    (resumed / "checkpoints" / "latest.json").write_text('{"step": 0}')
    (resumed / "results.json").unlink()
    shutil.rmtree(resumed / "predictions" / "step1")
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
    per_rank = _launch(TORCHRUN, single.driver, single.config, resumed, "--resume", env=env)
    assert [kind for _, _, kind in per_rank] == [[FSDP_MODEL]] * 2
    assert [trained for _, trained, _ in per_rank] == [[4] * 4, [4] * 4]  # the second task only
    _matches_one(single, resumed)


def test_fsdp_trains_unifier_as_one_process(single):
    """UNIFIER's vision branches run from hooks on the vision FFNs; under FSDP the sharded copy
    of the model runs its own copies of them, and the VCC loss reads those."""
    config = single.tmp / "unifier.yaml"
    config.write_text(single.config.read_text().replace("name: lora-ft", "name: unifier"))
    out_one = single.tmp / "unifier-one" / "run"
    one = Run(load_config(config), out_one).execute()
    out = single.tmp / "unifier-fsdp" / "run"
    per_rank = _launch(_accelerate_launch("fsdp.yaml"), single.driver, config, out)
    assert [kind for _, _, kind in per_rank] == [[FSDP_MODEL]] * 2
    _matches_one(SimpleNamespace(results=one, out=out_one), out)


def test_deepspeed_zero2_matches_one(single):
    """DeepSpeed ZeRO-2 through accelerate with the shipped config, on DeepSpeed's CPU
    accelerator (its first use on a machine builds a small C++ op, about a minute)."""
    pytest.importorskip("deepspeed")
    out = single.tmp / "zero2" / "run"
    launch = _accelerate_launch("deepspeed-zero2.yaml")
    per_rank = _launch(launch, single.driver, single.config, out)
    assert [kind for _, _, kind in per_rank] == [["DeepSpeedEngine"]] * 2
    assert [trained for _, trained, _ in per_rank] == [[4] * 8, [4] * 8]
    _matches_one(single, out)


def test_a_launch_with_an_empty_cache_trains_the_base_alone(tmp_path, monkeypatch):
    """The embedded base is trained by one process outside the launch (inside it, its training
    waited for processes that wait for it: a hang); the launch then runs as one process does."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MMCL_CACHE", str(cache))
    config = tmp_path / "config.yaml"
    config.write_text(
        "benchmark: ability\ntasks: [ocr, gui]\nmodel: {preset: micro}\n"
        "data: {train_size: 16, test_size: 4}\n"
        "train: {epochs: 1, batch_size: 8}\neval: {batch_size: 2, max_new_tokens: 4}\n"
    )
    out_two = tmp_path / "two" / "run"
    _run(TORCHRUN, "-m", "mmcl.cli", "run", "--config", config, "--out", out_two)
    assert len(list((cache / "base").iterdir())) == 1
    one = Run(load_config(config), tmp_path / "one" / "run").execute()
    two = json.loads((out_two / "results.json").read_text())
    for key in ("counts", "zero_shot", "accuracy_matrix", "metrics"):
        assert two[key] == one[key], key
