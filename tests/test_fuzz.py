"""Bad input at scale: malformed records, configs and media, fed to the loaders and the CLI,
end in clear mmcl errors (naming the file), never in a deep traceback or a results file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from mmcl.cli import app
from mmcl.config import ExperimentConfig, load_config
from mmcl.data.records import load_records, validate_file
from mmcl.errors import DataError, MmclError
from mmcl.models.composed import load_image

FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,  # nothing written into the working tree
    suppress_health_check=[HealthCheck.too_slow],
)
runner = CliRunner()

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)

# Records built from the keys the loader knows, with good and bad values, so that the fuzzing
# reaches the checks deep inside a record and not only "not a JSON object".
turns = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "from": st.sampled_from(["human", "gpt", "system"]) | scalars,
            "value": st.sampled_from(["<image>\nwhat is it?", "a cat", "", "<audio><video>"])
            | json_values,
        },
    ),
    max_size=4,
)
records = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=6) | scalars,
        "question_id": st.text(max_size=6) | scalars,
        "image": st.sampled_from(["a.png", "missing.png", "", "../a.png", "a\x00.png"])
        | st.lists(st.sampled_from(["a.png", "bad.png"]), max_size=3)
        | json_values,
        "audio": st.sampled_from(["x.wav"]) | json_values,
        "video": st.sampled_from(["x.mp4"]) | json_values,
        "conversations": turns | json_values,
        "text": st.sampled_from(["how many?", "<image>\nq", ""]) | json_values,
        "answer": st.sampled_from(["2", ""]) | st.lists(st.text(max_size=3)) | json_values,
        "answers": json_values,
    },
)
files = st.one_of(
    st.lists(records | json_values, max_size=5).map(json.dumps),
    json_values.map(lambda v: json.dumps({"data": v})),
    json_values.map(json.dumps),
)


def _folder(factory: pytest.TempPathFactory) -> Path:
    """A fresh folder with one good image and one corrupt one (hypothesis reruns the test body
    many times, so pytest's per-test tmp_path would be shared between examples; folders from the
    session-scoped factory are removed by pytest like tmp_path)."""
    root = factory.mktemp("fuzz")
    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "a.png")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


@FUZZ
@given(text=files)
@example(text="[" * 100_000)  # nesting deeper than the JSON parser's recursion limit
@example(text='[{"id": "x", "image": "a.png", "conversations": [{"from": "human"}]}]')
def test_record_files_give_problems_or_records_never_a_crash(tmp_path_factory, text):
    path = _folder(tmp_path_factory) / "data.json"
    path.write_text(text, encoding="utf-8")
    n, problems = validate_file(path)
    assert all(isinstance(p, str) and str(path) in p for p in problems)
    try:
        recs = load_records(path)
    except DataError as e:
        assert e.problems and problems  # the loader and the validator agree
        return
    except MmclError as e:
        assert str(path) in str(e) and problems
        return
    assert not problems and len(recs) == n


@FUZZ
@given(data=st.binary(max_size=300), cut=st.integers(0, 200))
def test_random_bytes_as_png_are_reported_as_corrupt_images(tmp_path_factory, data, cut):
    root = _folder(tmp_path_factory)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, format="PNG")
    for name, blob in (("random.png", data), ("truncated.png", buf.getvalue()[:cut])):
        (root / name).write_bytes(blob)
        row = {
            "id": "r",
            "image": name,
            "conversations": [
                {"from": "human", "value": "<image>\nq"},
                {"from": "gpt", "value": "a"},
            ],
        }
        path = root / "data.json"
        path.write_text(json.dumps([row]))
        n, problems = validate_file(path)
        try:
            pixels = load_image(root / name, 8)
        except MmclError as e:
            assert str(root / name) in str(e)
            assert n == 1 and len(problems) == 1 and "corrupt image" in problems[0]
        else:  # the bytes happen to be an image: then it is usable everywhere
            assert pixels.shape == (3, 8, 8) and problems == []


@FUZZ
@given(files)
def test_cli_data_validate_exits_cleanly(tmp_path_factory, text):
    path = _folder(tmp_path_factory) / "data.json"
    path.write_text(text, encoding="utf-8")
    res = runner.invoke(app, ["data", "validate", str(path)])
    assert res.exit_code in (0, 1), res.exception
    assert f"{path}:" in res.output and "Traceback" not in res.output


# --- configs ----------------------------------------------------------------------------------
SECTIONS = ["benchmark", "tasks", "seed", "data", "model", "method", "train", "eval"]
KEYS = [
    "seed",
    "tasks",
    "data.train_size",
    "data.test_size",
    "data.root",
    "model.preset",
    "model.backbone",
    "method.name",
    "method.lora",
    "train.lr",
    "train.epochs",
    "train.batch_size",
    "eval.batch_size",
    "eval.max_new_tokens",
    "nonsense",
    "train.nonsense",
]
BASE = {
    "model": {"preset": "micro"},
    "tasks": ["ocr"],
    "data": {"train_size": 4, "test_size": 2},
    "train": {"epochs": 1},
}


def _mutate(base: dict, changes: list[tuple[str, object]]) -> dict:
    cfg = json.loads(json.dumps(base))
    for key, value in changes:
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[last] = value
    return cfg


configs = st.one_of(
    st.lists(st.tuples(st.sampled_from(KEYS + SECTIONS), json_values), min_size=1, max_size=3).map(
        lambda ch: yaml.safe_dump(_mutate(BASE, ch)).encode()
    ),
    st.text(max_size=60).map(str.encode),  # any text at all, YAML or not
    st.binary(max_size=60),  # not even text
)


def _write_config(factory: pytest.TempPathFactory, data: bytes) -> Path:
    path = factory.mktemp("fuzz") / "c.yaml"
    path.write_bytes(data)
    return path


@FUZZ
@given(text=configs, preset=st.sampled_from([None, "micro", "nope"]))
@example(text=b"model: micro\n", preset="micro")  # an override into a section that is no mapping
@example(text=b"a: *b\n", preset=None)  # an undefined YAML alias
def test_configs_load_or_raise_a_clear_error(tmp_path_factory, text, preset):
    path = _write_config(tmp_path_factory, text)
    try:
        cfg = load_config(path, {"model.preset": preset})
    except MmclError as e:
        assert str(path) in str(e)
    else:
        assert isinstance(cfg, ExperimentConfig)


@FUZZ
@given(
    text=configs, seed=st.sampled_from([None, "7", "x"]), preset=st.sampled_from([None, "micro"])
)
def test_cli_run_with_a_bad_config_fails_cleanly_without_results(
    tmp_path_factory, text, seed, preset
):
    path = _write_config(tmp_path_factory, text)
    try:
        load_config(path, {"model.preset": preset, "seed": seed and int(seed)})
    except (MmclError, ValueError):
        pass
    else:  # a valid config would start a real run: this test is about bad ones
        return
    out = path.parent / "out"
    args = ["run", "--config", str(path), "--out", str(out)]
    args += ["--seed", seed] if seed else []
    args += ["--preset", preset] if preset else []
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    # an MmclError (printed by `mmcl` as one line) or typer's own usage error, nothing else
    assert isinstance(res.exception, MmclError | SystemExit), repr(res.exception)
    assert not (out / "results.json").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"method": {"name": "nope"}}, "unknown method 'nope'"),
        ({"method": {"name": "lora-ft", "lora": {"r": 0}}}, "method 'lora-ft' settings"),
        ({"method": {"name": "lora-ft", "typo": 1}}, "typo"),
        ({"tasks": ["ocr", "nope"]}, "no task(s) ['nope']"),
        ({"benchmark": "nope"}, "unknown benchmark 'nope'"),
    ],
)
def test_cli_run_with_bad_names_fails_cleanly_without_results(tmp_path, change, message):
    """Names and method settings are checked once the run starts: still before anything is
    written."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, **change}))
    res = runner.invoke(app, ["run", "--config", str(path), "--out", str(tmp_path / "out")])
    assert isinstance(res.exception, MmclError) and message in str(res.exception)
    assert not (tmp_path / "out" / "results.json").exists()
