"""The general corpus that base-pretrains the embedded default model: it learns to *see*.

Scenes of letters, digits, symbols, shapes and labelled buttons on the same grid as the
benchmarks, with questions that name, locate and describe single objects. No task of any
built-in stream is asked here (no reading of words, arithmetic, counting, or actions), so each
stream stays unknown to the base model while its tasks can build on what it sees.
"""

from __future__ import annotations

import numpy as np

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
    return kind, f"{shape}|{colour}", f"a {colour} {shape}"


# The question forms of the corpus, with the share of each; a caller may ask for one form.
SCENE_QUESTIONS = (("describe", 0.65), ("colour", 0.8), ("presence", 0.9), ("position", 1.0))


def make_scene(rng: np.random.Generator, split: str, question: str | None = None) -> Sample:
    """A scene and one question about it: of the form `question` (one of SCENE_QUESTIONS), or
    of a form drawn at the corpus's shares."""
    img, d = canvas(GRID, light_background(rng))
    n = int(rng.integers(1, 7))
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
            draw_shape(d, what, GRID.box(r, c, pad=int(rng.integers(2, 5))), COLOURS[colour])
        elif kind != "button":
            draw_glyph(d, what, GRID.box(r, c, pad=1), COLOURS[colour])
        objs.append(((r, c), kind, name))
    objs.sort()  # reading order
    draw = rng.random()  # drawn either way, so a forced form leaves the scenes as they were
    mode = question or next(q for q, upto in SCENE_QUESTIONS if draw < upto)
    if mode == "describe":
        q = "describe the image."
        a = "; ".join(name for _, _, name in objs) + "."
    elif mode == "colour":
        (r, c), kind, name = objs[int(rng.integers(0, n))]
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
        present = rng.random() < 0.5
        name = objs[int(rng.integers(0, n))][2] if present else _object(rng)[2]
        q, a = f"is there {name} in the image?", "yes" if name in [o[2] for o in objs] else "no"
    else:
        (r, c), _, name = objs[int(rng.integers(0, n))]
        q, a = f"what is at {position_name(r, c)}?", name
    return Sample(q, [a], [add_noise(img, rng)], meta={"cells": labels})


TASKS = {
    "scenes": SynthTask("scenes", "image", "lenient", "describing objects in a scene", make_scene)
}
