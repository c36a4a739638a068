"""report.html is self-contained: no network references, every image and medium embedded."""

from __future__ import annotations

import base64
import io
import json
import re
import wave

from PIL import Image

from mmcl.report import write_report

TASKS = ["ocr", "gui"]


def _results(routing: bool) -> dict:
    res = {
        "benchmark": "ability",
        "method": "mr-lora" if routing else "lora-ft",
        "seed": 0,
        "tasks": TASKS,
        "task_metric": {"ocr": "accuracy", "gui": "accuracy"},
        "zero_shot": [5.0, 10.0],
        "accuracy_matrix": [[80.0, 12.5], [61.0, 90.0]],
        "metrics": {"mft": 85.0, "mfn": 75.5, "maa": 80.25, "bwt": -19.0, "fwt": 2.5},
        "counts": {t: {"scored": 3, "total": 3} for t in TASKS},
        "timing": {"train_s": 1.0, "eval_s": 0.5, "train_samples_per_s": 96.0},
        "environment": {"mmcl": "0.1.0", "torch": "2.13.0"},
    }
    res["metrics"]["forgetting"] = 19.0
    if routing:
        res["routing"] = {"accuracy": [100.0, 66.67], "per_step": [[100.0, None], [100.0, 66.67]]}
    return res


def _media(folder):
    """A PNG image, a WAV sound and a (stand-in) MP4 file."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (250, 0, 0)).save(folder / "a.png")
    with wave.open(str(folder / "a.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x01" * 800)
    (folder / "a.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    return folder


def _predictions(out, media):
    for tag in ("zero_shot", "step0", "step1"):
        for task in TASKS:
            rows = [
                {
                    "id": f"{task}-{i}",
                    "prompt": "<image>\nWhat does the sign say? <b>",
                    "prediction": "KTP" if tag != "zero_shot" else "",
                    "reference": ["KTP"],
                    "score": 1.0 if tag != "zero_shot" else 0.0,
                    "media": {"image": [str(media / "a.png")]},
                }
                for i in range(3)
            ]
            if task == "gui":  # another modality on one sample
                rows[0]["media"] = {
                    "audio": [str(media / "a.wav")],
                    "video": [str(media / "a.mp4")],
                }
            folder = out / "predictions" / tag
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_html_is_self_contained(tmp_path):
    media = _media(tmp_path / "media")
    for routing in (False, True):
        out = tmp_path / f"run-{routing}"
        _predictions(out, media)
        write_report(out, _results(routing))
        page = (out / "report.html").read_text(encoding="utf-8")
        assert not re.search(r"https?://", page)  # nothing from the network
        assert "<script" not in page and "<link" not in page and "@import" not in page
        sources = re.findall(r'src="([^"]*)"', page)
        assert sources and all(s.startswith("data:") for s in sources)
        images = [s for s in sources if s.startswith("data:image/png;base64,")]
        # the per-task curves and 3 + 2 sample images (one gui sample has audio and video)
        assert len(images) == 1 + 3 + 2
        for uri in images:
            Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).verify()
        assert re.search(r'<audio controls src="data:audio/(x-)?wav;base64,', page)
        assert '<video controls src="data:video/mp4;base64,' in page
        assert "&lt;image&gt;" in page and "&lt;b&gt;" in page  # prompts are escaped
        assert "61.0" in page and "Continual metrics" in page and "FWT" in page
        assert ("Routing accuracy" in page) == routing
        assert (out / "report.md").exists()


def test_report_html_names_missing_media(tmp_path):
    media = _media(tmp_path / "media")
    out = tmp_path / "run"
    _predictions(out, media)
    (media / "a.png").unlink()
    write_report(out, _results(False))
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "missing: a.png" in page


def test_reports_list_the_scores_beside_the_main_one(tmp_path):
    """Grounding F1 (or BLEU) after the last step reaches report.md and comparison.md."""
    from mmcl.report import comparison_markdown, write_report

    res = _results(routing=False)
    extra = {t: {"grounding_f1": 12.5, "grounding_samples": 4.0} for t in TASKS}
    res["task_extra"] = {"zero_shot": {}, "per_step": [{}, extra]}
    write_report(tmp_path, res)
    report = (tmp_path / "report.md").read_text()
    assert "| ocr | 12.50 |" in report and "grounding_samples" not in report
    cmp = comparison_markdown("ability", [res, _results(routing=True)])
    assert "| lora-ft | 12.50 |" in cmp
