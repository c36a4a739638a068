"""General-ability retention: MME and POPE scored by their published rules (cases worked out by
hand), their layouts and wrong roots, a stream YAML as a suite, and micro runs with the built-in
suite (the results section, cost control, and a kill-and-resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmcl.config import EvalSettings, load_config
from mmcl.data.synth.pretrain import IMAGE_WORDS, PHRASINGS
from mmcl.errors import DataError, MmclError
from mmcl.evaluate import TaskResult
from mmcl.general import (
    MME_COGNITION,
    MME_PERCEPTION,
    GeneralBenchmark,
    general_section,
    is_due,
    load_general,
    load_mme,
    load_pope,
    mme_summary,
)
from mmcl.metrics import score_task
from mmcl.report import comparison_markdown
from mmcl.runner import Run
from mmcl.scoring.mme_pope import mme_answer, mme_match, pope_answer, pope_scores
from tiny_hf import one_thread, write_colour_stream  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

SPLIT_LAYOUT = {"posters", "celebrity", "scene", "landmark", "artwork"}  # images/ + questions_*/


# --- POPE --------------------------------------------------------------------------------------
def test_pope_reads_answers_as_its_published_rule():
    assert pope_answer("Yes, there is a dog.") == "yes"
    assert pope_answer("There is not a dog in the image.") == "no"
    assert pope_answer("The answer is no. Yes it is.") == "no"  # first sentence only
    assert pope_answer("No") == "no"
    assert pope_answer("NO") == "yes"  # the rule matches No/no/not as written
    assert pope_answer("nope, none") == "yes"  # whole words only
    assert pope_answer("") == "yes"


def test_pope_scores_a_case_worked_out_by_hand():
    preds = ["Yes, there is.", "No.", "There is not a dog.", "yes", "NO"]
    refs = [["yes"], ["yes"], ["no"], ["no"], ["yes"]]
    # read as yes, no, no, yes, yes -> TP 2 (1, 5), FN 1 (2), TN 1 (3), FP 1 (4)
    scores, extra = pope_scores(preds, refs)
    assert scores == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert extra["accuracy"] == pytest.approx(60.0)  # (TP + TN) / 5
    assert extra["precision"] == pytest.approx(200 / 3)  # TP / (TP + FP) = 2/3
    assert extra["recall"] == pytest.approx(200 / 3)  # TP / (TP + FN) = 2/3
    assert extra["f1"] == pytest.approx(200 / 3)
    assert extra["yes_ratio"] == pytest.approx(60.0)  # 3 of 5 read as yes
    _, score, rest = score_task("pope", preds, refs)
    assert score == pytest.approx(60.0) and "task_score" not in rest
    # a model that says yes to everything: F1 66.7 on balanced questions, accuracy 50
    _, extra = pope_scores(["yes"] * 4, [["yes"], ["no"], ["yes"], ["no"]])
    assert (extra["accuracy"], extra["recall"], extra["yes_ratio"]) == (50.0, 100.0, 100.0)
    assert extra["f1"] == pytest.approx(200 / 3)
    _, extra = pope_scores(["no"] * 2, [["yes"], ["no"]])  # no yes at all: precision 0, not 0/0
    assert extra["precision"] == 0.0 and extra["f1"] == 0.0
    with pytest.raises(MmclError, match="sample 1"):
        pope_scores(["yes", "yes"], [["yes"], ["maybe"]])


# --- MME ---------------------------------------------------------------------------------------
def test_mme_reads_answers_as_its_published_rule():
    assert mme_answer("Yes") == "yes" and mme_answer("no") == "no"
    assert mme_answer("Yes, it is.") == "yes"  # "yes" in the first four characters
    assert mme_answer("No, there is none") == "no"
    assert mme_answer("Not really") == "no"  # "no" in "not "
    assert mme_answer("I think yes") == "other"  # beyond the first four: neither
    assert mme_answer("") == "other"
    assert mme_match("YES", ["Yes"]) == 1.0 and mme_match("maybe", ["No"]) == 0.0


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)


def write_mme(root: Path, qa: dict[str, dict[str, list[tuple[str, str]]]]) -> Path:
    """An MME release folder: every subtask, with the given {image stem: [(question, Yes|No)]}
    (one default image elsewhere), in the subtask's own published layout."""
    for name in MME_PERCEPTION + MME_COGNITION:
        folder = root / name
        texts, images = (
            (folder / "questions_answers_YN", folder / "images")
            if name in SPLIT_LAYOUT
            else (folder, folder)
        )
        texts.mkdir(parents=True, exist_ok=True)
        items = qa.get(name, {"0001": [("Is it red?", "Yes"), ("Is it blue?", "No")]})
        for stem, pairs in items.items():
            _image(images / f"{stem}.jpg" if name != "OCR" else images / f"{stem}.png")
            lines = "".join(f"{q} Please answer yes or no.\t{a}\n" for q, a in pairs)
            (texts / f"{stem}.txt").write_text(lines + "\n")  # a trailing blank line, as released
    return root


def _results(tasks, answers: dict[str, list[str]]) -> list[TaskResult]:
    """What evaluation returns when the model gives these answers (in file order)."""
    out = []
    for task in tasks:
        preds = answers.get(task.name, ["maybe"] * len(task.test))
        scores = [mme_match(p, r.references) for p, r in zip(preds, task.test, strict=True)]
        rows = [{"id": r.id, "score": s} for r, s in zip(task.test, scores, strict=True)]
        score = 100 * sum(scores) / len(scores)
        out.append(TaskResult(task.name, score, len(rows), len(rows), rows, 0.0))
    return out


def test_mme_layouts_and_scores_a_case_worked_out_by_hand(tmp_path):
    qa = {
        "existence": {
            "a": [("Is there a cat?", "Yes"), ("Is there a dog?", "No")],
            "b": [("Is there a car?", "Yes"), ("Is there a bus?", "No")],
        },
        "artwork": {"c": [("Is it a painting?", "Yes"), ("Is it a vase?", "No")]},
    }
    bench = load_mme(write_mme(tmp_path / "MME", qa), None, seed=0)
    tasks = {t.name: t for t in bench.tasks}
    assert list(tasks) == list(MME_PERCEPTION + MME_COGNITION)
    assert [len(t.test) for t in bench.tasks] == [4] + [2] * 13
    rec = tasks["artwork"].test[0]  # the split layout: image from images/
    assert rec.media["image"][0] == tmp_path / "MME/artwork/images/c.jpg"
    assert rec.prompt == "<image>\nIs it a painting? Please answer yes or no."
    assert rec.references == ("Yes",) and tasks["OCR"].test[0].media["image"][0].suffix == ".png"
    answers = {
        # image a: both right; image b: one right -> acc 3/4 = 75, acc+ 1/2 = 50 -> 125
        "existence": ["Yes", "no, there is not", "Yes", "Yes"],
        # one image, "It is yes" reads as other -> acc 50, acc+ 0 -> 50
        "artwork": ["It is yes", "No"],
        # both right -> acc 100, acc+ 100 -> 200
        "commonsense_reasoning": ["yes", "No."],
    }
    score, extra = mme_summary(bench.tasks, _results(bench.tasks, answers))
    assert (extra["existence_acc"], extra["existence_acc_plus"], extra["existence"]) == (
        75.0,
        50.0,
        125.0,
    )
    assert (extra["artwork_acc"], extra["artwork_acc_plus"]) == (50.0, 0.0)
    assert extra["commonsense_reasoning"] == 200.0 and extra["count"] == 0.0
    assert extra["perception"] == 175.0 and extra["cognition"] == 200.0 and score == 375.0


def test_mme_subset_keeps_both_questions_of_an_image(tmp_path):
    qa = {"count": {f"{i:03d}": [("one?", "Yes"), ("two?", "No")] for i in range(10)}}
    root = write_mme(tmp_path / "MME", qa)
    count = {t.name: t for t in load_mme(root, 6, seed=0).tasks}["count"]
    stems = [r.meta["mme_image"] for r in count.test]
    assert len(stems) == 6 and all(stems.count(s) == 2 for s in stems)  # 3 whole images
    again = {t.name: t for t in load_mme(root, 6, seed=0).tasks}["count"]
    assert [r.id for r in again.test] == [r.id for r in count.test]
    other = {t.name: t for t in load_mme(root, 6, seed=1).tasks}["count"]
    assert [r.id for r in other.test] != [r.id for r in count.test]


def test_mme_wrong_root_and_bad_files_name_every_path(tmp_path):
    with pytest.raises(MmclError) as e:
        load_mme(tmp_path / "nowhere", None, 0)
    for name in MME_PERCEPTION + MME_COGNITION:
        assert str(tmp_path / "nowhere" / name) in str(e.value)
    root = write_mme(tmp_path / "MME", {})
    (root / "color" / "0001.txt").write_text("Is it red?\tYes\n")  # one line only
    (root / "count" / "0001.txt").write_text("One?\tYes\nTwo?\tPerhaps\n")  # not yes/no
    (root / "scene" / "images" / "0001.jpg").unlink()
    with pytest.raises(DataError) as e:
        load_mme(root, None, 0)
    assert str(root / "color" / "0001.txt") in str(e.value)  # every bad file, at once
    assert str(root / "count" / "0001.txt") in str(e.value)
    assert f"no image 0001.jpg (or .png, .jpeg) in {root / 'scene' / 'images'}" in str(e.value)


# --- POPE layout -------------------------------------------------------------------------------
def write_pope(root: Path, n: int) -> Path:
    for cat in ("adversarial", "popular", "random"):
        lines = []
        for i in range(n):
            name = f"COCO_val2014_{i:012d}.jpg"
            _image(root / "val2014" / name)
            label = "yes" if i % 2 == 0 else "no"
            lines.append(
                json.dumps(
                    {
                        "question_id": i + 1,
                        "image": name,
                        "text": f"Is there a {cat} thing {i} in the image?",
                        "label": label,
                    }
                )
            )
        (root / "coco").mkdir(parents=True, exist_ok=True)
        (root / "coco" / f"coco_pope_{cat}.json").write_text("\n".join(lines) + "\n")
    return root


def test_pope_layout_subset_and_wrong_root(tmp_path):
    root = write_pope(tmp_path / "pope", 10)
    bench = load_pope(root, 4, seed=0)
    assert [t.name for t in bench.tasks] == ["adversarial", "popular", "random"]
    assert all(len(t.test) == 4 for t in bench.tasks)
    rec = bench.tasks[2].test[0]
    assert rec.media["image"][0].parent == root / "val2014" and rec.references[0] in ("yes", "no")
    with pytest.raises(MmclError) as e:
        load_pope(tmp_path / "elsewhere", None, 0)
    for part in ("coco_pope_adversarial.json", "coco_pope_popular.json", "coco_pope_random.json"):
        assert str(tmp_path / "elsewhere" / "coco" / part) in str(e.value)
    assert str(tmp_path / "elsewhere" / "val2014") in str(e.value)
    lines = (root / "coco" / "coco_pope_popular.json").read_text().splitlines()
    bad = lines[:2] + [lines[2].replace('"label": "yes"', '"label": "maybe"')] + lines[3:]
    (root / "coco" / "coco_pope_popular.json").write_text("\n".join(bad))
    with pytest.raises(DataError, match="coco_pope_popular.json line 3: .* yes/no 'label'"):
        load_pope(root, None, 0)
    (root / "coco" / "coco_pope_popular.json").write_text("\n".join(lines))
    (root / "val2014" / "COCO_val2014_000000000003.jpg").unlink()
    with pytest.raises(DataError, match="COCO_val2014_000000000003.jpg"):
        load_pope(root, None, 0)


def test_suites_from_config_names_and_errors(tmp_path):
    stream = write_colour_stream(tmp_path / "s", ["red", "blue"], 2, 3)
    settings = EvalSettings(
        general=[
            "builtin",
            str(stream),
            {
                "suite": "pope",
                "root": str(write_pope(tmp_path / "pope", 4)),
                "prompt_suffix": " Hm?",
            },
        ],
        general_size=2,
    )
    benches = load_general(settings, seed=0)
    names = [b.name for b in benches]
    assert names == ["describe", "colour", "position", "red", "blue", "pope"]
    assert [len(b.tasks[0].test) for b in benches] == [2, 2, 2, 2, 2, 2]
    assert all(not t.train for b in benches[:3] for t in b.tasks)  # never trained on
    assert all(r.prompt.endswith("in the image? Hm?") for t in benches[-1].tasks for r in t.test)
    described = {p.format(img=w) for p in PHRASINGS["describe"] for w in IMAGE_WORDS}
    assert benches[0].tasks[0].test[0].prompt.removeprefix("<image>\n") in described
    with pytest.raises(MmclError, match="needs a root"):
        load_general(EvalSettings(general=["mme"]), 0)
    with pytest.raises(MmclError, match="unknown suite"):
        load_general(EvalSettings(general=["mmbench"]), 0)
    with pytest.raises(MmclError, match="two suites"):
        load_general(EvalSettings(general=["builtin", "builtin"]), 0)
    assert [s for s in range(5) if is_due(s, 5, 2)] == [1, 3, 4]  # every 2nd, and the last


def test_general_section_from_evaluations_worked_out_by_hand():
    def ev(**scores):
        return {
            n: {"score": v, "extra": {}, "counts": {"scored": 4, "total": 4}}
            for n, v in scores.items()
        }

    evals = {"zero_shot": ev(a=80.0, b=0.0, c=50.0), "step1": ev(a=40.0, b=10.0, c=60.0)}
    benches = [GeneralBenchmark(n, "accuracy", []) for n in "abc"]
    settings = EvalSettings(general=["builtin"], general_every=2)
    gen = general_section(benches, evals, ["step0", "step1"], settings)
    a, b, c = (gen["benchmarks"][n] for n in "abc")
    assert a["base"] == 80.0 and a["scores"] == [None, 40.0] and a["retention"] == [None, 0.5]
    assert b["retention"] == [None, None]  # no base skill: retention undefined, left out
    assert c["retention"] == [None, 1.2]  # better than the base
    assert gen["retention"] == [None, 0.85] and gen["final_retention"] == 0.85  # (0.5 + 1.2) / 2
    assert gen["every"] == 2 and a["extra"]["per_step"] == [None, {}]


# --- micro runs with the built-in suite ------------------------------------------------------
GENERAL = {"eval.general": ["builtin"], "eval.general_size": 8}


def _run(out, micro_overrides, method="lora-ft", resume=False, **extra):
    cfg = load_config(None, {**micro_overrides, "method.name": method, **GENERAL, **extra})
    return Run(cfg, out).execute(resume=resume)


@pytest.fixture(scope="module")
def general_run(tmp_path_factory, micro_overrides):
    out = tmp_path_factory.mktemp("general") / "run"
    return _run(out, micro_overrides), out


def test_run_reports_general_retention_after_every_step(general_run, micro_overrides, tmp_path):
    res, out = general_run
    gen = res["general"]
    assert list(gen["benchmarks"]) == ["describe", "colour", "position"]
    for name, b in gen["benchmarks"].items():
        assert len(b["scores"]) == 2 and None not in b["scores"]
        assert b["counts"] == {"scored": 8, "total": 8}
        for s, r in zip(b["scores"], b["retention"], strict=True):
            assert r == (None if b["base"] == 0 else round(s / b["base"], 4))
        rows = (out / "predictions" / "step1" / "general" / name / f"{name}.jsonl").read_text()
        scores = [json.loads(line)["score"] for line in rows.splitlines()]
        assert b["scores"][1] == pytest.approx(100 * sum(scores) / 8, abs=1e-3)
    defined = [b["retention"][-1] for b in gen["benchmarks"].values() if b["base"] > 0]
    mean = round(sum(defined) / len(defined), 4) if defined else None  # micro: often no base skill
    assert gen["final_retention"] == mean
    assert res["timing"]["general_eval_s"] > 0
    report = (out / "report.md").read_text()
    assert "General-ability retention" in report and (out / "general_retention.png").exists()
    assert 'alt="general retention"' in (out / "report.html").read_text()
    # the suite is only evaluated: the stream's results are those of a run without it
    plain = Run(
        load_config(None, {**micro_overrides, "method.name": "lora-ft"}), tmp_path
    ).execute()
    assert plain["accuracy_matrix"] == res["accuracy_matrix"] and "general" not in plain
    text = comparison_markdown("ability", [plain, res])
    kept = "–" if mean is None else f"{100 * mean:.2f}"
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[-1].startswith("| constant answer |")  # the same stream's baseline, last
    assert "general retention" in text and table[-2].endswith(f"| {kept} |")


def test_general_every_and_zero_shot(tmp_path, micro_overrides, general_run):
    res = _run(tmp_path / "every", micro_overrides, **{"eval.general_every": 2})
    full = general_run[0]["general"]
    assert res["general"]["every"] == 2 and res["general"]["retention"][0] is None
    for name, b in res["general"]["benchmarks"].items():
        assert b["scores"][0] is None and b["retention"][0] is None  # not due after step 0
        assert b["scores"][1] == full["benchmarks"][name]["scores"][1]  # the last step always
    assert not (tmp_path / "every" / "predictions" / "step0" / "general").exists()
    res = _run(tmp_path / "zs", micro_overrides, "zero-shot")
    for b in res["general"]["benchmarks"].values():
        assert b["scores"] == [b["base"], b["base"]]  # the base answers every row
        assert b["retention"] == ([1.0, 1.0] if b["base"] else [None, None])


def test_kill_during_general_evaluation_then_resume_restores_it_exactly(
    tmp_path, micro_overrides, general_run, monkeypatch
):
    import mmcl.runner

    real, calls = mmcl.runner.evaluate_general, {"n": 0}

    def dies_after_step_1(*args, **kwargs):  # calls: base, after step 0, after step 1
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mmcl.runner, "evaluate_general", dies_after_step_1)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, micro_overrides)
    state = json.loads((tmp_path / "checkpoints" / "step0" / "state.json").read_text())
    assert set(state["general"]) == {"zero_shot", "step0"}
    tags = []

    def counted(*args, **kwargs):
        tags.append(args[-1].parent.name)  # predictions/<tag>/general
        return real(*args, **kwargs)

    monkeypatch.setattr(mmcl.runner, "evaluate_general", counted)
    resumed = _run(tmp_path, micro_overrides, resume=True)
    assert tags == ["step1"]  # the base's and step 0's rows come from the checkpoint
    assert resumed["general"] == general_run[0]["general"]
    assert resumed["accuracy_matrix"] == general_run[0]["accuracy_matrix"]


def test_mme_and_pope_suites_run_end_to_end(tmp_path, micro_overrides):
    mme, pope = write_mme(tmp_path / "MME", {}), write_pope(tmp_path / "pope", 4)
    suites = [{"suite": "mme", "root": str(mme)}, {"suite": "pope", "root": str(pope)}]
    cfg = load_config(None, {**micro_overrides, "method.name": "zero-shot", "eval.general": suites})
    res = Run(cfg, tmp_path / "run").execute()
    gen = res["general"]["benchmarks"]
    assert gen["mme"]["counts"] == {"scored": 28, "total": 28}  # 14 subtasks x 1 image x 2
    assert gen["pope"]["counts"] == {"scored": 12, "total": 12}
    base = gen["mme"]["extra"]["base"]
    folder = tmp_path / "run" / "predictions" / "zero_shot" / "general"
    for name in MME_PERCEPTION + MME_COGNITION:  # MME's rule, again from the predictions
        rows = [json.loads(x) for x in (folder / "mme" / f"{name}.jsonl").read_text().splitlines()]
        right = [mme_match(r["prediction"], r["reference"]) for r in rows]
        assert base[name] == pytest.approx(100 * sum(right) / 2 + 100 * all(right), abs=1e-3)
    assert gen["mme"]["base"] == pytest.approx(base["perception"] + base["cognition"], abs=1e-3)
    pope_rows = [
        json.loads(x)
        for cat in ("adversarial", "popular", "random")
        for x in (folder / "pope" / f"{cat}.jsonl").read_text().splitlines()
    ]
    said = [pope_answer(r["prediction"]) for r in pope_rows]
    assert gen["pope"]["extra"]["base"]["yes_ratio"] == pytest.approx(
        100 * said.count("yes") / 12, abs=1e-3
    )


def test_tracker_logs_the_general_scores_and_retention(general_run):
    pytest.importorskip("tensorboardX")
    from test_tracking import read_scalars

    res, out = general_run
    scalars = read_scalars(out / "tensorboard")
    for name, b in res["general"]["benchmarks"].items():
        logged = scalars[f"general/{name}"]
        assert [v for _, v in logged] == pytest.approx([b["base"], *b["scores"]], abs=1e-3)
        if b["base"] > 0:
            kept = [v for _, v in scalars[f"general/{name}/retention"]]
            assert kept == pytest.approx(b["retention"], abs=1e-3)
