"""The MICL tasks (MoInCL), procedurally: image, audio and video x captioning and QA.

Captions say what happens (a relation between two shapes; a sound repeated at a pitch; an
object moving a way at a speed), with three reference phrasings per sample; the training target
is the first, canonical one. QA answers are one word: exact match for audio and video,
the VQA score over five "annotators" (who sometimes write digits or add an article) for
images. Nothing asked here is asked by the base-pretraining corpora (pretrain.py,
pretrain_av.py): they teach what objects and sounds are, not these relations, counts,
directions or phrasings.
"""

from __future__ import annotations

import numpy as np

from mmcl.data.synth import Sample, SynthTask
from mmcl.data.synth.ability import GRID, _pick
from mmcl.data.synth.draw import COLOURS, SHAPES, add_noise, canvas, draw_shape, light_background
from mmcl.data.synth.media import (
    DIRECTIONS,
    SOUND_KINDS,
    SPEED_CELLS,
    render_clip,
    synth_sound,
)

COUNT_WORDS = ("one", "two", "three", "four", "five", "six")
TIMES = ("once", "twice", "three times", "four times")
_SHAPES = SHAPES[:4]  # circle, square, triangle, diamond: distinct at 16 px
_COLOURS = [c for c in COLOURS if c != "black"]


def _captions(rng: np.random.Generator, phrasings: list[str]) -> list[str]:
    """Reference captions: the canonical phrasing first (the training target), then the others
    in a random order (every test caption is scored against all of them)."""
    rest = phrasings[1:]
    return [phrasings[0]] + [rest[int(i)] for i in rng.permutation(len(rest))]


def an(words: str) -> str:
    """The indefinite article and `words`."""
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def _two_objects(rng: np.random.Generator) -> list[tuple[str, str]]:
    colours = _pick(rng, _COLOURS, 2)
    return [(_pick(rng, _SHAPES), c) for c in colours]


# --- image ------------------------------------------------------------------------------------
def make_image_caption(rng: np.random.Generator, split: str) -> Sample:
    """Two shapes in one row or column; the caption states their relation."""
    img, d = canvas(GRID, light_background(rng))
    (s1, c1), (s2, c2) = _two_objects(rng)
    line, a, b = int(rng.integers(0, GRID.n)), *sorted(_pick(rng, range(GRID.n), 2))
    vertical = rng.random() < 0.5
    p1, p2 = ((a, line), (b, line)) if vertical else ((line, a), (line, b))
    draw_shape(d, s1, GRID.box(*p1, pad=2), COLOURS[c1])
    draw_shape(d, s2, GRID.box(*p2, pad=2), COLOURS[c2])
    x, y = an(f"{c1} {s1}"), an(f"{c2} {s2}")
    rel, inv = ("above", "below") if vertical else ("to the left of", "to the right of")
    caps = _captions(rng, [f"{x} {rel} {y}.", f"{y} {inv} {x}.", f"{x} is {rel} {y}."])
    q = _pick(rng, ["write a caption for the picture.", "caption this image."])
    return Sample(q, caps, [add_noise(img, rng)])


def _annotators(rng: np.random.Generator, answer: str, variants: list[str]) -> list[str]:
    """Five human answers: mostly `answer`, now and then one of its `variants`."""
    return [answer] + [
        _pick(rng, variants) if variants and rng.random() < 0.25 else answer for _ in range(4)
    ]


def make_image_qa(rng: np.random.Generator, split: str) -> Sample:
    """3-6 shapes of distinct colours; how many there are, or which shape has a colour."""
    img, d = canvas(GRID, light_background(rng))
    n = int(rng.integers(2, 6))
    colours = _pick(rng, _COLOURS, n)
    objs = [(_pick(rng, _SHAPES), c) for c in colours]
    for (r, c), (shape, colour) in zip(_pick(rng, GRID.cells(), n), objs, strict=True):
        draw_shape(d, shape, GRID.box(r, c, pad=2), COLOURS[colour])
    if rng.random() < 0.5:
        q = _pick(rng, ["how many shapes are in the picture?", "count the shapes."])
        refs = _annotators(rng, COUNT_WORDS[n - 1], [str(n)])
    else:
        shape, colour = objs[int(rng.integers(0, n))]
        q = f"which shape is {colour}?"
        refs = _annotators(rng, shape, [an(shape), f"{shape}s"])
    return Sample(q, refs, [add_noise(img, rng)])


# --- audio ------------------------------------------------------------------------------------
_VERB = {"tone": "beeps", "chirp": "chirps", "noise": "bursts", "bell": "rings"}
_NOUN = {"tone": "tone", "chirp": "chirp", "noise": "noise", "bell": "bell"}


def _sound(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    attrs = {
        "kind": _pick(rng, SOUND_KINDS),
        "pitch": _pick(rng, ["low", "high"]),
        "count": int(rng.integers(1, 5)),
        "rising": bool(rng.random() < 0.5),
        "loudness": _pick(rng, ["quiet", "loud"]),
    }
    return synth_sound(rng, **attrs), attrs


def make_audio_caption(rng: np.random.Generator, split: str) -> Sample:
    clip, a = _sound(rng)
    kind, pitch, times = a["kind"], a["pitch"], TIMES[a["count"] - 1]
    how = f"{pitch} {_NOUN[kind]}"
    if kind == "chirp":
        how = f"{pitch} {'rising' if a['rising'] else 'falling'} chirp"
    caps = _captions(
        rng,
        [
            f"{an(how)} {_VERB[kind]} {times}.",
            f"{an(how)} sounds {times}.",
            f"you hear {an(how)} {times}.",
        ],
    )
    q = _pick(rng, ["describe the sound.", "write a caption for the audio."])
    return Sample(q, caps, audios=[clip], meta={"sound": a})


def make_audio_qa(rng: np.random.Generator, split: str) -> Sample:
    clip, a = _sound(rng)
    mode = rng.random()
    if mode < 0.4:
        q, ans = "how many times does the sound repeat?", COUNT_WORDS[a["count"] - 1]
    elif mode < 0.75 or a["kind"] != "chirp":
        q, ans = "is the pitch high or low?", a["pitch"]
    else:
        q, ans = "does the pitch go up or down?", "up" if a["rising"] else "down"
    return Sample(q, [ans], audios=[clip], meta={"sound": a})


# --- video ------------------------------------------------------------------------------------
def moving_clip(rng: np.random.Generator) -> tuple[list, dict]:
    """A clip with one moving shape and 0-1 still ones; returns (frames, what happens)."""
    direction = _pick(rng, list(DIRECTIONS))
    speed = _pick(rng, list(SPEED_CELLS))
    dr, dc = DIRECTIONS[direction]
    cells = SPEED_CELLS[speed]
    starts = [
        (r, c)
        for r, c in GRID.cells()
        if 0 <= r + dr * cells < GRID.n and 0 <= c + dc * cells < GRID.n
    ]
    start = _pick(rng, starts)
    path = {(start[0] + dr * k, start[1] + dc * k) for k in range(cells + 1)}
    (s1, c1), (s2, c2) = _two_objects(rng)
    still = []
    if rng.random() < 0.6:
        still.append((s2, c2, _pick(rng, [p for p in GRID.cells() if p not in path])))
    frames = render_clip(GRID, light_background(rng), (s1, c1, start), direction, speed, still)
    what = {
        "shape": s1,
        "colour": c1,
        "direction": direction,
        "speed": speed,
        "start": list(start),
        "still": [[s, c, list(p)] for s, c, p in still],
    }
    return frames, what


def make_video_caption(rng: np.random.Generator, split: str) -> Sample:
    frames, w = moving_clip(rng)
    x, way, speed = f"{w['colour']} {w['shape']}", w["direction"], w["speed"]
    caps = _captions(
        rng,
        [
            f"{an(x)} moves {way} {speed}.",
            f"{an(x)} is moving {way} {speed}.",
            f"the {x} goes {way} {speed}.",
        ],
    )
    q = _pick(rng, ["describe what happens in the video.", "write a caption for the video."])
    return Sample(q, caps, videos=[frames], meta={"clip": w})


def make_video_qa(rng: np.random.Generator, split: str) -> Sample:
    frames, w = moving_clip(rng)
    mode = rng.random()
    if mode < 0.4:
        q, ans = "which way does the object move?", w["direction"]
    elif mode < 0.7:
        q, ans = "what colour is the moving object?", w["colour"]
    else:
        q, ans = "does the object move fast or slow?", w["speed"]
    return Sample(q, [ans], videos=[frames], meta={"clip": w})


TASKS = {
    t.name: t
    for t in (
        SynthTask(
            "image_caption",
            "image",
            "cider",
            "captioning how two shapes in an image are placed",
            make_image_caption,
        ),
        SynthTask(
            "image_qa",
            "image",
            "vqa",
            "questions about an image: counting shapes, naming a shape by colour",
            make_image_qa,
        ),
        SynthTask(
            "audio_caption",
            "audio",
            "cider",
            "captioning a sound: its kind, pitch and how often it repeats",
            make_audio_caption,
        ),
        SynthTask(
            "audio_qa",
            "audio",
            "exact",
            "questions about a sound: repetitions, pitch, rising or falling",
            make_audio_qa,
        ),
        SynthTask(
            "video_caption",
            "video",
            "cider",
            "captioning a video: which object moves, which way, how fast",
            make_video_caption,
        ),
        SynthTask(
            "video_qa",
            "video",
            "exact",
            "questions about a video: direction, colour of the moving object, speed",
            make_video_qa,
        ),
    )
}
# MoInCL's two task orders (REFERENCES.md).
ORDER_1 = ("audio_caption", "image_caption", "video_qa", "audio_qa", "image_qa", "video_caption")
ORDER_2 = ("image_caption", "video_caption", "video_qa", "image_qa", "audio_caption", "audio_qa")
