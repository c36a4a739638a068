"""The classic continual-learning baselines: each one's defining mechanism, and resume."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmcl.checkpoint import join_state, split_state
from mmcl.config import load_config
from mmcl.data.benchmarks import get_benchmark
from mmcl.errors import MmclError
from mmcl.io import load_tensors, save_tensors
from mmcl.methods import make_method
from mmcl.methods.distill import kl_distill, teacher_logits
from mmcl.methods.moe_lora import MoeLoraConfig, MoELoraLinear
from mmcl.methods.o_lora import orthogonality_loss
from mmcl.pretraining.base import pretrained_backbone
from mmcl.runner import Run


@pytest.fixture(scope="module")
def tasks():
    return get_benchmark("ability").load(0, 48, 12, ["ocr", "gui"])


def _method(name: str, tasks, **options):
    backbone = pretrained_backbone("micro", seed=0)
    return make_method(name, options, backbone, [t.spec for t in tasks], seed=0)


def _batch(method, records):
    return method.backbone.collate(records, train=True)


@torch.no_grad()
def _perturb(params, scale=0.05, seed=0):
    """Stands in for training: moves the given parameters (LoRA B starts at zero)."""
    gen = torch.Generator().manual_seed(seed)
    for p in params.values():
        p.add_(scale * torch.randn(p.shape, generator=gen))


# --- distillation (lwf, and moincl later) ---------------------------------------------------
def test_kl_distill_zero_for_equal_logits_masked_and_scaled():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    mask = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    assert kl_distill(s, s.clone(), mask, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    other = s.clone()
    other[~mask] = torch.randn_like(other[~mask])  # differences off the mask do not count
    assert kl_distill(s, other, mask, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    T = 2.0
    p = F.softmax(t / T, -1)
    by_hand = (p * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum(-1)[mask].mean()
    s.requires_grad_(True)
    loss = kl_distill(s, t, mask, T)
    assert loss.item() == pytest.approx(by_hand.item() * T * T, rel=1e-5) and loss.item() > 0
    loss.backward()
    assert s.grad[~mask].abs().sum() == 0 and s.grad[mask].abs().sum() > 0
    assert kl_distill(s, t, torch.zeros_like(mask), T).item() == 0.0


def test_lwf_teacher_is_the_model_before_the_task(tasks):
    m = _method("lwf", tasks, temperature=2.0)
    m.setup()
    params = m.backbone.adapter_parameters("main")
    batch = _batch(m, tasks[1].train[:4])
    m.before_task(tasks[0], 0)
    assert m.loss(batch, m.backbone.forward(batch)) == {}  # no teacher on the first task
    _perturb(params)  # "training" on task 0
    m.after_task(tasks[0], 0)
    m.before_task(tasks[1], 1)
    out = m.backbone.forward(batch)
    assert m.loss(batch, out)["lwf"].item() == pytest.approx(0.0, abs=1e-6)  # student = teacher
    _perturb(params, seed=1)  # the student moves on; the teacher stays where it was
    out2 = m.backbone.forward(batch)
    assert torch.allclose(teacher_logits(m.backbone, m.teacher, batch), out.logits, atol=1e-5)
    loss = m.loss(batch, out2)["lwf"]
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
    with pytest.raises(MmclError, match="no parameters"):
        teacher_logits(m.backbone, {"not.a.param": torch.zeros(1)}, batch)


# --- ewc ------------------------------------------------------------------------------------
def test_ewc_penalty_zero_at_anchor_growing_away_and_online_fisher(tasks):
    m = _method("ewc", tasks, fisher_samples=6, gamma=0.5, weight=10.0)
    m.setup()
    params = m.params()
    _perturb(params)
    m.after_task(tasks[0], 0)
    f1 = {n: f.clone() for n, f in m.fisher.items()}
    assert set(f1) == set(params) and all(f.min() >= 0 for f in f1.values())
    assert sum(f.sum() for f in f1.values()) > 0
    batch = _batch(m, tasks[1].train[:2])
    assert m.loss(batch, m.backbone.forward(batch))["ewc"].item() == 0.0  # at the anchor
    gen = torch.Generator().manual_seed(3)
    step = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
    pen = []
    for eps in (0.01, 0.02, 0.04):
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(m.anchor[n] + eps * step[n])
        pen.append(m.penalty().item())
    assert 0 < pen[0] < pen[1] < pen[2]
    assert pen[1] / pen[0] == pytest.approx(4.0, rel=1e-3)  # quadratic in the distance
    # Online accumulation: F = gamma F_old + F_new, with the anchor moved to the new weights.
    m.after_task(tasks[1], 1)
    f2 = m.estimate_fisher(tasks[1])
    for n in f1:
        assert torch.allclose(m.fisher[n], 0.5 * f1[n] + f2[n], atol=1e-7)
        assert torch.equal(m.anchor[n], params[n].detach())
    # Resume: through the runner's checkpoint split (dotted parameter names must survive).
    tensors, rest = split_state(m.state_dict())
    again = join_state(tensors, json.loads(json.dumps(rest)))
    m2 = _method("ewc", tasks, fisher_samples=6, gamma=0.5, weight=10.0)
    m2.setup()
    m2.load_state_dict(again)
    assert set(m2.fisher) == set(f1)
    assert all(torch.equal(m2.fisher[n], m.fisher[n]) for n in f1)
    assert all(torch.equal(m2.anchor[n], m.anchor[n]) for n in f1)


def test_ewc_state_survives_safetensors(tasks, tmp_path):
    m = _method("ewc", tasks, fisher_samples=2)
    m.setup()
    m.after_task(tasks[0], 0)
    tensors, rest = split_state(m.state_dict())
    save_tensors(tmp_path / "m.safetensors", tensors)
    m2 = _method("ewc", tasks)
    m2.setup()
    m2.load_state_dict(join_state(load_tensors(tmp_path / "m.safetensors"), rest))
    assert m2.fisher.keys() == m.fisher.keys() and len(m2.fisher) > 0


# --- o-lora ---------------------------------------------------------------------------------
def test_orthogonality_loss_zero_for_orthogonal_subspaces():
    torch.manual_seed(0)
    layers, d, r = 3, 32, 4
    q = torch.linalg.qr(torch.randn(layers, d, 3 * r)).Q  # orthonormal columns per layer
    previous = q[:, :, : 2 * r].transpose(1, 2)  # two earlier LoRAs' A, stacked: (L, 2r, d)
    current = q[:, :, 2 * r :].transpose(1, 2)  # (L, r, d), orthogonal to them
    assert orthogonality_loss(previous, current).item() == pytest.approx(0.0, abs=1e-5)
    assert orthogonality_loss(previous, previous[:, :r]).item() > 1.0
    by_hand = sum((previous[k] @ previous[k, :r].T).abs().sum() for k in range(layers))
    assert orthogonality_loss(previous, previous[:, :r]).item() == pytest.approx(by_hand.item())


def test_o_lora_new_lora_per_task_old_frozen_active_and_pushed_orthogonal(tasks):
    m = _method("o-lora", tasks)
    m.setup()
    bb = m.backbone
    batch = _batch(m, tasks[0].train[:2])
    m.before_task(tasks[0], 0)
    assert "orth" not in m.loss(batch, bb.forward(batch))  # nothing to be orthogonal to yet
    m.after_task(tasks[0], 0)
    m.before_task(tasks[1], 1)
    assert bb.active_adapters == ["tasks0to0", "task1"]
    trainable = bb.trainable_parameters()
    assert trainable and all(".task1." in n for n in trainable)
    old, new = bb.lora_factors("tasks0to0"), bb.lora_factors("task1")
    assert old and set(old) == set(new)
    by_hand = sum((old[n][0] @ new[n][0].T).abs().sum() for n in new)
    loss = m.loss(batch, bb.forward(batch))["orth"]
    assert loss.item() == pytest.approx(0.5 * by_hand.item(), rel=1e-5)
    loss.backward()
    assert all(a.grad.abs().sum() > 0 for a, _ in new.values())
    assert all(a.grad is None for a, _ in old.values())
    with torch.no_grad():  # project the new A's off the old subspaces: the loss vanishes
        for n, (a, _) in new.items():
            q = torch.linalg.qr(old[n][0].T).Q
            a.sub_((a @ q) @ q.T)
    assert m.orthogonality().item() == pytest.approx(0.0, abs=1e-4)
    # Folded: the earlier LoRAs become one of their summed rank, with the same update.
    probe = _batch(m, tasks[1].test[:2])
    with torch.no_grad():
        before = bb.forward(probe).logits
    with warnings.catch_warnings():  # folding removes no adapter that is still answering
        warnings.simplefilter("error")
        m.after_task(tasks[1], 1)
    assert bb.adapters == ["tasks0to1"] and bb.active_adapters == ["tasks0to1"]
    assert bb.adapter_rank("tasks0to1") == 2 * m.opts.lora.r
    with torch.no_grad():
        assert torch.allclose(bb.forward(probe).logits, before, atol=1e-5)
    assert not bb.trainable_parameters()
    state = m.state_dict()
    assert (state["learned"], state["past"], state["orth_at_end"][0]) == (2, "tasks0to1", 0.0)


def test_o_lora_kill_and_resume_gives_the_same_matrix(
    tmp_path, micro_overrides, killed_after_first_step
):
    def run(folder, resume=False):
        cfg = load_config(None, {**micro_overrides, "method.name": "o-lora"})
        return Run(cfg, folder).execute(resume=resume)

    full = run(tmp_path / "full")
    with killed_after_first_step():  # stops right after step 0's checkpoint
        run(tmp_path / "killed")
    resumed = run(tmp_path / "killed", resume=True)
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    assert resumed["method_info"] == full["method_info"]  # holds the weights' orthogonality
    assert resumed["method_info"]["adapters"] == 2
    for task in ("ocr", "gui"):
        rows = [
            (tmp_path / d / "predictions" / "step1" / f"{task}.jsonl").read_text()
            for d in ("full", "killed")
        ]
        assert rows[0] == rows[1]


# --- replay ---------------------------------------------------------------------------------
def test_replay_buffer_quotas_mixing_and_rebuild_on_resume(tasks):
    m = _method("replay", tasks, fraction=0.1)
    assert m.stores_samples
    assert m.train_records(tasks[0]) == tasks[0].train
    m.after_task(tasks[0], 0)
    quota = math.ceil(0.1 * len(tasks[0].train))
    kept = m.buffer["ocr"]
    assert len(kept) == quota and len({r.id for r in kept}) == quota
    assert {r.id for r in kept} <= {r.id for r in tasks[0].train}
    mixed = m.train_records(tasks[1])
    assert mixed == tasks[1].train + kept
    assert m.report() == {"buffer_size": quota, "buffer_per_task": {"ocr": quota}}
    # Resume: references only (JSON), resolved again against the tasks' records.
    state = json.loads(json.dumps(m.state_dict()))
    assert state == {"buffer_ids": {"ocr": [r.id for r in kept]}}
    m2 = _method("replay", tasks, fraction=0.1)
    m2.load_state_dict(state)
    m2.restore_tasks(tasks[:1])
    assert m2.train_records(tasks[1]) == mixed
    m2.load_state_dict({"buffer_ids": {"ocr": ["no-such-id"]}})
    with pytest.raises(MmclError, match="no-such-id"):
        m2.restore_tasks(tasks[:1])
    m3 = _method("replay", tasks, per_task=3)
    m3.after_task(tasks[0], 0)
    assert len(m3.buffer["ocr"]) == 3

    # A fixed-size buffer: shared evenly by the tasks seen, each keeping its first draws.
    m4 = _method("replay", tasks, per_task=4, buffer_size=5)
    m4.after_task(tasks[0], 0)
    first = list(m4.buffer_ids["ocr"])
    assert len(first) == 4
    m4.after_task(tasks[1], 1)
    assert {k: len(v) for k, v in m4.buffer_ids.items()} == {"ocr": 3, tasks[1].name: 2}
    assert m4.buffer_ids["ocr"] == first[:3]
    assert [r.id for r in m4.buffer["ocr"]] == first[:3]


# --- moe-lora -------------------------------------------------------------------------------
def test_moe_lora_layer_is_a_gated_sum_of_lora_experts():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = MoELoraLinear(base, MoeLoraConfig(targets="x", r=4, alpha=8, experts=2))
    x = torch.randn(3, 7, 6)
    assert torch.allclose(layer(x), base(x))  # B starts at zero: the base layer
    g = layer.gate(x)
    assert g.shape == (3, 7, 2) and torch.allclose(g.sum(-1), torch.ones(3, 7))
    nn.init.normal_(layer.moe_B.weight)
    a, b, k = layer.moe_A.weight, layer.moe_B.weight, layer.rank
    expected = base(x) + layer.scaling * sum(
        g[..., e : e + 1] * (x @ a[e * k : (e + 1) * k].T @ b[:, e * k : (e + 1) * k].T)
        for e in range(2)
    )
    assert torch.allclose(layer(x), expected, atol=1e-5)
    layer(x).sum().backward()
    assert layer.moe_gate.weight.grad.abs().sum() > 0  # the gate learns
    with pytest.raises(MmclError, match="multiple"):
        MoELoraLinear(base, MoeLoraConfig(targets="x", r=5, experts=2))


def test_moe_lora_wraps_the_lm_linears_and_trains_only_experts_and_gates(tasks):
    import re

    m = _method("moe-lora", tasks)
    bb = m.backbone
    targets = [n for n, _ in bb.core.named_modules() if re.fullmatch(bb.lm_lora_targets, n)]
    batch = _batch(m, tasks[0].train[:2])
    with torch.no_grad():
        before = bb.forward(batch).logits
    m.setup()
    assert sorted(m.layers) == sorted(targets) and len(targets) > 0
    with torch.no_grad():
        assert torch.allclose(bb.forward(batch).logits, before, atol=1e-5)
    trainable = bb.trainable_parameters()
    assert trainable and all(".moe_" in n for n in trainable)
    assert any(".moe_gate." in n for n in trainable)
    test = bb.collate(tasks[0].test[:2], train=False)
    assert len(bb.generate(test, max_new_tokens=3)) == 2
