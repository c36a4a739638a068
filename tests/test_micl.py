"""MICL: audio/video data and validation, caption/VQA scorers, MoInCL's PTG and IKD, a micro run."""

from __future__ import annotations

import json
import math
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcl.config import load_config
from mmcl.data.benchmarks import get_benchmark
from mmcl.data.media import AUDIO_RATE, load_audio, read_video
from mmcl.data.records import load_records, validate_file
from mmcl.data.synth import sample_rng
from mmcl.data.synth.media import write_mp4, write_wav
from mmcl.data.synth.micl import make_video_qa
from mmcl.errors import DataError, MmclError
from mmcl.methods import make_method
from mmcl.methods.distill import kl_distill
from mmcl.metrics import caption_scores, caption_tokens, score_task
from mmcl.pretraining.media import media_backbone
from mmcl.runner import Run
from mmcl.scoring.micl import vqa as vqa_score
from mmcl.train import TrainSettings, _after_epoch, train


@pytest.fixture(scope="module")
def micl():
    return get_benchmark("micl-order1").load(0, 16, 6)


# --- audio and video files --------------------------------------------------------------------
def test_generated_media_load_deterministically(micl, tmp_path):
    names = [t.name for t in micl]
    assert names == [
        "audio_caption",
        "image_caption",
        "video_qa",
        "audio_qa",
        "image_qa",
        "video_caption",
    ]
    audio = next(t for t in micl if t.name == "audio_qa").test[0]
    video = next(t for t in micl if t.name == "video_qa").test[0]
    assert audio.prompt.startswith("<audio>") and video.prompt.startswith("<video>")
    samples = load_audio(audio.media["audio"][0])
    assert (
        samples.dtype == np.float32 and len(samples) == AUDIO_RATE and np.abs(samples).max() > 0.05
    )
    frames = read_video(video.media["video"][0])
    assert len(frames) == 8 and frames[0].size == (64, 64)
    again = get_benchmark("micl-order2").load(0, 16, 6)  # same tasks, same seed: same samples
    twin = next(t for t in again if t.name == "video_qa").test[0]
    assert twin.references == video.references
    for a, b in zip(read_video(twin.media["video"][0]), frames, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    captions = next(t for t in micl if t.name == "video_caption").test
    assert all(len(r.references) == 3 for r in captions)
    image_qa = next(t for t in micl if t.name == "image_qa").test
    assert all(len(r.references) == 5 for r in image_qa)


def test_video_files_hold_exactly_the_rendered_frames(tmp_path):
    """Lossless H.264: the decoded frames are the rendered ones in yuv420p, bit for bit, so a
    seed gives the same clips on every run (lossy x264 did not, on a busy machine)."""
    import av

    frames = make_video_qa(sample_rng(0, "video_qa", "train", 70), "train").videos[0]
    write_mp4(frames, tmp_path / "clip.mp4")
    for img, got in zip(frames, read_video(tmp_path / "clip.mp4"), strict=True):
        want = av.VideoFrame.from_image(img.convert("RGB")).reformat(format="yuv420p").to_image()
        assert np.array_equal(np.asarray(got), np.asarray(want))


def _bad_media(folder: Path) -> dict[str, str]:
    good = np.sin(np.arange(AUDIO_RATE) / 5).astype(np.float32) * 0.5
    write_wav(good, folder / "good.wav")
    write_wav(good[:800], folder / "short.wav")
    with wave.open(str(folder / "rate.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((good * 32767).astype("<i2").tobytes())
    (folder / "corrupt.wav").write_bytes(b"RIFF0000WAVEjunk")
    from PIL import Image

    frames = [Image.new("RGB", (64, 64), (10 * i, 0, 0)) for i in range(8)]
    write_mp4(frames, folder / "good.mp4")
    write_mp4(frames[:2], folder / "short.mp4")
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    return {
        "short.wav": "too short",
        "rate.wav": "8000 Hz; expected 16000 Hz",
        "corrupt.wav": "corrupt audio",
        "missing.wav": "audio file not found",
        "short.mp4": "too short: 2 frame(s)",
        "corrupt.mp4": "corrupt video",
        "missing.mp4": "video file not found",
    }


def test_validation_names_file_record_and_problem(tmp_path):
    expected = _bad_media(tmp_path)
    records = [
        {"id": "ok-a", "audio": "good.wav", "conversations": _conv("<audio>")},
        {"id": "ok-v", "video": "good.mp4", "conversations": _conv("<video>")},
    ]
    for name in expected:
        kind = "audio" if name.endswith(".wav") else "video"
        records.append({"id": name, kind: name, "conversations": _conv(f"<{kind}>")})
    records.append({"id": "ph", "audio": "good.wav", "conversations": _conv("no placeholder")})
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    n, problems = validate_file(path)
    assert n == len(records) and len(problems) == len(expected) + 1
    for i, (name, message) in enumerate(expected.items(), start=2):
        (line,) = [p for p in problems if f"record {i}:" in p]
        assert str(path) in line and name in line and message in line, line
    assert any("record 9" in p and "0 <audio> placeholder(s) but 1 audio" in p for p in problems)
    with pytest.raises(DataError):
        load_records(path)


def _conv(human: str) -> list[dict]:
    return [{"from": "human", "value": f"{human}\nwhat is it?"}, {"from": "gpt", "value": "x"}]


# --- scorers ----------------------------------------------------------------------------------
def _cider_d(predictions, references, sigma=6.0):
    """CIDEr-D written out from Vedantam et al. (2015) and pycocoevalcap's notes, independently
    of its code: tf-idf n-gram vectors (n = 1..4, idf over the references of each sample),
    clipped cosine, Gaussian length penalty on bigram counts, x10."""

    def grams(text):
        w = text.split()
        return [Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1)) for n in range(1, 5)]

    refs = [[grams(r) for r in rs] for rs in references]
    df = Counter(g for rs in refs for g in set().union(*[set(c) for r in rs for c in r]))
    log_n = math.log(len(references))

    def vec(counts):
        return [
            {g: tf * (log_n - math.log(max(1.0, df[g]))) for g, tf in c.items()} for c in counts
        ]

    out = []
    for pred, rs in zip(predictions, refs, strict=True):
        hyp = grams(pred)
        vh, total = vec(hyp), 0.0
        for r in rs:
            vr = vec(r)
            delta = sum(hyp[1].values()) - sum(r[1].values())
            for n in range(4):
                dot = sum(min(v, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, v in vh[n].items())
                nh = math.sqrt(sum(v * v for v in vh[n].values()))
                nr = math.sqrt(sum(v * v for v in vr[n].values()))
                cos = dot / (nh * nr) if nh and nr else dot
                total += cos * math.exp(-(delta**2) / (2 * sigma**2)) / 4
        out.append(10 * total / len(rs))
    return out


def test_cider_against_hand_computed_and_an_independent_formula():
    # By hand: two samples, idf of every n-gram = log 2. Sample 0 is exact: unigram and bigram
    # cosines 1, no 3/4-grams -> (1 + 1 + 0 + 0) / 4 x 10 = 5. Sample 1 shares "blue" of two
    # unigrams (cosine 1/2) and no bigram -> 0.5 / 4 x 10 = 1.25. Corpus CIDEr-D 3.125.
    scores, task, extra = score_task(
        "cider", ["Red circle.", "blue circle"], [["red circle"], ["blue square"]]
    )
    assert scores == pytest.approx([0.5, 0.125])
    assert task == pytest.approx(31.25) and extra["cider"] == pytest.approx(312.5)
    preds = [
        "a red circle above a blue square.",
        "a green diamond moves left fast",
        "you hear a high bell twice",
        "nothing",
    ]
    refs = [
        ["a red circle above a blue square.", "a blue square below a red circle."],
        ["a green diamond moves left slow.", "the green diamond goes left slow."],
        ["a high bell rings twice.", "you hear a high bell twice.", "a high bell sounds twice."],
        ["a low tone beeps once."],
    ]
    per, extra = caption_scores(preds, refs)
    expected = _cider_d(
        [caption_tokens(p) for p in preds], [[caption_tokens(r) for r in rs] for rs in refs]
    )
    assert [10 * s for s in per] == pytest.approx(expected, rel=1e-6)
    assert per[3] == 0.0 and per[0] > per[1] > 0


def test_bleu_and_rouge_beside_cider():
    refs = [["a red circle above a blue square"], ["a low tone beeps three times"]]
    _, perfect = caption_scores([r[0] for r in refs], refs)
    assert perfect["bleu4"] == pytest.approx(100, abs=1e-3)
    assert perfect["rouge_l"] == pytest.approx(100, abs=1e-3)
    _, none = caption_scores(["zzz", "qqq"], refs)
    assert none["bleu4"] < 1e-3 and none["rouge_l"] == 0 and none["cider"] == 0
    _, half = caption_scores(["a red circle", "a low tone"], refs)
    assert 0 < half["rouge_l"] < 100


def test_vqa_score_is_min_one_matches_over_three():
    refs = ["two", "two", "2", "three", "3"]
    assert vqa_score("two", refs) == 1.0  # number words: 3 matches
    assert vqa_score("3", refs) == pytest.approx(2 / 3)
    # articles go: "a circle" matches "circle"
    assert vqa_score("circle", ["circle", "a circle", "circles", "circles", "circles"]) == (
        pytest.approx(2 / 3)
    )
    assert vqa_score("four", refs) == 0.0
    assert score_task("vqa", ["two", "3"], [refs, refs])[1] == pytest.approx(100 * (1 + 2 / 3) / 2)


# --- MoInCL -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audio_tasks(micl):
    by_name = {t.name: t for t in micl}
    return [by_name["audio_caption"], by_name["video_qa"], by_name["audio_qa"]]


def _moincl(tasks, **options):
    backbone = media_backbone("micro", seed=0)
    backbone.max_new_tokens = 8
    return make_method("moincl", options, backbone, [t.spec for t in tasks], seed=0)


@torch.no_grad()
def _perturb(params, scale=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for p in params.values():
        p.add_(scale * torch.randn(p.shape, generator=gen))


def test_ptg_targets_come_from_the_frozen_previous_model(audio_tasks):
    m = _moincl(audio_tasks, ptg_fraction=0.5)
    m.setup()
    assert m.old_types(0) == [] and m.old_types(1) == [] and m.old_types(2) == ["caption"]
    _perturb(m.backbone.adapter_parameters("main"))  # stands in for training on tasks 0-1
    m.before_task(audio_tasks[2], 2)
    pseudo = m.train_records(audio_tasks[2])[len(audio_tasks[2].train) :]
    assert pseudo == m.pseudo and 0 < len(pseudo) <= 8
    captions = set(m.instructions["caption"]["audio"])
    for rec in pseudo:
        assert rec.meta["ptg"] and rec.media["audio"] and "~ptg-caption" in rec.id
        assert rec.prompt.split("\n", 1)[1] in captions
    # The targets are the snapshot's greedy answers: the moved live model answers otherwise,
    # and putting the snapshot back gives the targets again.
    prompts = [r.with_turns([(r.prompt, "")]) for r in pseudo]
    live = m.backbone.adapter_parameters("main")
    _perturb(live, seed=1)
    moved = m.backbone.generate(m.backbone.collate(prompts, train=False))
    assert moved != [r.answer for r in pseudo]
    with torch.no_grad():
        for name, p in live.items():
            p.copy_(m.teacher[name])
    again = m.backbone.generate(m.backbone.collate(prompts, train=False))
    assert again == [r.answer for r in pseudo]


def test_ikd_and_ptg_losses_are_zero_when_student_equals_teacher(audio_tasks):
    m = _moincl(audio_tasks)
    m.setup()
    _perturb(m.backbone.adapter_parameters("main"))
    m.before_task(audio_tasks[2], 2)
    assert m.ikd_records and all(not r.media for r in m.ikd_records)
    assert all("<" not in r.prompt for r in m.ikd_records)  # text only
    batch = m.backbone.collate(list(audio_tasks[2].train[:4]) + m.pseudo[:4], train=True)
    out = m.backbone.forward(batch)
    terms = m.loss(batch, out)
    assert set(terms) == {"ptg", "ikd"}
    assert terms["ptg"].item() == pytest.approx(0, abs=1e-5)
    assert terms["ikd"].item() == pytest.approx(0, abs=1e-5)
    _perturb(m.backbone.adapter_parameters("main"), seed=2)  # the student moves away
    terms = m.loss(batch, m.backbone.forward(batch))
    assert terms["ptg"].item() > 1e-4 and terms["ikd"].item() > 1e-4
    terms["ikd"].backward()
    assert any(p.grad is not None for p in m.backbone.adapter_parameters("main").values())


def test_ikd_on_the_instruction_is_the_published_form(audio_tasks):
    """ikd_target=instruction: no teacher answers; the KL is on the instruction's own next
    tokens (every position of an unpadded prompt), as the published code's IKD."""
    m = _moincl(audio_tasks, ikd_target="instruction", ikd_batch_size=3, ptg_fraction=0)
    m.setup()
    _perturb(m.backbone.adapter_parameters("main"))
    m.before_task(audio_tasks[2], 2)
    assert m.ikd_records and all(r.answer == "" and not r.media for r in m.ikd_records)
    batch = m.backbone.collate(list(audio_tasks[2].train[:2]), train=True)
    assert m.loss(batch, m.backbone.forward(batch))["ikd"].item() == pytest.approx(0, abs=1e-5)
    live = m.backbone.adapter_parameters("main")
    _perturb(live, seed=2)
    m.ikd_records = m.ikd_records[:1]  # one instruction, drawn 3 times: no padding
    got = m.loss(batch, m.backbone.forward(batch))["ikd"]
    ib = m.backbone.collate(m.ikd_records, train=False)
    student = m.backbone.forward(ib).logits
    with torch.no_grad():
        moved = {n: p.clone() for n, p in live.items()}
        for n, p in live.items():
            p.copy_(m.teacher[n])
        teacher = m.backbone.forward(ib).logits
        for n, p in live.items():
            p.copy_(moved[n])
    every = torch.ones(student.shape[:2], dtype=torch.bool)[:, :-1]
    want = kl_distill(student[:, :-1], teacher[:, :-1], every, m.opts.ikd_temperature)
    assert got.item() > 1e-4 and got.item() == pytest.approx(want.item(), rel=1e-4)


def test_fusion_moves_the_adapter_towards_the_teacher_after_each_epoch(audio_tasks):
    m = _moincl(audio_tasks, fusion=[1.0, 0.25], ptg_fraction=0, ikd_weight=0)
    m.setup()
    live = m.backbone.adapter_parameters("main")
    _perturb(live)
    m.before_task(audio_tasks[1], 1)  # fusion 1.0 at this step: the weights stay
    _perturb(live, seed=1)
    before = {n: p.detach().clone() for n, p in live.items()}
    m.after_epoch(0)
    assert all(torch.equal(p, before[n]) for n, p in live.items())
    m.after_task(audio_tasks[1], 1)
    m.before_task(audio_tasks[2], 2)
    teacher = {n: t.clone() for n, t in m.teacher.items()}
    _perturb(live, seed=2)  # stands in for an epoch of training
    trained = {n: p.detach().clone() for n, p in live.items()}
    m.after_epoch(0)
    for n, p in live.items():
        assert torch.allclose(p, 0.25 * trained[n] + 0.75 * teacher[n], atol=1e-6)


def test_the_loop_calls_after_epoch_after_each_pass(audio_tasks):
    m = _moincl(audio_tasks)
    m.setup()
    calls = []
    m.after_epoch = calls.append
    records = list(audio_tasks[0].train[:16])  # two batches a pass; 2.5 passes: 5 batches
    train(m.backbone, records, TrainSettings(epochs=2.5, batch_size=8), 0, m)
    assert calls == [0, 1, 2]  # the last pass is partial


def test_a_hook_that_moves_weights_stops_under_fsdp():
    class Mover:
        name = "mover"

        def after_epoch(self, epoch):
            with torch.no_grad():
                weight.add_(1.0)

    weight = torch.nn.Parameter(torch.zeros(2))
    _after_epoch(Mover(), 0, [], "t")  # not sharded: nothing is watched
    with pytest.raises(MmclError, match="mover moves the weights.*FSDP"):
        _after_epoch(Mover(), 0, [weight], "t")


def test_fusion_settings_are_checked(audio_tasks):
    with pytest.raises(MmclError, match="fusion lists 1 weights.*needs 2"):
        _moincl(audio_tasks, fusion=[0.5])
    with pytest.raises(MmclError, match="fusion"):
        _moincl(audio_tasks, fusion=1.5)


def test_moincl_micro_run_on_micl_order1(tmp_path):
    overrides = {
        "benchmark": "micl-order1",
        "method.name": "moincl",
        "model.preset": "micro",
        "tasks": ["audio_caption", "image_caption", "audio_qa"],
        "data.train_size": 16,
        "data.test_size": 6,
        "train.epochs": 1,
        "train.batch_size": 8,
        "eval.max_new_tokens": 8,
    }
    res = Run(load_config(None, overrides), tmp_path).execute()
    assert res["task_metric"] == {
        "audio_caption": "cider",
        "image_caption": "cider",
        "audio_qa": "exact_match",
    }
    assert res["counts"]["audio_qa"] == {"scored": 6, "total": 6}
    assert res["method_info"]["pseudo_targets_per_task"][:2] == [0, 0]
    assert res["method_info"]["pseudo_targets_per_task"][2] > 0  # audio seen with captions
    assert set(res["task_extra"]["per_step"][0]["audio_caption"]) >= {"cider", "bleu4", "rouge_l"}
    html = (tmp_path / "report.html").read_text()
    assert "<audio controls" in html and "data:audio/" in html
    ckpt = json.loads((tmp_path / "checkpoints" / "step2" / "state.json").read_text())
    assert all("." not in k for k in ckpt["method_state"]["stats"])
