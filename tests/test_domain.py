"""The procedural `domain` stream: deterministic, valid, and every answer in its task's format."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

from mmcl.data.benchmarks import get_benchmark
from mmcl.data.records import validate_file
from mmcl.data.synth import domain, domain_charts, domain_scenes, sample_rng
from mmcl.data.synth.ability import GRID
from mmcl.metrics import SCORERS

# The short answers each domain may give besides yes/no and option letters.
SHORT = {
    "remote_sensing": set(domain_scenes.LAND_NAMES),
    "medical": set(domain_scenes.BODY_PARTS),
    "driving": set(domain_scenes.LIGHTS),
    "science": set(domain_charts.CHARTS),
    "finance": set(domain_charts.MOVES.values()),
}
YES_NO = re.compile(r"^(is|are|did|does) ")


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_domain_stream_is_registered_in_order():
    bench = get_benchmark("domain")
    assert bench.order == ("remote_sensing", "medical", "driving", "science", "finance")
    assert [s.name for s in bench.specs()] == list(bench.order)
    assert all(s.description and s.modality == "image" for s in bench.specs())


def test_domain_generation_is_deterministic_and_valid(tmp_path, monkeypatch):
    bench = get_benchmark("domain")
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "a"))
    a = bench.materialize(3, 6, 4)
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "b"))
    b = bench.materialize(3, 6, 4)
    assert _digest(a) == _digest(b)
    for task in bench.order:
        for split in ("train", "test"):
            n, problems = validate_file(a / task / f"{split}.json")
            assert problems == [] and n == (6 if split == "train" else 4)
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "c"))
    assert _digest(bench.materialize(4, 6, 4)) != _digest(a)


def test_every_answer_is_in_its_declared_format():
    for name, task in domain.TASKS.items():
        assert task.metric in SCORERS
        answers: Counter = Counter()
        for i in range(150):
            s = task.make(sample_rng(0, name, "train", i), "train")
            (answer,) = s.answers
            assert len(s.images) == 1 and s.images[0].size == (GRID.size, GRID.size)
            if "options:" in s.question:
                options = re.findall(r"\b([A-D])\. ", s.question)
                assert options == list("ABCD"[: len(options)]) and answer in options, s.question
            elif YES_NO.match(s.question):
                assert answer in ("yes", "no"), s.question
            else:
                assert answer in SHORT[name], (s.question, answer)
            # the reference scores full marks under the task's own scorer
            assert SCORERS[task.metric](answer, [answer]) == 1.0
            answers[answer] += 1
        # few answer classes, each common enough to learn, none dominating
        assert len(answers) <= 12, (name, answers)
        assert max(answers.values()) < 0.4 * sum(answers.values()), (name, answers)


def test_option_answers_are_balanced_and_test_is_iid():
    """Every option of a multiple-choice question is the answer often enough to be learned,
    and train and test ask the same question forms (IID)."""
    for name, task in domain.TASKS.items():
        letters: dict[str, Counter] = {}
        forms: dict[str, set] = {"train": set(), "test": set()}
        for split in ("train", "test"):
            for i in range(200):
                s = task.make(sample_rng(1, name, split, i), split)
                forms[split].add(re.sub(r"(front|rear|left|right) camera", "X camera", s.question))
                if "options:" in s.question and split == "train":
                    letters.setdefault(s.question, Counter())[s.answers[0]] += 1
        assert forms["train"] == forms["test"], name
        for question, counts in letters.items():
            options = re.findall(r"\b([A-D])\. ", question)
            assert set(counts) == set(options), (name, question, counts)
            assert min(counts.values()) >= 8, (name, question, counts)
