"""The methods MCITlib runs beyond mmcl's own: each one's characteristic mechanism, and resume."""

from __future__ import annotations

import pytest
import torch

from mmcl.config import load_config
from mmcl.data.benchmarks import get_benchmark
from mmcl.methods import all_methods
from mmcl.methods.modalprompt import insert_slots
from mmcl.models.base import Batch
from mmcl.runner import Run
from test_methods_baselines import _method, _perturb
from tiny_hf import micro_stream_config, one_thread, save_tiny_llava, save_tiny_qwen2vl  # noqa: F401


@pytest.fixture(scope="module")
def tasks():
    return get_benchmark("ability").load(0, 48, 12, ["ocr", "gui"])


@pytest.mark.parametrize(
    ("method", "info", "want"),
    [
        ("hide-llava", "experts", 2),
        ("disco", "experts", 2),
        ("cl-moe", "task_experts", None),
        ("sefe", "adapters", 2),
        ("keeplora", "adapters", 2),
        ("smolora", "experts", 4),
        ("modalprompt", "tasks_learnt", 2),
    ],
)
def test_kill_and_resume_gives_the_same_matrix(
    tmp_path, micro_overrides, killed_after_first_step, method, info, want
):
    overrides = {**micro_overrides, "method.name": method}

    def run(folder, resume=False):
        return Run(load_config(None, overrides), folder).execute(resume=resume)

    full = run(tmp_path / "full")
    with killed_after_first_step():  # stops right after step 0's checkpoint
        run(tmp_path / "killed")
    resumed = run(tmp_path / "killed", resume=True)
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    assert resumed["method_info"] == full["method_info"]
    if info == "task_experts":  # which experts each task claimed: two of four, whichever
        assert [len(t) for t in resumed["method_info"][info]] == [2, 2]
    else:
        assert resumed["method_info"][info] == want


def test_listed_with_a_reference():
    for name in ("hide-llava", "disco", "cl-moe", "sefe", "keeplora", "smolora", "modalprompt"):
        assert "arXiv" in all_methods()[name].summary


# --- hide-llava -----------------------------------------------------------------------------
def test_hide_llava_trains_one_expert_merges_below_and_mixes_on_top(tasks):
    m = _method("hide-llava", tasks)
    m.setup()
    bb, st = m.backbone, m.state
    batch = bb.collate(tasks[0].train[:4], train=True)
    m.before_task(tasks[0], 0)
    assert set(bb.trainable_parameters()) == set(m.expert_parameters(0))
    bb.forward(batch).loss.backward()  # only the current expert learns
    grads = {n: p.grad for n, p in bb.core.named_parameters() if ".expert_" in n}
    assert all(
        (g is not None) == (".expert_A.0." in n or ".expert_B.0." in n) for n, g in grads.items()
    )
    _perturb(m.expert_parameters(0))
    m.after_task(tasks[0], 0)
    m.before_task(tasks[1], 1)
    assert set(bb.trainable_parameters()) == set(m.expert_parameters(1))
    _perturb(m.expert_parameters(1), seed=1)
    m.after_task(tasks[1], 1)
    assert m.prototypes["image"].shape[0] == m.prototypes["text"].shape[0] == 2

    layers = list(m.layers.values())
    top = [x for x in layers if x.mix]
    assert top and all(".layers.1." in n for n, x in m.layers.items() if x.mix)  # micro: 2 layers
    lower = next(x for x in layers if not x.mix)
    x = torch.randn(2, 3, lower.base_layer.in_features)
    a = lower.expert_A[0].weight + lower.expert_A[1].weight
    b = lower.expert_B[0].weight + lower.expert_B[1].weight
    fused = lower.base_layer(x) + lower.scaling * (x @ a.T @ b.T)  # sum A's, sum B's (MCITlib)
    torch.testing.assert_close(lower(x), fused)
    t = top[0]
    x = torch.randn(2, 3, t.base_layer.in_features)
    st.weights = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    experts = [t.scaling * t.expert_B[i](t.expert_A[i](x)) for i in (0, 1)]
    want = t.base_layer(x) + torch.stack(
        [experts[0][0], 0.25 * experts[0][1] + 0.75 * experts[1][1]]
    )
    torch.testing.assert_close(t(x), want)

    # The mixture follows the prototypes: a sample equal to a task's prototypes weighs that
    # task's expert most.
    probe = bb.collate([tasks[0].test[0], tasks[1].test[0]], train=False)
    m.prototypes = m.features(probe)
    w = m.expert_weights(probe)
    torch.testing.assert_close(w.sum(-1), torch.ones(2))
    assert w.argmax(-1).tolist() == [0, 1]
    m.opts.temperature = 1e-3  # a sharp softmax picks one expert
    assert m.expert_weights(probe).max(-1).values.min() > 0.99


# --- disco ----------------------------------------------------------------------------------
def test_disco_every_layer_activates_subspaces_by_the_text_signature(tasks):
    m = _method("disco", tasks)
    m.setup()
    bb, st = m.backbone, m.state
    for k in (0, 1):
        m.before_task(tasks[k], k)
        assert set(bb.trainable_parameters()) == set(m.expert_parameters(k))
        _perturb(m.expert_parameters(k), seed=k)
        m.after_task(tasks[k], k)
    assert all(x.mix for x in m.layers.values())  # no layer merges: subspaces stay apart
    assert set(m.prototypes) == {"text"}  # the reference's text-only signature
    x = torch.randn(2, 3, next(iter(m.layers.values())).base_layer.in_features)
    st.weights = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for layer in m.layers.values():  # one-hot weights: exactly one task's LoRA per sample
        if layer.base_layer.in_features != x.shape[-1]:
            continue
        own = [layer.scaling * layer.expert_B[i](layer.expert_A[i](x[i])) for i in (0, 1)]
        torch.testing.assert_close(layer(x), layer.base_layer(x) + torch.stack(own))

    probe = bb.collate([tasks[0].test[0], tasks[1].test[0]], train=False)
    feats = m.features(probe)
    m.prototypes = {"text": feats["text"]}
    w = m.expert_weights(probe)
    assert w.argmax(-1).tolist() == [0, 1]
    # Only the text signature counts: image prototypes, even swapped ones, change nothing.
    m.prototypes["image"] = feats["image"].flip(0)
    torch.testing.assert_close(m.expert_weights(probe), w)
    assert m.predict(probe) is None and st.weights.shape == (2, 2)
    gen = bb.generate(probe)  # the mixture runs through generation (KV cache, same batch)
    assert len(gen) == 2


# --- cl-moe ---------------------------------------------------------------------------------
def test_cl_moe_counts_task_experts_and_updates_them_with_momentum(tasks):
    m = _method("cl-moe", tasks, experts=4, task_experts=2, momentum=0.7)
    m.setup()
    bb = m.backbone

    def favour(experts):  # gates that send every token to `experts` first
        with torch.no_grad():
            for layer in m.layers.values():
                layer.moe_gate.weight.zero_()
                bias = torch.tensor([3.0 if e in experts else 0.0 for e in range(4)])
                bias[experts[0]] += 1.0  # no ties between the top two
                layer.moe_gate.weight[:, 0] = bias  # the inputs below are all ones

    bb.model.train()
    m.before_task(tasks[0], 0)
    favour([2, 3])
    with torch.no_grad():
        layer = next(iter(m.layers.values()))
        x = torch.ones(1, 5, layer.base_layer.in_features)
        layer(x)  # every token: top-2 = {2, 3}
    assert m.counts.tolist() == [0, 0, 5, 5]
    m.after_task(tasks[0], 0)
    assert m.task_top == [[2, 3]]

    m.before_task(tasks[1], 1)
    old = {n: p.detach().clone() for n, p in bb.trainable_parameters().items()}
    favour([0, 1])
    with torch.no_grad():
        layer(x)
    _perturb(bb.trainable_parameters(), seed=3)  # "training" on task 1
    new = {n: p.detach().clone() for n, p in bb.trainable_parameters().items()}
    m.after_task(tasks[1], 1)
    assert m.task_top == [[2, 3], [0, 1]]  # task 1 leaves experts 2 and 3 of task 0
    name, layer = next(iter(m.layers.items()))
    r = layer.rank
    a_old, a_new = old[f"{name}.moe_A.weight"], new[f"{name}.moe_A.weight"]
    a = layer.moe_A.weight
    torch.testing.assert_close(a[:r], 0.7 * a_old[:r] + 0.3 * a_new[:r])  # expert 0: shared
    torch.testing.assert_close(
        a[2 * r : 3 * r], 0.3 * a_old[2 * r : 3 * r] + 0.7 * a_new[2 * r : 3 * r]
    )
    b_old, b_new = old[f"{name}.moe_B.weight"], new[f"{name}.moe_B.weight"]
    torch.testing.assert_close(
        layer.moe_B.weight[:, 3 * r :], 0.3 * b_old[:, 3 * r :] + 0.7 * b_new[:, 3 * r :]
    )
    torch.testing.assert_close(layer.moe_gate.weight, new[f"{name}.moe_gate.weight"])  # gate: new


# --- sefe -----------------------------------------------------------------------------------
def test_sefe_answer_styles_are_right_and_only_a_fraction_is_rewritten(tasks):
    m = _method("sefe", tasks, asd_fraction=0.5)
    task = tasks[0]
    out = m.train_records(task)
    assert [r.id for r in out] == [r.id for r in task.train]  # nothing dropped or added
    changed = [(a, b) for a, b in zip(task.train, out, strict=True) if a.turns != b.turns]
    assert len(changed) == m.rewritten[0] == round(0.5 * len(task.train)) - m.unchanged[0]
    assert changed
    for orig, new in changed:
        assert new.prompt.startswith(orig.prompt) and new.media == orig.media
        if new.answer in ("yes", "no"):
            candidate = new.prompt.rsplit('is the answer "', 1)[1].split('"?')[0]
            assert (candidate == orig.answer) == (new.answer == "yes")
        else:
            options = new.prompt.rsplit("options: ", 1)[1].split("\n")[0]
            assert f"{new.answer}. {orig.answer}" in options  # the letter names the answer
    assert m.train_records(task) == out  # seeded: the same rewrite every time


def test_sefe_reglora_keeps_the_new_update_off_earlier_key_elements(tasks):
    m = _method("sefe", tasks, key_fraction=0.1, reg_weight=2.0)
    bb = m.backbone
    m.before_task(tasks[0], 0)
    batch = bb.collate(tasks[0].train[:2], train=True)
    assert m.loss(batch, bb.forward(batch)) == {}  # no earlier task yet
    _perturb(bb.adapter_parameters("task0"))
    m.after_task(tasks[0], 0)  # folded into the earlier tasks' LoRA: here task 0's only
    assert m.folded.past == "tasks0to0" and "task0" not in bb.adapters
    for n, d in m.deltas("tasks0to0").items():  # the key elements: the top 10% of its |dW|
        d = d.abs()
        mask = m.key_masks[n]
        assert int(mask.sum()) == int(0.1 * d.numel())
        assert d[mask].min() >= d[~mask].max()
    m.before_task(tasks[1], 1)
    assert bb.active_adapters == ["tasks0to0", "task1"]
    assert all(".task1." in n for n in bb.trainable_parameters())
    _perturb(bb.adapter_parameters("task1"), seed=1)
    by_hand = torch.stack(
        [d.abs()[m.key_masks[n]].mean() for n, d in m.deltas("task1").items()]
    ).mean()
    loss = m.loss(batch, bb.forward(batch))["reglora"]
    assert loss.item() == pytest.approx(2.0 * by_hand.item(), rel=1e-5)
    loss.backward()
    assert all(a.grad is None for a, _ in bb.lora_factors("tasks0to0").values())
    assert all(b.grad.abs().sum() > 0 for _, b in bb.lora_factors("task1").values())
    m.after_task(tasks[1], 1)  # task 1's key elements join task 0's; its LoRA is folded in
    assert bb.active_adapters == ["tasks0to1"] and bb.adapter_rank("tasks0to1") == 2 * m.opts.lora.r
    assert all(int(mask.sum()) >= int(0.1 * mask.numel()) for mask in m.key_masks.values())


# --- keeplora -------------------------------------------------------------------------------
def test_keeplora_updates_stay_off_the_protected_subspace(tasks):
    m = _method("keeplora", tasks, weight_energy=0.6)
    m.setup()
    bb = m.backbone
    name, layer = next(iter(m.layers.items()))
    w = layer.base_layer.weight.detach().float()
    principal = m.space[name]  # the pre-trained W's principal input directions, orthonormal
    torch.testing.assert_close(principal @ principal.T, torch.eye(len(principal)))
    energy = torch.linalg.svdvals(w).square()
    held = (energy / energy.sum()).cumsum(0)
    assert len(principal) == max(int((held < 0.6).sum()), 1)  # the reference's cut
    torch.testing.assert_close(  # they span W's top right singular vectors
        torch.linalg.matrix_norm(w @ principal.T).square(), energy[: len(principal)].sum()
    )

    def check_task(step):
        space = {n: x.clone() for n, x in m.space.items()}
        before = {n: x(torch.ones(1, 1, x.base_layer.in_features)) for n, x in m.layers.items()}
        m.before_task(tasks[step], step)
        # only the new B trains; its A is fixed and orthogonal to everything protected
        assert {id(p) for p in bb.trainable_parameters().values()} == {
            id(x.task_B[step]) for x in m.layers.values()
        }
        _perturb({f"{n}.B": x.task_B[step] for n, x in m.layers.items()}, seed=step)
        for n, x in m.layers.items():
            assert (x.task_A[step] @ space[n].T).abs().max() < 1e-5
            # inputs in the protected subspace see no change at all from the new update
            probe = space[n][:3]
            new = x.task_B[step] @ x.task_A[step]
            assert (probe @ new.T).abs().max() < 1e-5
            assert not torch.equal(x(torch.ones(1, 1, x.base_layer.in_features)), before[n])
        m.after_task(tasks[step], step)
        for n in m.layers:  # the subspace grew by the task's directions, kept orthonormal
            assert len(m.space[n]) > len(space[n])
            torch.testing.assert_close(m.space[n][: len(space[n])], space[n])
            eye = torch.eye(len(m.space[n]))
            torch.testing.assert_close(m.space[n] @ m.space[n].T, eye, atol=1e-4, rtol=0)

    pristine = {n: x.base_layer.weight.detach().clone() for n, x in m.layers.items()}
    check_task(0)
    check_task(1)  # task 1's A also keeps off task 0's gradient directions
    assert m.report()["adapters"] == 2
    for n, lay in m.layers.items():  # task 0's update, merged into W, still counts once
        x = torch.randn(2, 3, lay.base_layer.in_features)
        every = sum(b @ a for a, b in zip(lay.task_A, lay.task_B, strict=True))
        torch.testing.assert_close(lay(x), x @ (pristine[n] + lay.scaling * every).T)
        assert lay.merged == 1


# --- smolora --------------------------------------------------------------------------------
def test_smolora_keeps_its_two_routings_apart(tasks):
    m = _method("smolora", tasks, experts=4)
    m.setup()
    bb, st = m.backbone, m.state
    m.before_task(tasks[0], 0)
    trainable = set(bb.trainable_parameters().values())
    layer = next(iter(m.layers.values()))
    assert {layer.router_vu.weight, layer.router_if.weight} <= trainable  # first task: learn
    m.after_task(tasks[0], 0)
    m.before_task(tasks[1], 1)
    trainable = set(bb.trainable_parameters().values())
    assert layer.router_vu.weight not in trainable and layer.expert_B.weight in trainable
    _perturb({"b": layer.expert_B.weight, "f": layer.fuse_vu.weight}, seed=2)

    # The features come from the frozen base model: the same with the experts changed.
    batch = m.prepare_batch(bb.collate(tasks[0].test[:2] + tasks[1].test[:1], train=False))
    image, text = st.image.clone(), st.text.clone()
    _perturb({"a": layer.expert_A.weight}, seed=3)
    m.prepare_batch(batch)
    torch.testing.assert_close((st.image, st.text), (image, text))

    # Each routing reads its own modality only.
    vu, if_ = layer.routes()
    st.text = torch.randn_like(text)
    torch.testing.assert_close(layer.routes()[0], vu)
    st.text, st.image = text, torch.randn_like(image)
    torch.testing.assert_close(layer.routes()[1], if_)
    st.image = image
    assert (vu.sum(-1) == 1).all() and (if_.sum(-1) == 1).all()  # top-1 each

    # The output: one VU expert and one IF expert per sample, fused per token.
    x = torch.randn(3, 4, layer.base_layer.in_features)
    r, half = layer.rank, layer.half
    a, b = layer.expert_A.weight, layer.expert_B.weight
    want = []
    for i in range(3):
        e_vu, e_if = int(vu[i].argmax()), half + int(if_[i].argmax())
        y = [x[i] @ a[e * r : (e + 1) * r].T @ b[:, e * r : (e + 1) * r].T for e in (e_vu, e_if)]
        att = torch.softmax(torch.cat([layer.fuse_vu(y[0]), layer.fuse_if(y[1])], -1), -1)
        delta = att[:, :1] * y[0] + att[:, 1:] * y[1]
        want.append(layer.base_layer(x[i]) + layer.scaling * delta)
    torch.testing.assert_close(layer(x), torch.stack(want))
    assert len(bb.generate(batch)) == 3


# --- modalprompt ----------------------------------------------------------------------------
def test_modalprompt_inserts_slots_after_bos_whatever_the_padding():
    ids = torch.tensor([[9, 9, 1, 5, 6], [1, 5, 6, 7, 9]])  # left padded; right padded
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    labels = torch.tensor([[-100, -100, -100, 5, 6], [-100, -100, 6, 7, -100]])
    types = torch.tensor([[0, 0, 0, 2, 0], [0, 2, 0, 0, 0]])  # a per-token extra (Qwen2-VL)
    batch = Batch([None, None], ids, mask, labels, {"types": types, "image": torch.ones(2, 3)})
    new, slots = insert_slots(batch, 2, 0, bos=1)
    assert new.input_ids.tolist() == [[9, 9, 1, 0, 0, 5, 6], [1, 0, 0, 5, 6, 7, 9]]
    assert new.attention_mask.tolist() == [[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]]
    assert new.labels.tolist() == [
        [-100, -100, -100, -100, -100, 5, 6],
        [-100, -100, -100, -100, 6, 7, -100],
    ]
    assert new.media["types"].tolist() == [[0, 0, 0, 0, 0, 2, 0], [0, 0, 0, 2, 0, 0, 0]]
    assert torch.equal(new.media["image"], batch.media["image"])  # per image: unchanged
    assert slots.tolist() == [[False] * 3 + [True] * 2 + [False] * 2, [0, 1, 1, 0, 0, 0, 0]]
    assert insert_slots(batch, 1, 0, bos=None)[0].input_ids.tolist()[1][:2] == [0, 1]


def test_modalprompt_picks_the_task_prompts_by_image_and_text_prototypes(tasks):
    m = _method("modalprompt", tasks, prompt_length=3)
    assert not m.stores_samples and m.train_records(tasks[0]) == tasks[0].train  # no rehearsal
    m.setup()
    bb, bank = m.backbone, m.bank
    for k in (0, 1):
        m.before_task(tasks[k], k)
        trainable = {id(p) for p in bb.trainable_parameters().values()}
        own = [bank.prompts[k], *bank.transforms[k].parameters()]
        assert trainable == {id(p) for p in own}
        batch = m.prepare_batch(bb.collate(tasks[k].train[:2], train=True))
        assert batch.input_ids.shape[1] == len(bb.collate(tasks[k].train[:2]).input_ids[0]) + 3
        out = bb.forward(batch)
        (out.loss + sum(m.loss(batch, out).values())).backward()  # the prompt learns from both
        assert bank.prompts[k].grad.abs().sum() > 0
        assert bank.transforms[k][0].weight.grad.abs().sum() > 0  # only through the alignment
        bank.zero_grad()
        m.after_task(tasks[k], k)

    probe = bb.collate([tasks[0].test[0], tasks[1].test[0]], train=False)
    image, text = bb.modality_features(probe)

    def set_prototypes(p0, p1):  # the transforms' output: their last bias, weights zero
        with torch.no_grad():
            for t, p in zip(bank.transforms, (p0, p1), strict=True):
                t[2].weight.zero_()
                t[2].bias.copy_(p)

    m.opts.image_weight = 1.0  # by image alone
    set_prototypes(image[0], image[1])
    batch = m.prepare_batch(probe)
    assert bank.fill[1] == [[0], [1]]
    m.opts.image_weight = 0.0  # by text alone, prototypes swapped
    set_prototypes(text[1], text[0])
    batch = m.prepare_batch(probe)
    assert bank.fill[1] == [[1], [0]]
    slots = bank.fill[0]
    filled = bb.input_embeddings()(batch.input_ids)  # the picked task's prompt in the slots
    torch.testing.assert_close(filled[0][slots[0]], bank.prompts[1].detach())
    torch.testing.assert_close(filled[1][slots[1]], bank.prompts[0].detach())
    assert len(bb.generate(batch)) == 2


# --- every new method on hf-native models ---------------------------------------------------
@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        "llava": save_tiny_llava(root / "llava"),
        "qwen2vl": save_tiny_qwen2vl(root / "qwen2vl"),
    }


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(  # each method once, the prototype routers on both kinds of model
    ("method", "arch"),
    [
        ("hide-llava", "llava"),
        ("disco", "qwen2vl"),
        ("cl-moe", "qwen2vl"),
        ("sefe", "llava"),
        ("keeplora", "qwen2vl"),
        ("smolora", "llava"),
        ("modalprompt", "qwen2vl"),
    ],
)
def test_runs_on_hf_native_models(tmp_path, hf_models, arch, method):
    cfg = micro_stream_config(tmp_path / "data", hf_models[arch], method)
    res = Run(cfg, tmp_path / "run").execute()
    assert res["counts"] == {n: {"scored": 6, "total": 6} for n in res["tasks"]}
    assert len(res["accuracy_matrix"]) == 2
