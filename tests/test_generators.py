import functools
import hashlib

import numpy as np

from mmcl.data.benchmarks import BENCHMARKS, SynthBenchmark, get_benchmark
from mmcl.data.records import validate_file
from mmcl.data.synth import ability, family_tasks, pretrain, sample_rng
from mmcl.data.synth.draw import COLOURS
from mmcl.data.synth.scenario import SCENARIOS


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_valid(tmp_path, monkeypatch):
    bench = get_benchmark("ability")
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "a"))
    a = bench.materialize(3, 6, 4)
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "b"))
    b = bench.materialize(3, 6, 4)
    assert _digest(a) == _digest(b)
    # a task's training size is multiplied by its train_scale (math 3, gui 2); tests as many
    scale = {name: task.train_scale for name, task in family_tasks("ability").items()}
    for task in bench.order:
        for split in ("train", "test"):
            n, problems = validate_file(a / task / f"{split}.json")
            assert problems == [] and n == (6 * scale[task] if split == "train" else 4)
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "c"))
    assert _digest(bench.materialize(4, 6, 4)) != _digest(a)


def test_generation_on_a_pool_writes_what_one_process_writes(tmp_path, monkeypatch):
    import mmcl.data.synth as synth

    sizes = {"train": 5, "test": 3}
    monkeypatch.setattr(synth, "CHUNK", 2)  # 2 workers, each given several chunks
    synth.generate("ability", ["ocr", "gui"], sizes, 3, tmp_path / "pool", {})
    monkeypatch.setattr(synth, "CHUNK", 10**6)  # one process
    synth.generate("ability", ["ocr", "gui"], sizes, 3, tmp_path / "one", {})
    assert _digest(tmp_path / "pool") == _digest(tmp_path / "one")


def test_ocr_test_words_never_appear_in_training():
    train = {
        ability.make_ocr(sample_rng(0, "ocr", "train", i), "train").answers[0] for i in range(300)
    }
    test = {
        ability.make_ocr(sample_rng(0, "ocr", "test", i), "test").answers[0] for i in range(300)
    }
    assert train.isdisjoint(test)


def test_no_stream_question_is_asked_in_base_pretraining():
    corpus = {
        pretrain.make_scene(sample_rng(0, "scenes", "train", i), "train").question
        for i in range(3000)
    }
    assert len(corpus) > 300  # every form in its phrasings, about many objects
    streams = {b.family for b in BENCHMARKS.values() if isinstance(b, SynthBenchmark)}
    assert {"ability", "domain", "micl", "scenario"} <= streams
    for family in streams:
        for name, task in family_tasks(family).items():
            made = (task.make(sample_rng(0, name, "train", i), "train") for i in range(60))
            asked = {s.question for s in made}
            assert asked.isdisjoint(corpus), (family, name, asked & corpus)


def test_answers_match_task_formats():
    for name, task in ability.TASKS.items():
        for i in range(20):
            s = task.make(sample_rng(1, name, "train", i), "train")
            assert s.answers[0].strip() and len(s.images) == 1
            if name in ("math", "perception"):
                assert s.answers[0].isdigit()
            if name == "gui":
                assert s.answers[0].startswith("click ")
                # the instruction names the button by one colour (never black, the title's ink)
                named = [c for c in COLOURS if f" {c} button" in s.question]
                assert len(named) == 1 and named != ["black"]


def test_answers_are_balanced_where_a_constant_answer_would_pay():
    """Perception counts 1-4 evenly and asks by colour, shape or both; scenario's existence is
    half yes (a "no" names a shape no target has), its counts spread evenly over 0-3: a
    constant answer scores little."""
    from collections import Counter

    from mmcl.data.synth.scenario import TASKS as SCENARIO

    counts, forms = Counter(), Counter()
    for i in range(400):
        s = ability.make_perception(sample_rng(0, "perception", "train", i), "train")
        counts[s.answers[0]] += 1
        forms[s.meta["qtype"]] += 1
    assert set(counts) == {"1", "2", "3", "4"} and max(counts.values()) < 0.32 * 400
    assert set(forms) == {"by colour", "by shape", "by both"}
    by_type: dict[str, Counter] = {}
    for i in range(1500):
        s = SCENARIO["indoor"].make(sample_rng(0, "indoor", "train", i), "train")
        by_type.setdefault(s.meta["qtype"], Counter())[s.answers[0]] += 1
    existence, counting = by_type["existence"], by_type["counting"]
    assert 0.42 < existence["yes"] / sum(existence.values()) < 0.58
    assert set(counting) == {"0", "1", "2", "3"}
    assert max(counting.values()) < 0.33 * sum(counting.values())


def test_scenario_existence_no_names_a_shape_no_target_has():
    """Clutter does not count: a triangle only among the black objects is answered "no"."""
    from mmcl.data.synth.scenario import _question

    objs = [(0, 0, "circle", "red"), (1, 1, "square", "blue"), (2, 2, "triangle", "black")]
    answers = set()
    for i in range(60):
        question, answer = _question(np.random.default_rng(i), objs, "existence")
        assert (answer == "yes") == ("circle" in question or "square" in question), question
        answers.add(answer)
    assert answers == {"yes", "no"}


@functools.cache
def _target_cells(scenario: str, samples: int = 40) -> dict[str, list[np.ndarray]]:
    """The pixels of each cell that holds a target, by the target's colour, over a scenario's
    scenes (rendered once per scenario for every check)."""
    look, _ = SCENARIOS[scenario]
    cells: dict[str, list[np.ndarray]] = {}
    for i in range(samples):
        img, objs = look(sample_rng(0, scenario, "train", i), 3)
        arr = np.asarray(img, dtype=np.float32)
        for r, c, _, colour in objs:
            x0, y0, x1, y1 = ability.GRID.box(r, c)
            cells.setdefault(colour, []).append(arr[y0:y1, x0:x1])
    return cells


def _targets(scenario: str, colour: str) -> list[np.ndarray]:
    return _target_cells(scenario)[colour]


def _centre(cell: np.ndarray) -> np.ndarray:
    return cell[cell.shape[0] // 2, cell.shape[1] // 2]


def test_each_look_disturbs_targets_its_own_way():
    """Water absorbs red; the tungsten lamp turns yellow towards orange, the other way from
    the water's orange-to-yellow; on the ground of the oblique view an object is foreshortened
    (its upper half is empty). One colour or shape reads differently from scenario to
    scenario, so the looks interfere."""
    red = {
        s: np.mean([_centre(c)[0] for c in _targets(s, "red")])
        for s in ("underwater", "high_altitude")
    }
    assert red["underwater"] < 0.6 * red["high_altitude"]

    def green_over_red(scenario: str) -> float:
        return float(np.mean([_centre(c)[1] / _centre(c)[0] for c in _targets(scenario, "yellow")]))

    assert green_over_red("indoor") < 0.85 * green_over_red("high_altitude")

    def upper_share(scenario: str) -> float:
        """Of a blue target cell's pixels that still look blue, the share in its upper half
        (under water, where blue stays blue and objects are drawn whole: about a third)."""
        hits = []
        for cell in _targets(scenario, "blue"):
            close = np.abs(cell - np.array(COLOURS["blue"])).sum(-1) < 90
            hits.append(close[: cell.shape[0] // 2].sum() / max(1, close.sum()))
        return float(np.mean(hits))

    assert upper_share("low_altitude") < 0.1
    assert upper_share("underwater") > 0.25
