"""The multi-scenario stream (MSVQA-style) and UNIFIER: scoring, data, VRE/VCC, a micro run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mmcl.config import load_config
from mmcl.data.benchmarks import get_benchmark
from mmcl.data.synth import sample_rng
from mmcl.data.synth.draw import position_name
from mmcl.data.synth.scenario import SCENARIOS, TASKS, scenario_of
from mmcl.errors import MmclError
from mmcl.io import load_tensors
from mmcl.methods import make_method
from mmcl.methods.unifier import Unifier
from mmcl.methods.vision_expansion import consistency_loss
from mmcl.metrics import (
    box_hits,
    box_iou,
    detection_f1,
    format_boxes,
    is_box_answer,
    msvqa_scores,
    parse_boxes,
    score_task,
)
from mmcl.pretraining.base import pretrained_backbone
from mmcl.runner import Run
from mmcl.scoring.micl import vqa as vqa_score
from mmcl.train import TrainSettings, train

TASK_SUBSET = ["high_altitude", "underwater", "high_altitude_2"]


# --- scoring ------------------------------------------------------------------------------------
def test_iou_and_f1_by_hand():
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)  # 1 / (4 + 4 - 1)
    assert box_iou((0, 0, 4, 4), (0, 0, 2, 2)) == pytest.approx(4 / 16)
    assert box_iou((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0  # touching edges
    assert box_iou((0, 0, 2, 1), (0, 0, 1, 1)) == pytest.approx(0.5)
    assert box_iou((1, 1, 1, 1), (1, 1, 1, 1)) == 0.0  # degenerate
    # the duplicate prediction cannot match a second time; IoU exactly 0.5 is a hit
    assert box_hits([(0, 0, 1, 1), (2, 2, 3, 3), (0, 0, 1, 1)], [(0, 0, 1, 1), (1, 0, 2, 1)]) == 1
    assert box_hits([(0, 0, 2, 1)], [(0, 0, 1, 1)]) == 1
    assert box_hits([(0, 0, 3, 1)], [(0, 0, 1, 1)]) == 0  # IoU 1/3
    p, r, f1 = detection_f1(1, 3, 2)
    assert (p, r) == (pytest.approx(1 / 3), pytest.approx(1 / 2))
    assert f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))  # 0.4
    assert detection_f1(0, 0, 2) == (0.0, 0.0, 0.0)


def test_box_text_format_and_vqa_score():
    assert format_boxes([(2, 1, 3, 2), (0, 0, 1, 1)]) == "[2,1,3,2] [0,0,1,1]"
    assert parse_boxes("at [2, 1, 3, 2] and [0,0,1.5,1]") == [(2, 1, 3, 2), (0, 0, 1.5, 1)]
    assert is_box_answer("[2,1,3,2] [0,0,1,1]") and not is_box_answer("row two column three")
    assert not is_box_answer("the box [2,1,3,2]")
    assert vqa_score("Yes.", ["yes"]) == 1.0 and vqa_score("no", ["yes"]) == 0.0
    assert vqa_score("a", ["a", "a"] + ["b"] * 8) == pytest.approx(2 / 3)  # min(1, 2 / 3)


def test_msvqa_scorer_by_hand():
    preds = ["yes", "[0,0,1,1] [2,2,3,3]", "3", "[0, 0, 1, 1]", "nothing"]
    refs = [["yes"], ["[0,0,1,1]"], ["2"], ["[0,0,1,1] [1,0,2,1]"], ["[3,3,4,4]"]]
    scores, extra = msvqa_scores(preds, refs)
    # questions: 1, 0; grounding per sample: F1 2/3 (2 predicted, 1 true), 2/3, 0
    assert scores == [1.0, pytest.approx(2 / 3), 0.0, pytest.approx(2 / 3), 0.0]
    # pooled: 2 hits, 3 predicted, 4 true -> P 2/3, R 1/2, F1 4/7
    assert extra["grounding_precision"] == pytest.approx(100 * 2 / 3)
    assert extra["grounding_recall"] == pytest.approx(50.0)
    assert extra["grounding_f1"] == pytest.approx(100 * 4 / 7)
    assert extra["vqa"] == pytest.approx(50.0) and extra["grounding_samples"] == 3
    _, task_score, task_extra = score_task("msvqa", preds, refs)
    assert task_score == pytest.approx(50.0) and "task_score" not in task_extra
    assert task_extra["grounding_f1"] == pytest.approx(100 * 4 / 7)


# --- the stream ---------------------------------------------------------------------------------
def test_protocols_and_scenario_data():
    five, twenty = get_benchmark("scenario"), get_benchmark("scenario-20")
    assert [scenario_of(t) for t in five.order] == [*SCENARIOS, "high_altitude"]
    assert len(twenty.order) == 20 and len(set(twenty.order)) == 20
    assert {scenario_of(t) for t in twenty.order[16:]} == set(SCENARIOS)
    for name in twenty.order:
        qtypes = set()
        for i in range(40):
            s = TASKS[name].make(sample_rng(0, name, "train", i), "train")
            assert s.images[0].size == (64, 64) and s.meta["scenario"] == scenario_of(name)
            qtypes.add(s.meta["qtype"])
            a = s.answers[0]
            if s.meta["qtype"] == "grounding":
                boxes = parse_boxes(a)
                assert is_box_answer(a) and 1 <= len(boxes) <= 2
                assert all(x1 - x0 == 1 and y1 - y0 == 1 for x0, y0, x1, y1 in boxes)
            elif s.meta["qtype"] == "counting":
                assert a.isdigit()
            elif s.meta["qtype"] == "existence":
                assert a in ("yes", "no")
            elif s.meta["qtype"] == "position":
                assert a in {position_name(r, c) for r in range(4) for c in range(4)}
        assert len(qtypes) >= 5, name
    # a revisit draws fresh data: other questions and images than the first visit
    first = TASKS["underwater"].make(sample_rng(0, "underwater", "train", 0), "train")
    again = TASKS["underwater_2"].make(sample_rng(0, "underwater_2", "train", 0), "train")
    assert first.images[0].tobytes() != again.images[0].tobytes()


# --- UNIFIER ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tasks():
    return get_benchmark("scenario").load(0, train_size=16, test_size=4, order=TASK_SUBSET)


def _method(options: dict | None = None) -> Unifier:
    backbone = pretrained_backbone("micro")
    specs = [t.spec for t in get_benchmark("scenario").load(0, 16, 4, order=TASK_SUBSET)]
    method = make_method("unifier", options or {}, backbone, specs, seed=0)
    method.setup()
    return method


def _step(method: Unifier, task, step: int) -> None:
    method.before_task(task, step)
    train(method.backbone, task.train, TrainSettings(epochs=1, batch_size=8), step, method)
    method.after_task(task, step)


def _branch(method: Unifier, k: int) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone()
        for n, p in method.backbone.core.named_parameters()
        if f".vre.branches.{k}." in n
    }


def _logits(method: Unifier, task) -> torch.Tensor:
    backbone = method.backbone
    backbone.model.eval()
    with torch.no_grad():
        return backbone.forward(backbone.collate(task.test, train=True)).logits


def test_earlier_branches_stay_frozen_and_revisits_reuse_their_branch(tasks):
    method = _method()
    _step(method, tasks[0], 0)
    first = _branch(method, 0)
    assert all(v.abs().sum() > 0 for n, v in first.items() if ".up." in n)  # it learned
    proj = {
        n: p.detach().clone() for n, p in method.backbone.core.named_parameters() if ".proj." in n
    }
    _step(method, tasks[1], 1)  # underwater: a new branch, the first one frozen
    assert method.branch_of == {"high_altitude": 0, "underwater": 1}
    for n, v in _branch(method, 0).items():
        assert torch.equal(v, first[n]), n
    assert any(v.abs().sum() > 0 for n, v in _branch(method, 1).items() if ".up." in n)
    trainable = method.backbone.trainable_parameters()
    assert not any(".vre.branches.0." in n for n in trainable)
    assert any(".vre.branches.1." in n for n in trainable) and any(".main." in n for n in trainable)
    widened = {n: p for n, p in method.backbone.core.named_parameters() if ".proj.weight" in n}
    for n, w in widened.items():  # the projection kept its first block's shape, and trained
        assert w.shape[1] == 2 * proj[n].shape[1] and not torch.equal(
            w[:, : proj[n].shape[1]], proj[n]
        )
    second = _branch(method, 1)
    _step(method, tasks[2], 2)  # high_altitude_2: the same scenario, branch 0 trains again
    assert len(method.vres[0].branches) == 2
    assert method.branch_of == {"high_altitude": 0, "underwater": 1}
    for n, v in _branch(method, 1).items():
        assert torch.equal(v, second[n]), n
    assert any(not torch.equal(v, first[n]) for n, v in _branch(method, 0).items())


def test_proj_train_own_holds_the_other_blocks_and_the_bias(tasks):
    """The ablation trains only the current branch's block of the projection: the first block
    and the bias end the second task as they began it, exactly, under weight decay too, and
    the model written back is the one that trained."""
    method = _method({"proj_train": "own"})
    _step(method, tasks[0], 0)

    def proj() -> dict[str, torch.Tensor]:
        named = method.backbone.core.named_parameters()
        return {n: p.detach().clone() for n, p in named if ".proj." in n}

    before = proj()
    method.before_task(tasks[1], 1)
    settings = TrainSettings(epochs=1, batch_size=8, weight_decay=0.5)
    train(method.backbone, tasks[1].train, settings, 1, method)
    trained = _logits(method, tasks[1])
    method.after_task(tasks[1], 1)
    torch.testing.assert_close(_logits(method, tasks[1]), trained)
    for n, w in proj().items():
        if n.endswith("bias"):
            assert torch.equal(w, before[n]), n
        else:
            width = before[n].shape[1]
            assert torch.equal(w[:, :width], before[n]), n
            assert not torch.equal(w[:, width:], torch.eye(width) / 2), n  # its own block trained
    assert all(vre.own is None and vre.held_weight is None for vre in method.vres)


def test_routed_runs_each_image_through_its_own_branch(tasks):
    """routed: an image's VRE output is its branch's through that branch's block only, whatever
    the other samples of its batch; training holds the other blocks; a test image is routed to
    the branch whose prototype is nearest, and the routing is kept across a restore."""
    with pytest.raises(MmclError, match="routed"):
        _method({"routed": True})  # vcc is on by default: nothing to fuse, so refused
    method = _method({"routed": True, "vcc": False})
    _step(method, tasks[0], 0)
    _step(method, tasks[1], 1)
    vre = method.vres[0]
    w = vre.width
    x = torch.randn(3, 5, w)
    with torch.no_grad():
        alone = [
            F.linear(vre.branches[k](x), vre.proj.weight[:, k * w : (k + 1) * w]) for k in (0, 1)
        ]
        vre.route = torch.tensor([1, 0, 1])
        mixed = vre(x)
    for i, k in enumerate([1, 0, 1]):
        torch.testing.assert_close(mixed[i], alone[k][i])
    assert all(torch.equal(p.bias, torch.zeros_like(p.bias)) for p in [vre.proj])
    assert set(method.features) == {0, 1} and len(method.features[0]) == len(tasks[0].train)
    test = {k: method.backbone.collate(t.test, train=False) for k, t in enumerate(tasks[:2])}
    for k, task in enumerate(tasks[:2]):  # the micro model's two looks are told apart
        assert method.route(test[k]).tolist() == [k] * len(task.test)
    assert method.predict(test[0]) is None  # evaluation's routes are what after_stream counts
    assert method.predict(test[1]) is None and vre.route.tolist() == [1] * len(tasks[1].test)
    method.after_stream()
    assert method.report()["routing_accuracy"] == {"high_altitude": 100.0, "underwater": 100.0}
    fresh = _method({"routed": True, "vcc": False})
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.route(test[0]), method.route(test[0]))
    assert fresh.routes == method.routes


def test_inference_uses_no_scenario_id(tasks):
    assert Unifier.task_id_at_test is False
    method = _method()
    _step(method, tasks[0], 0)
    _step(method, tasks[1], 1)
    batch = method.backbone.collate(tasks[0].test, train=False)
    assert method.predict(batch) is None
    before = _logits(method, tasks[0])
    method.before_task(tasks[0], 3)  # another "current" scenario changes nothing at test time
    assert method.current == "high_altitude"
    assert torch.equal(_logits(method, tasks[0]), before)
    # a fresh method restored from state + weights answers identically: no hidden task state
    state, weights = method.state_dict(), method.backbone.state_dict()
    fresh = _method()
    fresh.load_state_dict(state)
    fresh.backbone.load_state_dict(weights)
    assert fresh.current is None and torch.equal(_logits(fresh, tasks[0]), before)


def test_vcc_is_zero_when_branches_agree(tasks):
    torch.manual_seed(0)
    out = torch.randn(2, 5, 8)
    same = [out, out.clone(), out.clone()]
    for old in (None, 3 * out):  # the first task has no old model
        assert consistency_loss(same, 3 * out, old, tau=0.5).item() == pytest.approx(0, abs=1e-6)
    other = torch.randn(2, 5, 8)
    assert consistency_loss([out, other], out, None, tau=0.5).item() > 0
    assert consistency_loss([out, out], 3 * out, out, tau=0.5).item() > 0  # the old-model term
    # through the hooks: two identical branches fused by their average, the old model this
    # very module, give a zero VCC term
    method = _method()
    method.before_task(tasks[0], 0)
    method.before_task(tasks[1], 1)
    with torch.no_grad():
        for vre in method.vres:
            for b in vre.branches:
                torch.nn.init.normal_(b.up.weight)
            vre.branches[1].load_state_dict(vre.branches[0].state_dict())
            eye = torch.eye(vre.width)
            vre.proj.weight.copy_(torch.cat([eye / 2, eye / 2], dim=1))
    method.old = [vre.frozen_copy() for vre in method.vres]
    backbone = method.backbone
    backbone.model.train()
    out = backbone.forward(backbone.collate(tasks[1].train[:4], train=True))
    assert method.loss(None, out)["vcc"].item() == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        for vre in method.vres:
            vre.branches[1].up.weight.mul_(-1)  # now they disagree
    out = backbone.forward(backbone.collate(tasks[1].train[:4], train=True))
    assert method.loss(None, out)["vcc"].item() > 0


def test_vcc_old_model_is_the_module_before_the_task(tasks):
    method = _method()
    method.before_task(tasks[0], 0)
    assert method.old == []  # nothing learned yet
    _step(method, tasks[0], 0)
    x = torch.randn(2, 5, method.vres[0].width)
    before = [vre(x) for vre in method.vres]
    method.before_task(tasks[1], 1)  # adds a branch: the fused output is unchanged
    for vre, old, out in zip(method.vres, method.old, before, strict=True):
        assert torch.allclose(vre(x), out, atol=1e-6) and torch.equal(old(x), out)
        assert len(old.branches) == 1 and not any(p.requires_grad for p in old.parameters())
    _step(method, tasks[1], 1)
    assert all(torch.equal(old(x), out) for old, out in zip(method.old, before, strict=True))


def test_vcc_without_expansion_uses_snapshots(tasks):
    method = _method({"vre": False, "vcc": True})
    _step(method, tasks[0], 0)
    _step(method, tasks[1], 1)
    assert len(method.vres[0].branches) == 1 and set(method.snapshots) == set(method.branch_of)
    restored = _method({"vre": False, "vcc": True})
    restored.load_state_dict(method.state_dict())
    for a, b in zip(method.snapshots["underwater"], restored.snapshots["underwater"], strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_micro_run_on_the_scenario_stream_and_resume(tmp_path, killed_after_first_step):
    overrides = {
        "benchmark": "scenario",
        "method.name": "unifier",
        "model.preset": "micro",
        "tasks": ["high_altitude", "underwater"],
        "data.train_size": 8,
        "data.test_size": 4,
        "train.epochs": 1,
        "train.batch_size": 8,
        "eval.max_new_tokens": 12,
    }
    cfg = load_config(None, overrides)
    res = Run(cfg, tmp_path / "full").execute()
    assert res["task_metric"] == {"high_altitude": "vqa_score", "underwater": "vqa_score"}
    assert len(res["task_extra"]["per_step"]) == 2
    for row in [res["task_extra"]["zero_shot"], *res["task_extra"]["per_step"]]:
        for figures in row.values():
            assert 0 <= figures["grounding_f1"] <= 100 and figures["vqa_samples"] >= 1
    assert res["method_info"]["branches"] == 2
    assert json.loads((tmp_path / "full" / "results.json").read_text()) == res
    # killed after step 0: resume re-creates the branches and ends with the same weights
    with killed_after_first_step():  # stops right after step 0's checkpoint
        Run(cfg, tmp_path / "killed").execute()
    resumed = Run(cfg, tmp_path / "killed").execute(resume=True)
    assert resumed["accuracy_matrix"] == res["accuracy_matrix"]
    a = load_tensors(tmp_path / "full" / "checkpoints" / "step1" / "model.safetensors")
    b = load_tensors(tmp_path / "killed" / "checkpoints" / "step1" / "model.safetensors")
    assert a.keys() == b.keys() and any(".vre.branches.1." in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
