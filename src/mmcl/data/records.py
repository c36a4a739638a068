"""The one in-memory sample type, and the LLaVA-style JSON files the field exchanges.

Two on-disk layouts are read (and written):
- LLaVA conversations: {"id", "image"|"audio"|"video": str | list, "conversations":
  [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}
- MLLM-CL test layout: {"question_id", "image", "text", "answer"} where "answer" may be a
  string or a list of accepted references.
Loading validates every record and reports each problem with its file and record index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcl.errors import DataError, MmclError
from mmcl.io import read_json, write_json

MODALITIES = ("image", "audio", "video")
PLACEHOLDER = {m: f"<{m}>" for m in MODALITIES}


@dataclass(frozen=True)
class Record:
    """One sample of any modality.

    `turns` are (human, assistant) pairs; for a test sample the assistant text of the last turn
    is its first reference. `references` lists every accepted answer (test samples).
    """

    id: str
    turns: tuple[tuple[str, str], ...]
    media: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    references: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.turns[-1][0]

    @property
    def answer(self) -> str:
        return self.turns[-1][1]

    def with_turns(self, turns: Iterable[tuple[str, str]]) -> Record:
        """A copy with other conversation turns (used for pseudo targets and routing prompts)."""
        return Record(self.id, tuple(turns), self.media, self.references, self.meta)


# A check takes a media path and returns an error message, or None when the file is usable.
MediaCheck = Callable[[Path], "str | None"]
MEDIA_CHECKS: dict[str, MediaCheck] = {}


def register_media_check(modality: str) -> Callable[[MediaCheck], MediaCheck]:
    def deco(fn: MediaCheck) -> MediaCheck:
        MEDIA_CHECKS[modality] = fn
        return fn

    return deco


@register_media_check("image")
def check_image(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except FileNotFoundError:
        return f"image file not found: {path}"
    except Exception as e:
        return f"corrupt image {path}: {e}"
    return None


@register_media_check("audio")
def check_audio(path: Path) -> str | None:
    from mmcl.data.media import audio_problem

    return audio_problem(path)


@register_media_check("video")
def check_video(path: Path) -> str | None:
    from mmcl.data.media import video_problem

    return video_problem(path)


def _as_list(value: Any) -> list | None:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def parse_record(raw: Any, where: str, media_root: Path) -> tuple[Record | None, list[str]]:
    """Turn one JSON object into a Record; returns (record or None, problems)."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        return None, [f"{where}: expected a JSON object, got {type(raw).__name__}"]
    media: dict[str, tuple[Path, ...]] = {}
    for m in MODALITIES:
        paths = _as_list(raw.get(m))
        if paths is None:
            problems.append(f"{where}: '{m}' must be a string or a list of strings")
            continue
        if paths:
            media[m] = tuple(media_root / p for p in paths)
    if "conversations" in raw:
        rid = raw.get("id")
        convs = raw["conversations"]
        turns: list[tuple[str, str]] = []
        if not isinstance(convs, list) or not convs:
            problems.append(f"{where}: 'conversations' must be a non-empty list")
        else:
            pending: str | None = None
            for j, turn in enumerate(convs):
                if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                    problems.append(f"{where}: conversations[{j}] needs a string 'value'")
                    continue
                role = turn.get("from")
                if role == "human" and pending is None:
                    pending = turn["value"]
                elif role == "gpt" and pending is not None:
                    if not turn["value"].strip():
                        problems.append(f"{where}: conversations[{j}] has an empty answer")
                    turns.append((pending, turn["value"]))
                    pending = None
                else:
                    problems.append(
                        f"{where}: conversations[{j}] has 'from'={role!r}; "
                        "turns must alternate human, gpt"
                    )
            if pending is not None:
                problems.append(f"{where}: the last human turn has no gpt answer")
        refs = _as_list(raw.get("answers")) or ([turns[-1][1]] if turns else [])
    elif "question_id" in raw or "text" in raw:
        rid = raw.get("question_id")
        text, answer = raw.get("text"), raw.get("answer")
        refs = _as_list(answer)
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{where}: 'text' (the question) is missing or empty")
            text = ""
        if refs is None or not refs or not all(r.strip() for r in refs):
            problems.append(f"{where}: 'answer' is missing or empty")
            refs = []
        if text and media and not any(PLACEHOLDER[m] in text for m in media):
            # The MLLM-CL test files carry no placeholder: the media comes first, as in LLaVA.
            text = "\n".join(PLACEHOLDER[m] for m in media for _ in media[m]) + "\n" + text
        turns = [(text, refs[0] if refs else "")]
    else:
        return None, [f"{where}: neither 'conversations' nor 'question_id'/'text' keys present"]
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        problems.append(f"{where}: missing 'id' / 'question_id'")
    human = "".join(h for h, _ in turns)
    for m in MODALITIES:
        n_ph, n_media = human.count(PLACEHOLDER[m]), len(media.get(m, ()))
        if n_ph != n_media:
            problems.append(
                f"{where}: {n_ph} {PLACEHOLDER[m]} placeholder(s) but {n_media} {m} file(s)"
            )
    if problems:
        return None, problems
    meta = {
        k: v
        for k, v in raw.items()
        if k not in {"id", "question_id", "conversations", "text", "answer", "answers", *MODALITIES}
    }
    return Record(str(rid), tuple(turns), media, tuple(refs), meta), []


def load_records(
    path: str | Path, media_root: str | Path | None = None, check_media: bool = True
) -> list[Record]:
    """Load and validate a JSON file of records; raise DataError listing every problem."""
    records, problems, _ = _load(Path(path), media_root, check_media)
    if problems:
        raise DataError(problems)
    return records


def validate_file(path: str | Path, media_root: str | Path | None = None) -> tuple[int, list[str]]:
    """Return (number of records, problems) without raising on data problems."""
    try:
        _, problems, n = _load(Path(path), media_root, True)
    except MmclError as e:
        return 0, [str(e)]
    return n, problems


def _load(
    path: Path, media_root: str | Path | None, check_media: bool
) -> tuple[list[Record], list[str], int]:
    raw = read_json(path)
    if isinstance(raw, dict) and isinstance(raw.get("data"), list):
        raw = raw["data"]
    if not isinstance(raw, list):
        raise MmclError(f"{path}: expected a JSON list of records")
    root = Path(media_root) if media_root is not None else path.parent
    records: list[Record] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        where = f"{path} record {i}"
        rec, probs = parse_record(item, where, root)
        problems += probs
        if rec is None:
            continue
        if rec.id in seen:
            problems.append(f"{where}: duplicate id {rec.id!r} (first at record {seen[rec.id]})")
            continue
        seen[rec.id] = i
        if check_media:
            bad = [
                f"{where}: {msg}"
                for m, paths in rec.media.items()
                for p in paths
                if (msg := MEDIA_CHECKS[m](p)) is not None
            ]
            if bad:
                problems += bad
                continue
        records.append(rec)
    return records, problems, len(raw)


def to_llava(rec: Record, root: Path) -> dict[str, Any]:
    """The LLaVA conversation JSON of a record, media paths relative to `root`."""
    out: dict[str, Any] = {"id": rec.id}
    for m, paths in rec.media.items():
        rel = [str(Path(p).relative_to(root)) for p in paths]
        out[m] = rel[0] if len(rel) == 1 else rel
    out["conversations"] = [
        msg
        for h, a in rec.turns
        for msg in ({"from": "human", "value": h}, {"from": "gpt", "value": a})
    ]
    if len(rec.references) > 1:
        out["answers"] = list(rec.references)
    return {**out, **rec.meta}


def to_test_layout(rec: Record, root: Path) -> dict[str, Any]:
    """The MLLM-CL test JSON of a record: {question_id, <media>, text, answer}."""
    out: dict[str, Any] = {"question_id": rec.id}
    for m, paths in rec.media.items():
        rel = [str(Path(p).relative_to(root)) for p in paths]
        out[m] = rel[0] if len(rel) == 1 else rel
    out["text"] = rec.prompt
    out["answer"] = rec.references[0] if len(rec.references) == 1 else list(rec.references)
    return {**out, **rec.meta}


def write_records(path: str | Path, records: list[Record], layout: str = "llava") -> None:
    """Write records atomically in the LLaVA (train) or MLLM-CL test layout."""
    path = Path(path)
    conv = {"llava": to_llava, "test": to_test_layout}[layout]
    write_json(path, [conv(r, path.parent) for r in records])
