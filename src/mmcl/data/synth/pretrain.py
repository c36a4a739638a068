"""The general corpus that base-pretrains the embedded default model: a small generalist.

Scenes of letters, digits, symbols, shapes and labelled buttons on the same 4 x 4 grid as the
benchmarks, with the question forms the streams build on: what is there (describe, what is at
a position, presence, colour), where it is (a position, a bounding box) and how many there are
(of a kind). So a stream's tasks shift the domain and the skill, as on real MLLMs, instead of
teaching seeing from nothing.

Half the scenes are clean renders on a light background; the other half vary the look in
generic ways (plain, gradient, textured or tiled backgrounds of any tone, a colour cast, haze,
uneven light, shadows, objects of varied size) so that the vision encoder tells shapes and
colours apart beyond one look, as a CLIP encoder has seen many photographs.

How the split holds (no stream sample, or stream-like question, is seen here):
- the streams' own scene generators (scenario's four looks, ability's word/expression/app
  screens, domain's charts and maps) are never called here, and this corpus draws from its own
  random streams (`sample_rng` keyed by benchmark "pretrain");
- no reading of words, arithmetic, actions, or questions about "coloured objects" among clutter;
  counting is unconditional or by kind (letters, digits, shapes), never by colour or by a
  colour and shape together, which the streams ask.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from mmcl.data.synth import Sample, SynthTask
from mmcl.data.synth.ability import GRID, _pick
from mmcl.data.synth.draw import (
    COLOURS,
    DIGITS,
    LETTERS,
    SHAPES,
    add_noise,
    canvas,
    draw_button,
    draw_glyph,
    draw_shape,
    light_background,
    position_name,
)
from mmcl.metrics import format_boxes

SYMBOLS = {"+": "plus sign", "-": "minus sign", "=": "equals sign"}
# Per-cell labels for the vision-encoder pretraining stage: what ("kind:value"), its colour, and
# whether it is framed as a button. A button's label is the same class as the bare letter, so
# the encoder learns one feature per letter and reading buttons builds on reading text.
CELL_CLASSES = [
    "empty",
    *[f"letter:{c}" for c in LETTERS],
    *[f"digit:{c}" for c in DIGITS],
    *[f"symbol:{c}" for c in SYMBOLS],
    *[f"shape:{s}" for s in SHAPES],
]
CELL_COLOURS = ["none", *COLOURS]
CELL_FRAMES = ["plain", "button"]
CELL_VOCABS = {"what": CELL_CLASSES, "colour": CELL_COLOURS, "frame": CELL_FRAMES}


def cell_word(label: str) -> str | None:
    """The word the captions use for a cell label ("letter:A" -> "A", "symbol:+" -> "plus",
    "button" -> "button"); None for the absence of a thing (empty, no colour, plain)."""
    if label in ("empty", "none", "plain"):
        return None
    kind, _, value = label.rpartition(":")
    return SYMBOLS[value].split()[0] if kind == "symbol" else value


def _object(rng: np.random.Generator) -> tuple[str, str, str]:
    """(kind, what to draw, its name in words)."""
    kind = _pick(rng, ["letter", "letter", "digit", "digit", "shape", "shape", "button", "symbol"])
    colour = _pick(rng, list(COLOURS))
    if kind == "letter":
        ch = _pick(rng, LETTERS)
        return kind, f"{ch}|{colour}", f"the letter {ch}"
    if kind == "digit":
        ch = _pick(rng, DIGITS)
        return kind, f"{ch}|{colour}", f"the digit {ch}"
    if kind == "symbol":
        ch = _pick(rng, list(SYMBOLS))
        return kind, f"{ch}|{colour}", f"the {SYMBOLS[ch]}"
    if kind == "button":
        colour = _pick(rng, [c for c in COLOURS if c != "black"])
        ch = _pick(rng, LETTERS)
        return kind, f"{ch}|{colour}", f"a {colour} button labelled {ch}"
    shape = _pick(rng, SHAPES)
    return kind, f"{shape}|{colour}", f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"


# --- generic looks ---------------------------------------------------------------------------
def _random_tone(rng: np.random.Generator, lo: int = 50, hi: int = 245) -> np.ndarray:
    return rng.integers(lo, hi, size=3).astype(np.float32)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A plain, gradient, textured or tiled background of any tone, (H, W, 3) floats."""
    size = GRID.size
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    kind = int(rng.integers(0, 4))
    if kind == 0:
        arr = np.broadcast_to(_random_tone(rng), (size, size, 3)).copy()
    elif kind == 1:
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle), 0, 1)[..., None]
        arr = _random_tone(rng) * (1 - t) + _random_tone(rng) * t
    elif kind == 2:
        arr = _random_tone(rng) + rng.normal(0, rng.uniform(4, 14), size=(size, size, 1))
        freq, phase = rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
        arr = arr + rng.uniform(3, 10) * np.sign(np.sin(x * size * freq + phase))[..., None]
    else:
        arr = np.broadcast_to(_random_tone(rng), (size, size, 3)).copy()
        for r, c in GRID.cells():
            cell = np.s_[r * GRID.cell : (r + 1) * GRID.cell, c * GRID.cell : (c + 1) * GRID.cell]
            arr[cell] += rng.normal(0, 10)
    return arr


def _relight(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour cast, haze and uneven light, each at random strength (or none)."""
    size = GRID.size
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    if rng.random() < 0.5:
        cast = rng.uniform(0.1, 0.35)
        arr = arr * (1 - cast) + _random_tone(rng, 0, 256) * cast
    if rng.random() < 0.4:
        haze = rng.uniform(0.05, 0.25) * (y if rng.random() < 0.5 else 1 - y)[..., None]
        arr = arr * (1 - haze) + _random_tone(rng, 150, 256) * haze
    if rng.random() < 0.4:
        ly, lx = rng.uniform(0, 1, size=2)
        dist = np.hypot(y - ly, x - lx)[..., None]
        arr = arr * (rng.uniform(1.0, 1.2) - rng.uniform(0.2, 0.45) * dist)
    return arr


def _look(rng: np.random.Generator) -> tuple[Image.Image, bool]:
    """A canvas, and whether it is a clean render (light background, no relighting)."""
    if rng.random() < 0.5:
        return canvas(GRID, light_background(rng))[0], True
    return Image.fromarray(np.clip(_background(rng), 0, 255).astype(np.uint8)), False


# The question forms of the corpus, with the share of each; a caller may ask for one form.
# Naming what is there comes first and most: the other forms build on attending to an object,
# which a 5M LM learns from descriptions (measured: with the forms at equal shares, 6000 scenes
# taught it nothing; describing only, it named 46% of scenes' contents).
SCENE_QUESTIONS = (
    ("describe", 0.55),
    ("colour", 0.65),
    ("presence", 0.75),
    ("what", 0.85),
    ("where", 0.9),
    ("count", 0.95),
    ("box", 1.0),
)
COUNTED = {"letter": "letters", "digit": "digits", "shape": "shapes"}


def make_scene(rng: np.random.Generator, split: str, question: str | None = None) -> Sample:
    """A scene and one question about it: of the form `question` (one of SCENE_QUESTIONS), or
    of a form drawn at the corpus's shares."""
    draw = rng.random()
    mode = question or next(q for q, upto in SCENE_QUESTIONS if draw < upto)
    img, clean = _look(rng)
    d = ImageDraw.Draw(img)
    n = int(rng.integers(1, 5 if mode == "describe" else 9))
    cells = _pick(rng, GRID.cells(), n)
    objs = []
    labels = [["empty", "none", "plain"] for _ in GRID.cells()]
    for r, c in cells:
        kind, spec, name = _object(rng)
        what, colour = spec.split("|")
        if kind == "button":
            labels[r * GRID.n + c] = [f"letter:{what}", colour, "button"]
            draw_button(d, what, GRID.box(r, c, pad=0), COLOURS[colour])
        else:
            labels[r * GRID.n + c] = [f"{kind}:{what}", colour, "plain"]
        if kind == "shape":
            box = GRID.box(r, c, pad=int(rng.integers(0, 6) if not clean else rng.integers(2, 5)))
            if not clean and rng.random() < 0.3:  # a shadow
                x0, y0, x1, y1 = box
                draw_shape(d, what, (x0 + 1, y0 + 1, x1 + 1, y1 + 1), (45, 45, 45))
            draw_shape(d, what, box, COLOURS[colour])
        elif kind != "button":
            draw_glyph(d, what, GRID.box(r, c, pad=1), COLOURS[colour])
        objs.append(((r, c), kind, name))
    objs.sort()  # reading order
    if not clean:
        img = Image.fromarray(
            np.clip(_relight(np.asarray(img, np.float32), rng), 0, 255).astype(np.uint8)
        )
    names = [name for _, _, name in objs]
    (r, c), kind, name = objs[int(rng.integers(0, n))]
    if mode == "describe":
        q, a = "describe the image.", "; ".join(names) + "."
    elif mode == "colour":
        plain = labels[r * GRID.n + c][0]  # kind:value, without the colour
        if (
            kind == "button"
            or sum(labels[rr * GRID.n + cc][0] == plain for (rr, cc), _, _ in objs) > 1
        ):
            return make_scene(rng, split, question)
        if kind == "shape":
            name = f"the {plain.split(':')[1]}"
        q, a = f"what colour is {name}?", labels[r * GRID.n + c][1]
    elif mode == "presence":
        asked = name if rng.random() < 0.5 else _object(rng)[2]
        q, a = f"is there {asked} in the image?", "yes" if asked in names else "no"
    elif mode == "what":
        q, a = f"what is at {position_name(r, c)}?", name
    elif mode in ("where", "box"):
        if names.count(name) > 1:
            return make_scene(rng, split, question)
        if mode == "where":
            q, a = f"where is {name}?", position_name(r, c)
        else:
            q, a = (
                f"locate {name}. answer with a bounding box.",
                format_boxes([(c, r, c + 1, r + 1)]),
            )
    else:
        counted = _pick(rng, [*COUNTED, "thing"])
        number = sum(k == counted or counted == "thing" for _, k, _ in objs)
        q, a = f"how many {COUNTED.get(counted, 'things')} are there?", str(number)
    return Sample(q, [a], [add_noise(img, rng)], meta={"cells": labels})


TASKS = {
    "scenes": SynthTask("scenes", "image", "lenient", "describing objects in a scene", make_scene)
}
