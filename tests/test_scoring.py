"""The published scorers, case by case as the published code computes them (worked out by hand
from MLLM-CL's ETrain/Eval/LLaVA/CoIN/eval_*.py and MICL_TMLR's train.py), their corrected
variants, and `mmcl score`."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmcl.cli import app
from mmcl.config import load_config
from mmcl.data.records import Record
from mmcl.errors import DataError, MmclError
from mmcl.metrics import SCORERS, compact_exact_match, lenient_match, score_task
from mmcl.runner import Run
from mmcl.scoring import RECORD_SCORERS, RULES
from mmcl.scoring.judge import Judge, judge_predictions
from mmcl.scoring.mathvista import extract_answer
from mmcl.scoring.micl import normalise_answer, pre_caption
from mmcl.scoring.score_file import score_file, task_test_records
from tiny_hf import (
    colour_records,
    one_thread,  # noqa: F401 (a fixture)
    save_tiny_llava,
    write_llava,
    write_mllm_cl_test,
)

runner = CliRunner()


def rec(answer, image: str | None = "images/x.png", text: str = "Q?", **meta) -> Record:
    """A test record as parse_record makes it from {question_id, image, text, answer, ...}."""
    refs = tuple(answer) if isinstance(answer, list) else (answer,)
    media = {"image": (Path("/data") / image,)} if image else {}
    prompt = ("<image>\n" if image else "") + text
    return Record("q1", ((prompt, refs[0]),), media, refs, meta)


def score(name: str, prediction: str, record: Record) -> float:
    if name in RECORD_SCORERS:
        return RECORD_SCORERS[name].score(prediction, record)
    return SCORERS[name](prediction, list(record.references))


@pytest.mark.parametrize(
    ("prediction", "truth", "published", "corrected"),
    [
        ("eyes are blue", "yes", 1.0, 0.0),  # published: "yes " occurs (bounded on one side)
        ("The answer is Yes.", "yes", 1.0, 1.0),
        ("Yes.", "yes", 1.0, 1.0),  # no space in the prediction: substring
        ("it is U.S. army", "U.S.", 0.0, 1.0),  # dots removed from the truth only
        ("go to the park now", "the park", 1.0, 1.0),  # several words: substring
        ("park", "the park", 0.0, 0.0),
        ("Unanswerable, yes", "yes", 0.0, 1.0),  # counted wrong by the published script
    ],
)
def test_rs_ad_rule(prediction, truth, published, corrected):
    assert score("mllm-cl-ai2d", prediction, rec(truth)) == published
    assert lenient_match(prediction, [truth]) == corrected


def test_med_rule():
    assert score("mllm-cl-pvqa", "It shows a TUMOR here", rec("tumor")) == 1.0
    assert score("mllm-cl-pvqa", "Unanswerable tumor", rec("tumor")) == 0.0
    assert score("mllm-cl-pvqa", "no", rec("yes")) == 0.0


@pytest.mark.parametrize(
    ("prediction", "truth", "published", "corrected"),
    [
        ("B", "b", 1.0, 1.0),
        ("1, 234. 5", "1,2345", 1.0, 1.0),
        ("Yes.", "yes", 1.0, 1.0),
        ("12.5", "12.5", 0.0, 1.0),  # the truth keeps its dot, the prediction loses it
        ("yes it is", "yes", 0.0, 0.0),
    ],
)
def test_fin_rule(prediction, truth, published, corrected):
    assert score("mllm-cl-finvis", prediction, rec(truth)) == published
    assert compact_exact_match(prediction, [truth]) == corrected


@pytest.mark.parametrize(
    ("prediction", "truth", "image", "text", "published", "fixed"),
    [
        ("Yes.", "yes", "images/AI2D_12.png", "Is it?", 0.0, 1.0),  # exact, nothing stripped
        ("(A)", "A", "images/TQA_3.png", "Which?", 0.0, 1.0),
        ("a", "A", "images/SciVerse_3.png", "Which?", 1.0, 1.0),
        ("ohio,texas", "texas,ohio", "images/MapQA_7.png", "Which states are red?", 1.0, 1.0),
        ("ohio, texas", "texas,ohio", "images/MapQA_7.png", "Which states are red?", 0.5, 1.0),
        ("ohio", "texas,ohio", "images/MapQA_7.png", "Which states are red?", 0.5, 0.5),
        ("it is ohio", "ohio", "images/MapQA_7.png", "Does Ohio have...?", 1.0, 1.0),
        ("Unanswerable", "unanswerable", "images/VQA_1.png", "Is it?", 0.0, 0.0),
    ],
)
def test_sci_rule_by_image_source(prediction, truth, image, text, published, fixed):
    record = rec(truth, image=image, text=text)
    assert score("mllm-cl-sci", prediction, record) == published
    assert score("mllm-cl-sci-fixed", prediction, record) == fixed


def test_sci_differs_from_lenient_as_the_issue_reports():
    assert lenient_match("Yes.", ["yes"]) == 1.0 and lenient_match("(A)", ["A"]) == 1.0
    assert lenient_match("ohio,texas", ["texas,ohio"]) == 0.0


@pytest.mark.parametrize(
    ("prediction", "truth", "published"),
    [
        ("Yes.", "yes", 1.0),  # dots and spaces removed on both sides
        ("1 2", "12", 1.0),
        ("us army", "U.S.", 1.0),
        ("There are 12 cars", "2", 1.0),  # substring: "2" is in "12"
        ("three", "3", 0.0),
    ],
)
def test_vp_rule(prediction, truth, published):
    assert score("mllm-cl-sat", prediction, rec(truth)) == published


def test_ocr_rule_by_category():
    hmer = "Handwritten Mathematical Expression Recognition"
    assert score("mllm-cl-ocr", "x ^ { 2 }", rec("x^{2}", answer_type=hmer)) == 1.0
    assert score("mllm-cl-ocr", "X^{2}", rec("x^{2}", answer_type=hmer)) == 0.0  # case kept
    assert score("mllm-cl-ocr", "X^{2}", rec("x^{2}", answer_type="Regular Text")) == 1.0
    assert score("mllm-cl-ocr", "x ^ { 2 }", rec("x^{2}", answer_type="Regular Text")) == 0.0
    assert score("mllm-cl-ocr", "the sign says STOP", rec(["halt", "stop"], answer_type="r")) == 1


MC = {"question_type": "multi_choice", "choices": "['3/11', '8/11', '6/11']", "answer_option": "B"}


@pytest.mark.parametrize(
    ("prediction", "meta", "truth", "published", "fixed"),
    [
        ("3.5", {"answer_type": "float"}, "3.5", 1.0, 1.0),
        ("3.50", {"answer_type": "float"}, "3.5", 1.0, 1.0),
        ("13", {"answer_type": "integer"}, "3", 0.0, 0.0),
        ("The missing number is 14.", {"answer_type": "integer"}, "14", 1.0, 1.0),
        ("So the answer is 7, not 9.", {"answer_type": "integer"}, "7", 1.0, 1.0),
        ("14.0", {"answer_type": "integer"}, "14", 1.0, 1.0),
        ("Paris", {"answer_type": "text"}, "paris", 0.0, 1.0),  # published compares with "None"
        ("[2007, 2008]", {"answer_type": "list"}, "[2007, 2008]", 0.0, 1.0),
        ("(B) 8/11", MC, "8/11", 1.0, 1.0),
        ("The correct answer is B.", MC, "8/11", 1.0, 1.0),
        ("It is 8/11", MC, "8/11", 1.0, 1.0),  # the one choice whose text it contains
        ("A or B", MC, "8/11", 0.0, 0.0),
    ],
)
def test_math_rule(prediction, meta, truth, published, fixed):
    record = rec(truth, **({"question_type": "free_form"} | meta))
    assert score("mllm-cl-math", prediction, record) == published
    assert score("mllm-cl-math-fixed", prediction, record) == fixed


def test_math_extractor_gives_what_a_judge_would():
    free = rec("14", question_type="free_form", answer_type="integer")
    assert extract_answer("The missing number in the sequence is 14.", free) == "14"
    assert extract_answer("Answer: 1,234", free) == "1234"
    assert extract_answer("The correct answer is (B) 8/11.", rec("8/11", **MC)) == "B"


@pytest.mark.parametrize(
    ("prediction", "references", "vqa", "vqa_fixed"),
    [
        ("a dog", ["dog"], 1.0, 1.0),  # articles
        ("dog!", ["dog"], 1.0, 1.0),  # punctuation
        ("two", ["2"], 1.0, 1.0),  # number words
        ("Dont", ["don't"], 1.0, 1.0),  # contractions
        ("dog", ["dog", "cat"], 1 / 3, 1.0),  # min(1, matches / 3) with two references
        ("dog", ["dog", "dog", "cat", "dog"], 1.0, 1.0),
        ("t-shirt", ["t-shirt"], 0.0, 1.0),  # the reference skips the punctuation step
        ("cat", ["dog"], 0.0, 0.0),
    ],
)
def test_micl_image_qa(prediction, references, vqa, vqa_fixed):
    assert SCORERS["vqa"](prediction, references) == pytest.approx(vqa)
    assert SCORERS["vqa-fixed"](prediction, references) == pytest.approx(vqa_fixed)


def test_micl_audio_video_qa_and_normalisation():
    assert SCORERS["exact"]("The Two dogs.", ["two dogs"]) == 1.0
    assert SCORERS["exact"]("2 dogs barking", ["two dogs"]) == 0.0
    assert SCORERS["exact"]("t-shirt", ["t-shirt"]) == 0.0
    assert SCORERS["exact-fixed"]("t-shirt", ["t-shirt"]) == 1.0
    assert normalise_answer("Yes, it's 1,000.\n") == "yes it's 1000"
    assert pre_caption('A  "dog"; runs!') == "a dog runs"


def test_micl_cider_is_raw_against_one_reference():
    refs = [["a dog runs on grass"], ["a cat sleeps on a bed"], ["two birds fly in the sky"]]
    raw = ["A Dog runs on grass.", "a cat sleeps on a bed", "two birds fly in the sky"]
    published, _, _ = score_task("cider-micl", raw, refs)
    mmcl, _, _ = score_task("cider", raw, refs)
    assert published[0] < mmcl[0]  # mmcl lowercases the prediction and drops the period
    assert published[1:] == pytest.approx(mmcl[1:])
    more = [r + ["a dog plays"] for r in refs]  # only the first reference counts there
    assert score_task("cider-micl", raw, more)[0] == pytest.approx(published)


def test_every_scorer_has_a_rule_and_is_listed():
    from mmcl.metrics import CORPUS_SCORERS

    assert set(RULES) == set(SCORERS) | set(CORPUS_SCORERS) | set(RECORD_SCORERS)
    out = runner.invoke(app, ["list"]).output
    assert "mllm-cl-sci" in out and "cider-micl" in out


# --- mmcl score --------------------------------------------------------------------------
def _files(folder: Path, answers: dict[str, str], **extra) -> tuple[Path, Path]:
    test = folder / "Sci" / "test.json"
    test.parent.mkdir(parents=True)
    rows = [
        {"question_id": "a", "image": "img/AI2D_1.png", "text": "Is it?", "answer": "yes"},
        {"question_id": 7, "image": "img/MapQA_2.png", "text": "Which states?", "answer": "a,b"},
    ]
    test.write_text(json.dumps([r | extra for r in rows]))
    preds = folder / "answers.jsonl"
    lines = [json.dumps({"question_id": q, "prompt": "", "text": t}) for q, t in answers.items()]
    preds.write_text("\n".join(lines) + "\n")
    return test, preds


def test_score_command_by_benchmark_and_by_scorer(tmp_path):
    test, preds = _files(tmp_path / "root", {"a": "Yes.", "7": "b,a"})
    out = tmp_path / "out"
    args = ["score", "--benchmark", "mllm-cl-dcl", "--task", "sci"]
    res = runner.invoke(
        app,
        [*args, "--data-root", str(tmp_path / "root"), "--predictions", str(preds)]
        + ["--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert rows == [
        {"question_id": "a", "prediction": "Yes.", "score": 0.0},
        {"question_id": "7", "prediction": "b,a", "score": 1.0},
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scorer"] == "mllm-cl-sci" and summary["score"] == 50.0
    assert summary["samples"] == 2
    res = runner.invoke(
        app,
        ["score", "--scorer", "mllm-cl-sci-fixed", "--test", str(test)]
        + ["--predictions", str(preds), "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text())["score"] == 100.0


def test_score_names_missing_and_unknown_predictions(tmp_path):
    test, preds = _files(tmp_path, {"a": "yes", "zz": "x"})
    with pytest.raises(DataError) as err:
        score_file(test, preds, "mllm-cl-sci", tmp_path / "out")
    msg = str(err.value)
    assert "no prediction for 1 test record(s)" in msg and ": 7" in msg and "zz" in msg
    assert not (tmp_path / "out").exists()
    with pytest.raises(MmclError, match="unknown scorer"):
        score_file(test, preds, "nope", tmp_path / "out")


def test_score_wrong_root_names_the_expected_path(tmp_path):
    with pytest.raises(MmclError) as err:
        task_test_records("mllm-cl-dcl", "sci", tmp_path)
    assert str(tmp_path / "Sci" / "test.json") in str(err.value)


def test_a_missing_field_is_named_before_scoring(tmp_path):
    test = tmp_path / "test.json"
    test.write_text(json.dumps([{"question_id": 1, "text": "2+2?", "answer": "4"}]))
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"question_id": 1, "text": "4"}\n')
    with pytest.raises(DataError, match=r"record '1': scorer mllm-cl-math needs field"):
        score_file(test, preds, "mllm-cl-math", tmp_path / "out")


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that extracts "14" and remembers what it was asked."""

    asked: list[dict] = []

    def do_POST(self):  # noqa: N802 (the http.server name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).asked.append(body)
        reply = json.dumps({"choices": [{"message": {"content": " 14 "}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge():
    _Judge.asked = []
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Judge(f"http://127.0.0.1:{server.server_port}/v1", "local-model")
    server.shutdown()


def test_judge_extracts_only_what_does_not_pass_and_is_recorded(tmp_path, judge):
    meta = {"question_type": "free_form", "answer_type": "integer"}
    records = [rec("14", **meta), rec("3", **meta)]
    texts = judge_predictions("mllm-cl-math", ["fourteen, I think", "3"], records, judge)
    assert texts == ["14", "3"]  # "3" passed as it is: not sent
    assert len(_Judge.asked) == 1 and _Judge.asked[0]["model"] == "local-model"
    assert "fourteen, I think" in _Judge.asked[0]["messages"][0]["content"]
    test = tmp_path / "test.json"
    test.write_text(json.dumps([{"question_id": 1, "text": "How many?", "answer": "14", **meta}]))
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"question_id": 1, "text": "fourteen"}\n')
    summary = score_file(test, preds, "mllm-cl-math", tmp_path / "out", judge)
    assert summary["score"] == 100.0 and summary["judge"]["model"] == "local-model"
    assert "Extracted answer" in summary["judge"]["prompt"]
    row = json.loads((tmp_path / "out" / "scores.jsonl").read_text())
    assert row["extracted"] == "14" and row["prediction"] == "fourteen"
    with pytest.raises(MmclError, match="judge local-model"):
        Judge("http://127.0.0.1:9/v1", "local-model", timeout_s=2).extract("q", "r", "record 1")


@pytest.mark.usefixtures("one_thread")
def test_a_run_with_a_judge_records_it(tmp_path, judge):
    root = tmp_path / "Ability_data"
    rows = colour_records(root / "math_test", "m", 3, seed=1)
    write_llava(root / "Math" / "train.json", colour_records(root / "Math", "t", 3, seed=2))
    meta = {"question_type": "free_form", "answer_type": "integer"}
    write_mllm_cl_test(root / "math_test" / "test.json", [r | {"a": "14"} for r in rows], **meta)
    overrides = {
        "benchmark": "mllm-cl-acl",
        "tasks": ["math"],
        "data.root": str(root),
        "model.backbone": "hf-native",
        "model.path": str(save_tiny_llava(tmp_path / "llava")),
        "method.name": "zero-shot",
        "eval.max_new_tokens": 2,
        "eval.judge_url": judge.url,
        "eval.judge_model": judge.model,
    }
    res = Run(load_config(None, overrides), tmp_path / "run").execute()
    assert res["judge"] == judge.describe()
    assert res["zero_shot"] == [100.0]  # the judge answers 14 for every untrained guess
    preds = (tmp_path / "run" / "predictions" / "zero_shot" / "math.jsonl").read_text().splitlines()
    assert [json.loads(p)["extracted"] for p in preds] == ["14"] * 3
    assert len(_Judge.asked) == 3
