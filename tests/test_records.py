import json
from pathlib import Path

import pytest
from PIL import Image

from mmcl.data.records import load_records, validate_file, write_records
from mmcl.errors import DataError, MmclError


def _img(folder: Path, name: str = "a.png") -> str:
    Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / name)
    return name


def _write(folder: Path, rows) -> Path:
    path = folder / "data.json"
    path.write_text(json.dumps(rows))
    return path


def _conv(i, image="a.png", q="<image>\nwhat?", a="yes"):
    return {
        "id": f"r{i}",
        "image": image,
        "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}],
    }


def test_llava_and_test_layout_roundtrip(tmp_path):
    _img(tmp_path)
    _img(tmp_path, "b.png")
    rows = [
        _conv(0),
        {**_conv(1, image=["a.png", "b.png"], q="<image><image>\ncompare")},
        {"question_id": "q1", "image": "a.png", "text": "how many?", "answer": ["2", "two"]},
    ]
    recs = load_records(_write(tmp_path, rows))
    assert [r.id for r in recs] == ["r0", "r1", "q1"]
    assert len(recs[1].media["image"]) == 2
    assert recs[2].prompt.startswith("<image>\n")  # MLLM-CL test files carry no placeholder
    assert recs[2].references == ("2", "two")
    write_records(tmp_path / "train.json", recs[:2])
    write_records(tmp_path / "test.json", recs[2:], layout="test")
    again = load_records(tmp_path / "train.json") + load_records(tmp_path / "test.json")
    assert [(r.id, r.turns, r.references) for r in again] == [
        (r.id, r.turns, r.references) for r in recs
    ]


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {
                "image": "a.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nq"},
                    {"from": "gpt", "value": "a"},
                ],
            },
            "missing 'id'",
        ),
        (_conv(0, a="  "), "empty answer"),
        (_conv(0, image="missing.png"), "image file not found"),
        (_conv(0, image="bad.png"), "corrupt image"),
        (_conv(0, q="what? no placeholder"), "0 <image> placeholder(s) but 1 image file(s)"),
        ({"id": "x", "conversations": []}, "non-empty list"),
        ({"id": "x", "conversations": [{"from": "gpt", "value": "a"}]}, "must alternate"),
        ({"question_id": "q", "image": "a.png", "text": "q?"}, "'answer' is missing"),
        (
            {
                "id": "x",
                "image": 3,
                "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
            },
            "must be a string or a list",
        ),
        ("not an object", "expected a JSON object"),
        ({"foo": 1}, "neither 'conversations'"),
    ],
)
def test_each_validation_error_names_file_and_record(tmp_path, row, message):
    _img(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    path = _write(tmp_path, [_conv(9), row])
    n, problems = validate_file(path)
    assert n == 2
    assert len(problems) >= 1
    assert any(message in p and f"{path} record 1" in p for p in problems), problems
    with pytest.raises(DataError):
        load_records(path)


def test_duplicate_ids_and_bad_json(tmp_path):
    _img(tmp_path)
    path = _write(tmp_path, [_conv(0), _conv(0)])
    _, problems = validate_file(path)
    assert any("duplicate id 'r0'" in p and "record 1" in p for p in problems)
    path.write_text("[{oops")
    _, problems = validate_file(path)
    assert "not valid JSON" in problems[0] and str(path) in problems[0]
    with pytest.raises(MmclError, match="file not found"):
        load_records(tmp_path / "nope.json")
