"""The backbone's named operations: adapters by exact name, removal, modes and views."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from mmcl.data.benchmarks import get_benchmark
from mmcl.data.records import Record
from mmcl.errors import MmclError
from mmcl.methods.base import Method
from mmcl.models.base import LoraSpec
from mmcl.pretraining.base import pretrained_backbone


class TwoAdapters(Method):
    """A method whose adapters are named like modules of the base (`mlp`, `proj`)."""

    name = "two-adapters"

    def setup(self) -> None:
        self.created: dict[str, set[int]] = {}
        for name in ("mlp", "proj"):
            before = {id(p) for p in self.backbone.core.parameters()}
            self.backbone.add_lora(name, LoraSpec(r=2, alpha=4))
            after = {id(p) for p in self.backbone.core.parameters()}
            self.created[name] = after - before


@pytest.fixture
def backbone():
    return pretrained_backbone("micro")


def test_adapters_named_like_base_modules_own_exactly_their_weights(backbone):
    assert any(".mlp." in n for n, _ in backbone.core.named_parameters())  # a trap for substrings
    method = TwoAdapters(backbone, TwoAdapters.Options(), [], 0)
    method.setup()
    for name in ("mlp", "proj"):
        params = backbone.adapter_parameters(name)
        assert params and {id(p) for p in params.values()} == method.created[name]
        assert all(f".{name}." in n and ".lora_" in n for n in params)
    mlp, proj = backbone.adapter_parameters("mlp"), backbone.adapter_parameters("proj")
    assert not set(mlp) & set(proj)
    assert backbone.adapter_parameters("absent") == {}

    # Training one adapter moves its weights and nothing else.
    backbone.use_adapters("mlp")
    backbone.set_trainable(mlp)
    assert set(backbone.trainable_parameters()) == set(mlp)
    before = {n: p.detach().clone() for n, p in backbone.core.named_parameters()}
    tasks = get_benchmark("ability").load(0, 8, 2, ["ocr"])
    out = backbone.forward(backbone.collate(tasks[0].train[:4], train=True))
    out.loss.backward()
    with torch.no_grad():
        for p in mlp.values():
            p -= 0.1 * p.grad.sign()
    changed = {n for n, p in backbone.core.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(mlp)


def test_lora_factors_and_removal(backbone):
    backbone.add_lora("first", LoraSpec(r=2, alpha=4))
    backbone.add_lora("second", LoraSpec(r=3, alpha=6))
    factors = backbone.lora_factors("second")
    assert factors
    params = backbone.adapter_parameters("second")
    ids = {id(p) for p in params.values()}
    for a, b in factors.values():
        assert a.shape[0] == 3 and b.shape[1] == 3 and {id(a), id(b)} <= ids
    assert backbone.adapter_rank("second") == 3
    with pytest.raises(MmclError, match="exists already"):
        backbone.add_lora("first", LoraSpec())
    backbone.remove_adapter("second")
    assert backbone.adapters == ["first"]
    names = {n for n, _ in backbone.core.named_parameters()}
    assert not names & set(params)
    with pytest.raises(MmclError, match="no adapter named 'second'"):
        backbone.remove_adapter("second")


def test_modes_are_restored_and_the_teacher_runs_plain(backbone):
    backbone.add_lora("main", LoraSpec(r=2, alpha=4))
    model = backbone.model
    for training in (True, False):
        model.train(training)
        with backbone.eval_mode():
            assert not model.training
        with backbone.teacher():
            assert not model.training
        assert model.training is training

    wrapper = torch.nn.Sequential(model)  # stands for a trainer's wrapper (DDP)
    with backbone.running_as(wrapper):
        assert backbone.wrapped and backbone.model is wrapper and wrapper.training
        assert backbone.adapters == ["main"]  # the adapters are still found under the wrapper
        assert any(m is wrapper for m in backbone.running_modules())
        with backbone.teacher():
            assert backbone.model is model and not model.training
        assert backbone.model is wrapper and model.training
    assert backbone.model is model and not backbone.wrapped and not model.training


@pytest.mark.parametrize("training", [True, False])
def test_methods_leave_the_mode_as_they_found_it(backbone, training):
    """ewc's Fisher, the distillation teacher, the prototype router's pooled states and
    generation run in eval mode and hand the model back in the mode it had."""
    from mmcl.methods import make_method
    from mmcl.methods.distill import teacher_logits
    from mmcl.methods.prototype_router import pooled_states

    tasks = get_benchmark("ability").load(0, 8, 2, ["ocr", "gui"])
    specs = [t.spec for t in tasks]
    ewc = make_method("ewc", {"fisher_samples": 2}, backbone, specs, 0)
    ewc.setup()
    snapshot = {n: p.detach().clone() for n, p in backbone.adapter_parameters("main").items()}
    batch = backbone.collate(tasks[0].train[:2], train=True)
    runs = {
        "ewc": lambda: ewc.estimate_fisher(tasks[0]),
        "teacher": lambda: teacher_logits(backbone, snapshot, batch),
        "prototype router": lambda: pooled_states(backbone, batch, None),
        "generate": lambda: backbone.generate(backbone.collate(tasks[0].test, train=False)),
    }
    for name, run in runs.items():
        backbone.model.train(training)
        run()
        assert backbone.model.training is training, name


def test_the_output_layer_runs_on_the_answer_window_alone(backbone, monkeypatch):
    """A training pass computes logits only from the position before the batch's first answer
    token on; they, the loss and the adapter's gradients are the whole head's, bit for bit
    (a windowed run trains as a full one did), and a head that trains sees every position."""
    import mmcl.models.base as base

    lora = TwoAdapters(backbone, TwoAdapters.Options(), [], 0)
    lora.setup()
    backbone.use_adapters("mlp")
    params = backbone.adapter_parameters("mlp")
    backbone.set_trainable(params)
    tasks = get_benchmark("ability").load(0, 8, 2, ["ocr", "gui"])
    batch = backbone.collate(tasks[0].train[:3] + tasks[1].train[:3], train=True)

    def run() -> tuple:
        out = backbone.forward(batch)
        grads = torch.autograd.grad(out.loss, list(params.values()))
        return out, grads

    windowed, grads = run()
    monkeypatch.setattr(base, "answer_window", lambda labels: 0)
    full, full_grads = run()
    n = windowed.logits.shape[1]
    assert n < full.logits.shape[1] == batch.input_ids.shape[1]
    assert windowed.answer_mask.sum() == full.answer_mask.sum()
    assert torch.equal(windowed.logits, full.logits[:, -n:])
    assert torch.allclose(windowed.loss, full.loss, rtol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(grads, full_grads, strict=True))
    monkeypatch.undo()
    backbone.set_trainable({**params, **dict(backbone.output_layer().named_parameters())})
    assert backbone.forward(batch).logits.shape[1] == batch.input_ids.shape[1]


def test_answer_window():
    from mmcl.models.batch import IGNORE, MIN_WINDOW, answer_window

    labels = torch.full((2, 40), IGNORE)
    assert answer_window(labels) == 0  # no answer: every position
    labels[0, 30:33], labels[1, 25:27] = 1, 1  # answers at 30-32 and 25-26 (right padding)
    assert answer_window(labels) == 40 - 24  # from the position that predicts token 25
    labels[1, 25:27], labels[1, 36] = IGNORE, 1
    assert answer_window(labels) == 40 - 29
    labels[:, :39], labels[:, 39] = IGNORE, 1
    assert answer_window(labels) == MIN_WINDOW
    labels[0, 1] = 1
    assert answer_window(labels) == 0  # the window would be the whole row


def test_collate_decodes_each_file_once_and_again_when_it_changes(backbone, tmp_path):
    calls = []
    read = backbone.featurizers["image"]
    backbone.featurizers["image"] = lambda p: calls.append(p) or read(p)
    paths = [tmp_path / f"{k}.png" for k in range(3)]

    def write(path, colour, stamp):  # an explicit mtime: two writes can share a clock tick
        Image.new("RGB", (32, 32), colour).save(path)
        os.utime(path, (stamp, stamp))

    for k, path in enumerate(paths):
        write(path, (40 * k, 0, 0), 1)
    recs = [
        Record(f"r{k}", (("<image>\nwhat?", "red"),), {"image": (p,)}) for k, p in enumerate(paths)
    ]

    first = backbone.collate(recs, train=True).media["image"]
    again = backbone.collate(recs, train=True).media["image"]  # a second epoch
    assert torch.equal(first, again) and len(calls) == 3

    write(paths[0], (0, 0, 255), 2)  # replaced on disk
    changed = backbone.collate(recs, train=True).media["image"]
    assert len(calls) == 4 and not torch.equal(changed[0], first[0])

    # Past the budget the oldest go first; the newest, which the last batch read, stay.
    backbone.media_cache.budget = first[0].nbytes * 2
    for path in paths:
        write(path, (0, 255, 0), 3)
    calls.clear()
    backbone.collate(recs, train=True)
    assert len(calls) == 3 and len(backbone.media_cache.items) == 2
    backbone.collate(recs[1:], train=True)
    assert len(calls) == 3
