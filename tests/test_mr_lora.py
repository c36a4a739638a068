"""MR-LoRA: micro end-to-end runs with both routers, frozen experts, mixed-adapter batches equal
per-sample inference, routing fallback, and kill-and-resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmcl.config import load_config
from mmcl.data.benchmarks import TaskSpec, get_benchmark
from mmcl.errors import MmclError
from mmcl.methods import make_method
from mmcl.methods.mr_lora import MrLora
from mmcl.methods.router_samples import balanced_set
from mmcl.models.base import LoraSpec
from mmcl.models.last_position import LastPositionLayer
from mmcl.pretraining.base import pretrained_backbone
from mmcl.runner import Run

# Small router settings keep the micro runs fast; the mechanism is the same.
FAST = {"method.router_samples": 8, "method.router_train": {"epochs": 2, "batch_size": 8}}


def _run(out, micro_overrides, router, resume=False):
    overrides = {**micro_overrides, **FAST, "method.name": "mr-lora", "method.router": router}
    return Run(load_config(None, overrides), out).execute(resume=resume)


@pytest.fixture
def micro_stream():
    return get_benchmark("ability").load(0, 16, 6, ["ocr", "gui"])


def _spy_on_experts(monkeypatch) -> dict:
    """Snapshot the first expert ("ocr") right after every step; keep the method object."""
    seen: dict = {}
    real_after = MrLora.after_task

    def spy(self, task, step):
        real_after(self, task, step)
        seen["method"] = self
        ocr = self.backbone.adapter_parameters("ocr")
        seen[step] = {k: p.detach().clone() for k, p in ocr.items()}

    monkeypatch.setattr(MrLora, "after_task", spy)
    return seen


def _check_run(res: dict, out, router: str, seen: dict) -> None:
    routing = res["routing"]
    assert routing["router"] == router and len(routing["accuracy"]) == 2
    assert all(0 <= a <= 100 for a in routing["accuracy"])
    assert routing["router_samples"] == 16  # 8 record ids per seen task
    assert routing["routed"] == 24 and 0 <= routing["fallbacks"] <= 24  # every test sample
    if router == "prototype":
        assert routing["fallbacks_per_step"] == [0, 0]
    cost = routing["cost"]
    assert cost["probe_samples"] == 16
    assert cost["single_adapter_samples_per_s"] > 0 and cost["routed_samples_per_s"] > 0
    assert res["counts"]["gui"] == {"scored": 12, "total": 12}
    rows = (out / "predictions" / "step1" / "ocr.jsonl").read_text().splitlines()
    assert all(json.loads(r)["route"] in ("ocr", "gui") for r in rows)

    # the ocr expert trained in step 0, then never changed; nothing stays trainable
    method = seen["method"]
    final = method.backbone.adapter_parameters("ocr")
    assert any(p.abs().sum() > 0 for k, p in final.items() if "lora_B" in k)
    assert all(torch.equal(final[k], seen[0][k]) for k in final)
    assert not method.backbone.trainable_parameters()
    experts = {"ocr", "gui"}
    assert set(method.backbone.adapters) == experts | ({"router"} if router == "mllm" else set())


def test_micro_run_with_the_prototype_router(tmp_path, micro_overrides, monkeypatch):
    seen = _spy_on_experts(monkeypatch)
    res = _run(tmp_path / "proto", micro_overrides, "prototype")
    _check_run(res, tmp_path / "proto", "prototype", seen)


def test_micro_run_with_the_mllm_router_and_kill_resume(
    tmp_path, micro_overrides, monkeypatch, killed_after_first_step
):
    """A full run (checked like the prototype one), then a run killed after step 0 and resumed:
    experts, router weights, routing samples and counters come back, so the results match."""
    seen = _spy_on_experts(monkeypatch)
    full = _run(tmp_path / "full", micro_overrides, "mllm")
    _check_run(full, tmp_path / "full", "mllm", seen)
    with killed_after_first_step():  # stops right after step 0's checkpoint
        _run(tmp_path / "killed", micro_overrides, "mllm")
    resumed = _run(tmp_path / "killed", micro_overrides, "mllm", resume=True)
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    for key in ("accuracy", "per_step", "fallbacks_per_step", "router_samples"):
        assert resumed["routing"][key] == full["routing"][key], key


def test_mixed_adapter_batch_equals_per_sample_inference(micro_stream):
    backbone = pretrained_backbone("micro")
    names = ["e0", "e1", "e2"]
    torch.manual_seed(0)
    for name in names:
        backbone.add_lora(name, LoraSpec(r=4))
    with torch.no_grad():  # fresh LoRA B is zero: give every adapter its own effect
        for name in names:
            for key, p in backbone.adapter_parameters(name).items():
                if "lora_B" in key:
                    p.normal_(0, 0.3)
    backbone.use_adapters(names[0])
    records = [r for t in micro_stream for r in t.test]
    routes = [(names + ["__base__"])[k % 4] for k in range(len(records))]
    batch = backbone.collate(records, train=False)
    backbone.model.eval()
    with torch.no_grad():
        mixed_logits = backbone.forward(batch, adapter_names=routes).logits
    mixed = backbone.generate(batch, adapter_names=routes, max_new_tokens=6)
    order = sorted(range(len(routes)), key=routes.__getitem__)
    moved = backbone.reordered(batch, order)  # generate's path: each adapter's rows a slice
    for b, names, want in ((batch, routes, mixed_logits), (moved, sorted(routes), None)):
        with backbone.rows_adapted(names) as kw, torch.no_grad():
            assert kw == {}  # one pair of matmuls per adapter, not peft's split
            got = backbone.forward(b).logits
        torch.testing.assert_close(got, mixed_logits[order] if want is None else want)
    backbone.add_lora("wide", LoraSpec(r=8))  # another rank
    wide = [*routes[:-1], "wide"]
    with torch.no_grad():
        peft_path = backbone.forward(batch, adapter_names=wide).logits
        with backbone.rows_adapted(wide) as kw:
            assert kw == {}
            torch.testing.assert_close(backbone.forward(batch).logits, peft_path)
    backbone.remove_adapter("wide")
    single, per_adapter = [], set()
    for k, (rec, name) in enumerate(zip(records, routes, strict=True)):
        one = backbone.collate([rec], train=False)
        backbone.use_adapters(None if name == "__base__" else name)
        with torch.no_grad():
            logits = backbone.forward(one).logits[0]
        width = logits.shape[0]  # left padding: the sample's tokens are the batch row's last
        torch.testing.assert_close(mixed_logits[k, -width:], logits, atol=1e-4, rtol=1e-4)
        single.append(backbone.generate(one, max_new_tokens=6)[0])
        if k == 0:  # the adapters really differ on the same sample
            for other in names:
                backbone.use_adapters(other)
                per_adapter.add(backbone.generate(one, max_new_tokens=6)[0])
    assert mixed == single
    assert len(per_adapter) > 1


def test_routing_fallback_is_counted_and_deterministic(micro_stream, monkeypatch):
    backbone = pretrained_backbone("micro")
    options = {"router_samples": 6, "router_train": {"epochs": 1, "batch_size": 6}}
    method = make_method("mr-lora", options, backbone, [t.spec for t in micro_stream], 0)
    monkeypatch.setattr(MrLora, "measure_cost", lambda self, records: {})
    method.setup()
    for step, task in enumerate(micro_stream):
        method.before_task(task, step)  # experts stay untrained: only routing is under test
        method.after_task(task, step)
    prompt = method.routing_prompt(micro_stream[1].test[0])
    assert prompt.count("<image>") == 1 and "A. " in prompt and "B. " in prompt
    assert micro_stream[0].spec.description in prompt
    _, firsts = method.letter_tokens()
    assert len(set(firsts)) == 2

    batch = backbone.collate(micro_stream[1].test[:3], train=False)
    scores, named = method.router_scores(batch)
    assert scores.shape == (3, 2) and named.shape == (3,)
    assert torch.equal(method.router_scores(batch)[0], scores)  # deterministic
    # the router's top tokens: no letter, no letter, a letter; the best letters: gui, ocr, gui
    fake = (torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), torch.tensor([False, False, True]))
    monkeypatch.setattr(method, "router_scores", lambda batch: fake)
    assert method.predict(batch) == ["gui", "ocr", "gui"]
    assert method.report()["routing"]["fallbacks"] == 2
    assert method.report()["routing"]["routed"] == 3


def test_router_prefix_cache_equals_a_full_forward(micro_stream):
    """The routing prompts share the expert list: run once and reused from the KV cache, it must
    give the scores of a plain forward pass over each whole prompt (LoRA active)."""
    backbone = pretrained_backbone("micro")
    backbone.add_lora("probe", LoraSpec(r=4, alpha=8))
    with torch.no_grad():  # a non-zero LoRA, so that the adapter really takes part
        for name, p in backbone.adapter_parameters("probe").items():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    backbone.use_adapters("probe")
    shared = "experts: A. reading words B. choosing actions\nwhich expert? answer with its letter."
    records = [r.with_turns([(f"{shared}\n{r.prompt}", "?")]) for r in micro_stream[1].test[:4]]
    batch = backbone.collate(records, train=False)
    cached = backbone.next_token_logits(batch)
    full = backbone.forward(batch).logits[:, -1]
    assert cached.shape == full.shape
    assert torch.allclose(cached, full, atol=1e-4), (cached - full).abs().max()
    with backbone.first_layers(1):  # a shallow router's pass: the same, on one layer
        shallow = backbone.next_token_logits(batch)
        assert torch.allclose(shallow, backbone.forward(batch).logits[:, -1], atol=1e-4)
    assert not torch.allclose(shallow, full, atol=1e-2)
    for n, whole in ((1, shallow), (None, full)):  # the last layer at the last position only
        with backbone.first_layers(n, read_last=True):
            assert isinstance(backbone.core.lm.model.layers[-1], LastPositionLayer)
            assert torch.allclose(backbone.next_token_logits(batch), whole, atol=1e-4)
            with backbone.sharing_prefix(shared):  # after a base-read prefix's cache, too
                read_last = backbone.next_token_logits(batch)
        with backbone.sharing_prefix(shared), backbone.first_layers(n):
            assert torch.allclose(read_last, backbone.next_token_logits(batch), atol=1e-4)
    assert len(backbone.core.lm.model.layers) > 1  # whole again


def _trainable_router(backbone) -> dict:
    """A router LoRA that already changes the model (fresh B is zero), active and trainable."""
    backbone.add_lora("router", LoraSpec(r=4, alpha=8))
    params = backbone.adapter_parameters("router")
    with torch.no_grad():
        for name, p in params.items():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    backbone.use_adapters("router")
    backbone.set_trainable(params)
    return params


def test_router_training_with_a_shared_prefix_equals_a_full_forward(micro_stream):
    """Training the router runs the shared expert list once per batch: the loss and the LoRA's
    gradients must be those of plain forward passes over the whole prompts."""
    backbone = pretrained_backbone("micro")
    specs = [t.spec for t in micro_stream]
    method = make_method("mr-lora", {"router_samples": 4}, backbone, specs, 0)
    method.setup()
    for task in micro_stream:
        method.experts.append(task.name)
        method.samples[task.name] = task.train[:4]
    params = _trainable_router(backbone)
    batch = backbone.collate(method.router_records(1), train=True)
    shared = backbone._shared_prefix_logits(batch)  # the expert list runs once: not scored
    assert shared is not None and shared.shape[1] < batch.input_ids.shape[1]
    results = []
    for share in (False, True):
        backbone.share_prefix = share
        loss = backbone.forward(batch).loss
        grads = torch.autograd.grad(loss, list(params.values()))
        results.append((loss.detach(), grads))
    (plain, g_plain), (shared, g_shared) = results
    assert torch.allclose(plain, shared, atol=1e-5), (plain, shared)
    for a, b in zip(g_plain, g_shared, strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_router_trains_on_a_fixed_budget_per_step(micro_stream):
    """The router's training set after a step: every routing sample of the new task and a
    seeded draw of `router_replay` earlier ones, whatever the number of earlier tasks."""
    backbone = pretrained_backbone("micro")
    specs = [t.spec for t in micro_stream]
    method = make_method("mr-lora", {"router_replay": 3}, backbone, specs, 0)
    for task in micro_stream:
        method.experts.append(task.name)
        method.samples[task.name] = task.train[:5]
    records = method.router_records(1)
    answers = [r.turns[-1][1] for r in records]
    assert answers == [method.letter("gui")] * 5 + [method.letter("ocr")] * 3
    prompts = [r.prompt for r in records]
    assert prompts == [r.prompt for r in method.router_records(1)]  # seeded
    assert prompts[5:] != [r.prompt for r in method.router_records(2)][5:]  # a draw per step
    # Fewer earlier samples than their share: repeated, each answer weighing alike (the new
    # one gets the odd sample), so every step runs the same number of batches.
    method.opts = method.opts.model_copy(update={"router_replay": 8})
    answers = [r.turns[-1][1] for r in method.router_records(1)]
    gui, ocr = method.letter("gui"), method.letter("ocr")
    assert answers == [gui] * 7 + [ocr] * 6


def test_router_set_gives_each_answer_an_equal_share():
    """A revisit's earlier visits do not add to its answer's weight; a new task's samples are
    all in even where they exceed an equal share."""
    rng = np.random.default_rng(0)
    pools = {"a": list("aaaaaaaa"), "b": list("bbbb"), "c": list("cccc")}  # "a" visited twice
    chosen = balanced_set(list("AAAA"), pools, "a", 12, rng)
    assert sorted(chosen) == sorted("AAAA" + "bbbb" + "cccc")
    chosen = balanced_set(list("AAAA"), pools, "a", 15, rng)
    assert sorted(chosen) == sorted("AAAA" + "a" + "bbbbb" + "ccccc")
    chosen = balanced_set(list("DDDDDD"), pools, "d", 9, rng)  # a new answer, large
    assert sorted(chosen) == sorted("DDDDDD" + "a" + "b" + "c")
    chosen = balanced_set(list("AB"), {}, "x", 5, rng)  # the first step: repeated to size
    assert chosen[:2] == ["A", "B"] and sorted(chosen) in (list("AAABB"), list("AABBB"))


def test_experts_that_share_a_description_are_one_choice(micro_stream):
    """A stream that visits a task again (the same description): the router is taught to
    name the newest expert of that description for every visit's samples, and routing counts
    as right when it picks an expert of the same description."""
    ocr, gui = (t.spec for t in micro_stream)
    again = TaskSpec("ocr_2", ocr.modality, ocr.metric, ocr.description)
    backbone = pretrained_backbone("micro")
    method = make_method("mr-lora", {"router_replay": 8}, backbone, [ocr, gui, again], 0)
    method.experts = ["ocr", "gui"]
    method.samples = {"ocr": micro_stream[0].train[:4], "gui": micro_stream[1].train[:4]}
    assert [method.answering(n) for n in ("ocr", "gui")] == ["ocr", "gui"]
    method.experts.append("ocr_2")
    method.samples["ocr_2"] = micro_stream[0].train[4:8]
    assert [method.answering(n) for n in ("ocr", "gui", "ocr_2")] == ["ocr_2", "gui", "ocr_2"]
    letters = {r.turns[-1][1] for r in method.router_records(2)}
    assert letters == {method.letter("ocr_2"), method.letter("gui")}


def test_an_expert_list_read_by_the_base_runs_once(micro_stream):
    """In `sharing_prefix(expert list)` the list is read by the base model, once in the whole
    context, and the router's LoRA reads each row after it, whatever else the rows of a batch
    share: each row's scores are those of the base model's pass over the list followed by the
    router's over the rest; the LoRA gets gradients; adapters and trainability are as they
    were; a prompt that does not start with the list is refused."""
    backbone = pretrained_backbone("micro")
    method = make_method("mr-lora", {}, backbone, [t.spec for t in micro_stream], 0)
    for task in micro_stream:
        method.experts.append(task.name)
    params = _trainable_router(backbone)
    records = [
        method.routing_record(r) for r in micro_stream[0].test[:2] + micro_stream[1].test[:2]
    ]
    lm, core = backbone.core.lm, backbone.core
    calls = []
    hook = lm.register_forward_pre_hook(
        lambda m, a, kw: calls.append(kw["inputs_embeds"].shape), with_kwargs=True
    )
    with backbone.sharing_prefix(method.expert_list()):
        scores = [
            backbone.next_token_logits(backbone.collate(records[k : k + 2], False)) for k in (0, 2)
        ]
        loss = backbone.forward(backbone.collate(records, train=True)).loss
    hook.remove()
    prefix_runs = [c for c in calls if c[0] == 1]
    assert len(prefix_runs) == 1 and len(calls) == 4  # the list once, then 3 batches of rows
    grads = torch.autograd.grad(loss, list(params.values()))
    assert all(g.abs().sum() > 0 for g in grads if g is not None)
    assert backbone.active_adapters == ["router"]
    assert {n for n, p in backbone.core.named_parameters() if p.requires_grad} == set(params)
    # The reference, one row at a time: the base model over the list, the router over the rest.
    ids = backbone.collate(records[:1], False).input_ids[0]
    with backbone.sharing_prefix(method.expert_list()):
        shared = backbone._shared_length([ids])
        with pytest.raises(MmclError, match="does not start with the shared text"):
            backbone.next_token_logits(backbone.collate(micro_stream[0].test[:2], False))
    with torch.no_grad():
        backbone.use_adapters(None)
        cache = lm(inputs_embeds=core.embed(ids[None, :shared], {}), use_cache=True).cache
        backbone.use_adapters("router")
        batch = backbone.collate(records[:1], False)
        # The media read the whole prompt, the list too (as in a full forward pass).
        rest = core.embed(ids[None, shared:], batch.media, prompt_ids=ids[None])
        want = lm(inputs_embeds=rest, cache=cache).logits[0, -1]
    assert torch.allclose(scores[0][0], want, atol=1e-4), (scores[0][0] - want).abs().max()
    # A shallow router (`router_layers`) keeps the keys and values of the layers it runs.
    with backbone.sharing_prefix(method.expert_list()), backbone.first_layers(1):
        shallow = backbone.next_token_logits(backbone.collate(records[:2], False))
    assert shallow.shape == scores[0].shape and not torch.allclose(shallow, scores[0])


def test_media_encoded_once_give_the_same_answers(micro_stream):
    """Router and expert read the media features that `encode_media` keeps on the batch: the
    answers are those of a batch that encodes them itself; a vision LoRA (features that
    depend on the adapter) turns the sharing off."""
    backbone = pretrained_backbone("micro")
    backbone.add_lora("expert", LoraSpec(r=4, alpha=8))
    backbone.use_adapters("expert")
    records = micro_stream[0].test[:4]
    plain = backbone.collate(records, train=False)
    shared = backbone.encode_media(backbone.collate(records, train=False))
    assert set(shared.encoded) == {"image"} and not plain.encoded
    assert backbone.generate(shared) == backbone.generate(plain)
    backbone.add_lora("seeing", LoraSpec(r=4, alpha=8, vision=True))
    assert not backbone.encode_media(backbone.collate(records, train=False)).encoded


def test_task_names_that_clash_with_the_router_are_refused(micro_stream):
    spec = micro_stream[0].spec
    clash = type(spec)("router", spec.modality, spec.metric, spec.description)
    with pytest.raises(MmclError, match="router"):
        make_method("mr-lora", {}, pretrained_backbone("micro"), [clash], 0)


def test_prototype_router_state_survives_a_checkpoint(micro_stream, monkeypatch):
    from mmcl.checkpoint import join_state, split_state

    monkeypatch.setattr(MrLora, "measure_cost", lambda self, records: {})
    specs = [t.spec for t in micro_stream]
    method = make_method("mr-lora", {"router": "prototype"}, pretrained_backbone("micro"), specs, 0)
    for step, task in enumerate(micro_stream):
        method.before_task(task, step)
        method.after_task(task, step)
    records = [r for t in micro_stream for r in t.test]
    batch = method.backbone.collate(records, train=False)
    routes, fallbacks = method.route(batch)
    assert fallbacks == 0 and set(routes) <= {"ocr", "gui"}

    tensors, rest = split_state(method.state_dict())
    again = make_method("mr-lora", {"router": "prototype"}, pretrained_backbone("micro"), specs, 0)
    again.load_state_dict(join_state(tensors, rest))
    again.restore_tasks(micro_stream)
    assert again.experts == ["ocr", "gui"] and set(again.backbone.adapters) == {"ocr", "gui"}
    assert again.sample_ids == method.sample_ids and again.samples == method.samples
    assert again.route(again.backbone.collate(records, train=False)) == (routes, 0)
