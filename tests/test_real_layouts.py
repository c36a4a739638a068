"""Real-data layouts: small fixture files in the exact MLLM-CL layouts, a micro stream through
them, generic stream YAMLs, and the errors for wrong roots and missing files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmcl.config import load_config
from mmcl.data.benchmarks import get_benchmark
from mmcl.errors import DataError, MmclError
from mmcl.metrics import compact_exact_match, score_task
from mmcl.runner import Run, load_tasks
from tiny_hf import (
    colour_records,
    one_thread,  # noqa: F401 (a fixture)
    save_tiny_llava,
    write_colour_stream,
    write_llava,
    write_mllm_cl_test,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# (task, training file, test file) as the published scripts lay out domain CL.
DCL_FILES = [
    ("rs", "RemoteSensing/train.json", "RS/test.json"),
    ("med", "Medical/data/train.json", "Med/test.json"),
    ("ad", "AD/DriveLM/train.json", "AD/test.json"),
    ("sci", "Sci/train.json", "Sci/test.json"),
    ("fin", "Fin/train.json", "Fin/test.json"),
]
# Ability CL with the released archive's folder names for training (the loader's second choice)
ACL_FILES = [
    ("ocr", "OCR/train.json", "OCR_test/test.json", {"answer_type": "Regular Text Recognition"}),
    (
        "math",
        "Math/train.json",
        "math_test/test.json",
        {"question_type": "free_form", "answer_type": "text"},
    ),
    ("perception", "VP/train.json", "CV-Benchv2/test.json", {"type": "2D", "task": "Count"}),
    ("gui", "APP/train.json", "APP_test/test.json", {}),
]
N_TRAIN, N_TEST = 8, 5


def _write_task(root: Path, train: str, test: str, k: int, **extra) -> None:
    # Images are relative to each file's own folder, as in the published data.
    train_dir, test_dir = (root / train).parent, (root / test).parent
    write_llava(root / train, colour_records(train_dir, f"t{k}", N_TRAIN, seed=k))
    write_mllm_cl_test(root / test, colour_records(test_dir, f"q{k}", N_TEST, seed=50 + k), **extra)


@pytest.fixture(scope="module")
def dcl_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("Domain_data")
    for k, (_, train, test) in enumerate(DCL_FILES):
        _write_task(root, train, test, k)
    return root


@pytest.fixture(scope="module")
def acl_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("Ability_data")
    for k, (_, train, test, extra) in enumerate(ACL_FILES):
        _write_task(root, train, test, k, **extra)
    return root


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("llava") / "model")


def test_dcl_layout_loads_in_the_published_order(dcl_root):
    tasks = get_benchmark("mllm-cl-dcl", dcl_root).load(seed=0)
    assert [t.name for t in tasks] == ["rs", "med", "ad", "sci", "fin"]
    assert {t.name: t.spec.metric for t in tasks} == {
        "rs": "mllm-cl-ai2d",
        "med": "mllm-cl-pvqa",
        "ad": "mllm-cl-ai2d",
        "sci": "mllm-cl-sci",
        "fin": "mllm-cl-finvis",
    }
    rs = tasks[0]
    assert len(rs.train) == N_TRAIN and len(rs.test) == N_TEST
    assert rs.train[0].media["image"][0].parent.parent == dcl_root / "RemoteSensing"
    assert rs.test[0].media["image"][0].parent.parent == dcl_root / "RS"
    assert rs.test[0].prompt.startswith("<image>\n")  # test files carry no placeholder
    assert all(t.spec.description for t in tasks)  # routers list the experts with these


def test_acl_layout_keeps_extra_fields_and_takes_alternative_names(acl_root):
    tasks = get_benchmark("mllm-cl-acl", acl_root).load(seed=0)
    assert [t.name for t in tasks] == ["ocr", "math", "perception", "gui"]
    assert tasks[0].test[0].meta == {"answer_type": "Regular Text Recognition"}
    assert tasks[2].test[0].meta == {"type": "2D", "task": "Count"}
    assert tasks[1].train[0].media["image"][0].is_relative_to(acl_root / "Math")


def test_sizes_take_a_seeded_subset_in_file_order(dcl_root):
    bench = get_benchmark("mllm-cl-dcl", dcl_root)
    a = bench.load(seed=0, train_size=5, test_size=3, order=["sci"])[0]
    b = bench.load(seed=0, train_size=5, test_size=3, order=["sci"])[0]
    full = bench.load(seed=0, order=["sci"])[0]
    assert [r.id for r in a.train] == [r.id for r in b.train] and len(a.test) == 3
    ids = [r.id for r in full.train]
    assert [ids.index(r.id) for r in a.train] == sorted(ids.index(r.id) for r in a.train)


def test_micro_stream_through_the_dcl_layout(tmp_path, dcl_root, llava_dir):
    cfg = load_config(
        None,
        {
            "benchmark": "mllm-cl-dcl",
            "tasks": ["rs", "fin"],
            "data.root": str(dcl_root),
            "model.backbone": "hf-native",
            "model.path": str(llava_dir),
            "method.name": "lora-ft",
            "train.epochs": 1,
            "train.batch_size": 4,
            "eval.max_new_tokens": 3,
        },
    )
    res = Run(cfg, tmp_path / "run").execute()
    assert res["tasks"] == ["rs", "fin"]
    assert res["task_metric"] == {"rs": "accuracy", "fin": "accuracy"}
    assert res["counts"] == {"rs": {"scored": 5, "total": 5}, "fin": {"scored": 5, "total": 5}}
    rows = (tmp_path / "run" / "predictions" / "step1" / "fin.jsonl").read_text().splitlines()
    assert sorted(json.loads(r)["id"] for r in rows) == [f"q4-{i:03d}" for i in range(N_TEST)]


def test_wrong_root_and_missing_files_list_what_was_expected(tmp_path, dcl_root):
    with pytest.raises(MmclError, match=r"set data.root .*RemoteSensing/train\.json"):
        get_benchmark("mllm-cl-dcl").load(seed=0)
    with pytest.raises(MmclError, match=r"not a folder.*Fin/test\.json"):
        get_benchmark("mllm-cl-dcl", tmp_path / "nowhere").load(seed=0)
    root = tmp_path / "copy"
    shutil.copytree(dcl_root, root)
    (root / "Fin" / "test.json").unlink()
    med = root / "Medical" / "data"
    (med / "train.json").rename(med / "renamed.json")
    with pytest.raises(MmclError) as err:
        get_benchmark("mllm-cl-dcl", root).load(seed=0)
    msg = str(err.value)
    assert "2 expected file(s) missing" in msg and "data.files" in msg
    assert f"fin test: {root / 'Fin/test.json'}" in msg
    assert f"med train: {root / 'Medical/data/train.json'} or {root / 'Med/train.json'}" in msg
    # Per-task overrides point at files elsewhere (relative to the root).
    bench = get_benchmark(
        "mllm-cl-dcl",
        root,
        {"med": {"train": "Medical/data/renamed.json"}, "fin": {"test": "Fin/train.json"}},
    )
    assert [t.name for t in bench.load(seed=0, order=["med", "fin"])] == ["med", "fin"]
    with pytest.raises(MmclError, match="does not have"):
        get_benchmark("mllm-cl-dcl", root, {"finance": {"test": "x.json"}})


def test_missing_media_names_the_file_and_record(tmp_path, dcl_root):
    root = tmp_path / "copy"
    shutil.copytree(dcl_root, root)
    (root / "RS" / "images" / "q0-002.png").unlink()
    with pytest.raises(DataError, match=r"RS/test\.json record 'q0-002': image file not found"):
        get_benchmark("mllm-cl-dcl", root).load(seed=0, order=["rs"])


def test_config_reaches_the_benchmark(tmp_path, dcl_root):
    cfg = load_config(
        None,
        {
            "benchmark": "mllm-cl-dcl",
            "tasks": ["fin"],
            "data.root": str(dcl_root),
            "data.files": {"fin": {"train": "Sci/train.json"}},
        },
    )
    (fin,) = load_tasks(cfg)
    assert fin.train[0].media["image"][0].is_relative_to(dcl_root / "Sci")
    with pytest.raises(MmclError, match="is generated"):
        load_tasks(load_config(None, {"data.root": str(tmp_path)}))


def test_stream_yaml(tmp_path):
    stream = write_colour_stream(tmp_path, ["a", "b"], n_train=4, n_test=2)
    tasks = get_benchmark(str(stream)).load(seed=0)
    assert [(t.name, len(t.train), len(t.test), t.spec.metric) for t in tasks] == [
        ("a", 4, 2, "lenient"),
        ("b", 4, 2, "lenient"),
    ]
    text = stream.read_text()
    stream.write_text(text + "order: [b, a]\n")
    assert [t.name for t in get_benchmark(str(stream)).load(seed=0)] == ["b", "a"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        text.replace("scorer: lenient", "scorer: bleu", 1).replace("  - name: b", "  - name: a")
        + "order: [a, c]\nwho: me\n"
    )
    with pytest.raises(MmclError, match="who"):
        get_benchmark(str(bad))
    bad.write_text(
        text.replace("scorer: lenient", "scorer: bleu", 1).replace("  - name: b", "  - name: a")
        + "order: [a, c]\n"
    )
    with pytest.raises(MmclError) as err:
        get_benchmark(str(bad))
    msg = str(err.value)
    assert "unknown scorer 'bleu'" in msg and "repeat" in msg and "['c']" in msg
    with pytest.raises(MmclError, match="stream file not found"):
        get_benchmark(str(tmp_path / "none.yaml"))


def test_fin_scorer_removes_spaces_and_dots():
    assert compact_exact_match("1, 234. 5", ["1,2345"]) == 1.0
    assert compact_exact_match("Yes.", ["yes"]) == 1.0
    assert compact_exact_match("yes it is", ["yes"]) == 0.0
    assert score_task("compact-exact", ["B", "c"], [["b"], ["a"]])[1] == 50.0
