"""MICL's published data layout: tiny annotation dicts and media in MICL_TMLR's folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mmcl.cli import app
from mmcl.data.benchmarks import get_benchmark
from mmcl.data.micl_layout import read_npy
from mmcl.data.synth.media import write_mp4, write_wav
from mmcl.data.synth.micl import ORDER_1
from mmcl.errors import DataError, MmclError
from mmcl.methods.moincl import task_type


def _save(root: Path, name: str, obj: dict) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    np.save(root / "data" / name, obj, allow_pickle=True)  # as the published files were saved


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)


def _audio(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(np.zeros(1600, dtype=np.float32), path)


def _video(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4([Image.new("RGB", (16, 16), (0, 0, 200))] * 2, path)


@pytest.fixture(scope="module")
def micl_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("MICL_TMLR")
    captions = {  # annotation file: (media under dataset/, writer, {split: {id: caption(s)}})
        "all_img_id_caption_dict.npy": (
            "flickr30k/flickr30k-images/{}.jpg",
            _image,
            {"train": {"10": ["A red square.", "red box"]}, "test": {"11": "a red square"}},
        ),
        "all_vid_caption_dict.npy": (
            "MSRVTT/videos/all/{}.mp4",
            _video,
            {"train": {"v1": "blue"}, "test": {"v2": "blue"}},
        ),
        "all_audio_id_cap_dict.npy": (
            "AudioCaps/all_audios/{}.wav",
            _audio,
            {"train": {"a1": "hum"}, "test": {"a2": "hum"}},
        ),
    }
    for name, (media, write, data) in captions.items():
        _save(root, name, data)
        for key in [k for split in data.values() for k in split]:
            write(root / "dataset" / media.format(key))
    okvqa = "coco/OK-VQA/{0}/COCO_{0}_000000000042.jpg"
    questions = {  # annotation file: (question, media under dataset/, writer)
        "question_id_img_id_quesion_answer_dict.npy": (
            {"img_id": 42, "question": "What colour?", "answers": ["red"] * 6 + ["crimson"] * 4},
            [okvqa.format("train2014"), okvqa.format("val2014")],
            _image,
        ),
        "question_id_video_id_quesion_answer_dict.npy": (
            {"video_id": "c.avi", "question": "what moves?", "answer": "dot"},
            ["MSVD/MSVD-QA/video/c.avi"],
            _video,
        ),
        "question_id_audio_id_quesion_answer_dict.npy": (
            {"audio_id": "s.wav", "question": "is it loud?", "answer": "no"},
            ["Clotho-AQA/audio_files/s.wav"],
            _audio,
        ),
    }
    for n, (name, (item, media, write)) in enumerate(questions.items()):
        _save(root, name, {"train": {2 * n + 1: item}, "test": {2 * n + 2: item}})
        for m in media:
            write(root / "dataset" / m)
    return root


def test_micl_layout_reads_the_six_tasks(micl_root):
    tasks = get_benchmark("micl-tmlr-order1", micl_root).load(seed=0)
    assert tuple(t.name for t in tasks) == ORDER_1
    by = {t.name: t for t in tasks}
    assert {n: t.spec.metric for n, t in by.items()} == {
        "audio_caption": "cider-micl",
        "image_caption": "cider-micl",
        "video_qa": "exact",
        "audio_qa": "exact",
        "image_qa": "vqa",
        "video_caption": "cider-micl",
    }
    cap = by["image_caption"].train[0]
    assert cap.prompt == "<image>\ndescribe the image." and cap.answer == "A red square."
    assert cap.references == ("A red square.", "red box")
    qa_train, qa_test = by["image_qa"].train[0], by["image_qa"].test[0]
    assert qa_train.answer == "red" and len(qa_test.references) == 10
    assert qa_train.media["image"][0].parent.name == "train2014"
    assert qa_test.media["image"][0].name == "COCO_val2014_000000000042.jpg"
    video = by["video_qa"].test[0].media["video"][0]
    assert video == micl_root / "dataset/MSVD/MSVD-QA/video/c.avi"
    assert by["audio_qa"].test[0].prompt == "<audio>\nis it loud?"
    assert task_type(by["video_caption"].spec) == "caption"
    assert task_type(by["audio_qa"].spec) == "qa"


def test_micl_layout_names_missing_media_and_bad_files(micl_root, tmp_path):
    root = tmp_path / "copy"
    root.mkdir()
    (root / "data").symlink_to(micl_root / "data", target_is_directory=True)  # no media
    with pytest.raises(DataError) as err:
        get_benchmark("micl-tmlr-order2", root).load(seed=0, order=["image_caption"])
    assert str(root / "dataset/flickr30k/flickr30k-images/10.jpg") in str(err.value)
    with pytest.raises(MmclError) as err:
        get_benchmark("micl-tmlr-order2", tmp_path / "none").load(seed=0)
    msg = str(err.value)
    assert "data/all_vid_caption_dict.npy" in msg and "dataset/Clotho-AQA/audio_files/" in msg


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_annotation_files_cannot_run_code(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, {"train": _Evil()}, allow_pickle=True)
    with pytest.raises(MmclError, match="refusing to load"):
        read_npy(path)
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros(3))
    with pytest.raises(MmclError, match="not MICL's annotation dict"):
        read_npy(plain)


def test_score_reads_micl_test_records_from_the_layout(micl_root, tmp_path):
    preds = tmp_path / "answers.jsonl"
    preds.write_text('{"question_id": 2, "text": "Red."}\n')
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        ["score", "--benchmark", "micl-tmlr-order2", "--task", "image_qa"]
        + ["--data-root", str(micl_root), "--predictions", str(preds), "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    row = json.loads((out / "scores.jsonl").read_text())
    assert row == {"question_id": "2", "prediction": "Red.", "score": 1.0}  # 6 of 10 say red
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scorer"] == "vqa" and summary["test"].endswith(
        "question_id_img_id_quesion_answer_dict.npy"
    )
