"""The general corpus that base-pretrains the embedded default model.

Scenes of letters, digits, symbols, shapes and labelled buttons on the same 4 x 4 grid as the
benchmarks, with the question forms of a small generalist (SCENE_QUESTIONS): describe a scene;
name, find and locate an object; count the objects of a kind and give their boxes. No task of
any built-in stream is asked here, so each stream stays unknown to the base model while its
tasks build on what it sees and the forms it answers.

Half the scenes are clean renders on a light background; the other half have a generic look
(looks.py: backgrounds of any tone and texture, a colour cast, haze, uneven light, shadows,
objects of varied size). Both stages see them all (pretraining/base.py), so the encoder tells
shapes and colours apart beyond one look and the LM answers about scenes of any look. Each form
is asked in several phrasings (PHRASINGS), as a generalist is asked in many words.

How the split holds (no stream sample, or stream-like question, is seen here):
- the streams' own scene generators (scenario's four looks, ability's word/expression/app
  screens, domain's charts and maps) are never called here, and this corpus draws from its own
  random streams (`sample_rng` keyed by benchmark "pretrain");
- objects are picked by name or kind ("the letter A", "the digits"), never by colour among
  black clutter (`scenario`'s targets) nor by colour and shape (`ability`'s perception); no
  reading of words, arithmetic or actions.
- no question of the corpus is a question of a stream (tests/test_generators.py checks the
  questions of every stream task against 3 000 of the corpus's);
- the corpus never says "coloured", the word by which `scenario` picks its targets among black
  clutter: the base knows it only as the projector's mark knows a kind word (`kind_words`), so
  its LM meets the word, and the questions around it, first in the stream.
"""

from __future__ import annotations

import numpy as np
from PIL import ImageDraw

from mmcl.data.synth import Sample, SynthTask
from mmcl.data.synth.ability import GRID, _pick
from mmcl.data.synth.draw import (
    COLOURS,
    DIGITS,
    LETTERS,
    SHAPES,
    add_noise,
    draw_button,
    draw_glyph,
    draw_shape,
    position_name,
)
from mmcl.data.synth.looks import generic_canvas, relight
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


def kind_words(label: str) -> tuple[str, ...]:
    """The words that name a label's whole kind at once: "letters" for "letter:A", ...; for
    every colour but black "coloured" (and "colored"), as a generalist says "the coloured
    objects" among black ones. The corpus never says "coloured": only the projector's mark
    knows the word (models/tiny.py, `naming_table`), as an instruction-aware projector trained
    on web text would."""
    kind = label.rpartition(":")[0]
    if kind:
        return (f"{kind}s",)
    return ("coloured", "colored") if label in COLOURS and label != "black" else ()


def object_count(cells: list) -> int:
    """How many objects a scene holds, from its per-cell labels (meta "cells")."""
    return sum(label[0] != "empty" for label in cells)


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


# The question forms of the corpus, with the share of each; a caller may ask for one form. How
# they pick objects keeps them apart from the streams' questions (module docstring).
SCENE_QUESTIONS = (
    ("describe", 0.55),  # every object in reading order
    ("colour", 0.62),  # of a named object
    ("presence", 0.69),  # of a named object: yes or no
    ("position", 0.76),  # what is at a named cell
    ("where", 0.84),  # the cell of a named object
    ("count", 0.92),  # how many objects of a kind
    ("boxes", 1.0),  # the grid-cell boxes of the objects of a kind
)
# Each form in several phrasings, as a generalist is asked in many words: it learns to answer
# the form, whatever the filler words. None is a stream's template (tests/test_generators.py).
PHRASINGS = {
    "describe": ("describe the {img}.", "describe the scene.", "what objects are in the {img}?"),
    "colour": ("what colour is {name}?", "what is the colour of {name}?"),
    "presence": ("is there {name} in the {img}?", "does the {img} show {name}?"),
    "where": ("where is {name}?", "in which row and column is {name}?"),
    "count": (
        "how many {plural} are there?",
        "how many {plural} can you see?",
        "how many {plural} does the {img} show?",
    ),
    "boxes": (
        "give the bounding boxes of the {plural}.",
        "where are the {plural}? give their bounding boxes.",
    ),
    "position": ("what is at {pos}?", "which object is at {pos}?", "what do you see at {pos}?"),
}
IMAGE_WORDS = ("image", "picture", "photo")
KINDS = {
    "letter": "letters",
    "digit": "digits",
    "shape": "shapes",
    "button": "buttons",
    "symbol": "symbols",
}


def make_scene(rng: np.random.Generator, split: str, question: str | None = None) -> Sample:
    """A scene and one question about it: of the form `question` (one of SCENE_QUESTIONS), or
    of a form drawn at the corpus's shares. Meta: each cell's labels, whether the scene is a
    clean render, and the question's form (`qtype`)."""
    img, clean = generic_canvas(rng, GRID)
    d = ImageDraw.Draw(img)
    n = int(rng.integers(1, 7))
    objs = []
    labels = [["empty", "none", "plain"] for _ in GRID.cells()]
    for r, c in _pick(rng, GRID.cells(), n):
        kind, spec, name = _object(rng)
        what, colour = spec.split("|")
        if kind == "button":
            labels[r * GRID.n + c] = [f"letter:{what}", colour, "button"]
            draw_button(d, what, GRID.box(r, c, pad=0), COLOURS[colour])
        else:
            labels[r * GRID.n + c] = [f"{kind}:{what}", colour, "plain"]
        if kind == "shape":
            box = GRID.box(r, c, pad=int(rng.integers(2, 5) if clean else rng.integers(0, 6)))
            if not clean and rng.random() < 0.3:  # a shadow
                x0, y0, x1, y1 = box
                draw_shape(d, what, (x0 + 1, y0 + 1, x1 + 1, y1 + 1), (45, 45, 45))
            draw_shape(d, what, box, COLOURS[colour])
        elif kind != "button":
            draw_glyph(d, what, GRID.box(r, c, pad=1), COLOURS[colour])
        objs.append(((r, c), kind, name))
    objs.sort()  # reading order
    if not clean:
        img = relight(img, rng)
    names = [name for _, _, name in objs]
    draw = rng.random()  # drawn either way, so a forced form leaves the scenes as they were
    mode = question or next(q for q, upto in SCENE_QUESTIONS if draw < upto)
    (r, c), kind, name = objs[int(rng.integers(0, n))]
    if mode == "describe":
        slots, a = {}, "; ".join(names) + "."
    elif mode == "colour":
        plain = labels[r * GRID.n + c][0]  # kind:value, without the colour
        if (
            kind == "button"
            or sum(labels[rr * GRID.n + cc][0] == plain for (rr, cc), _, _ in objs) > 1
        ):
            return make_scene(rng, split, question)
        if kind == "shape":
            name = f"the {plain.split(':')[1]}"
        slots, a = {"name": name}, labels[r * GRID.n + c][1]
    elif mode == "presence":
        asked = name if rng.random() < 0.5 else _object(rng)[2]
        slots, a = {"name": asked}, "yes" if asked in names else "no"
    elif mode == "where":
        if names.count(name) > 1:
            return make_scene(rng, split, question)
        slots, a = {"name": name}, position_name(r, c)
    elif mode in ("count", "boxes"):
        kind = _pick(rng, [k for _, k, _ in objs] + ["object"])  # one of the scene's
        cells = [(rr, cc) for (rr, cc), k, _ in objs if kind in (k, "object")]
        plural = KINDS.get(kind, "objects")
        slots = {"plural": plural}
        if mode == "count":
            a = str(len(cells))
        elif len(cells) > 3:  # scenes of up to three boxes keep the answers short
            return make_scene(rng, split, question)
        else:
            a = format_boxes([(cc, rr, cc + 1, rr + 1) for rr, cc in cells])
    else:
        slots, a = {"pos": position_name(r, c)}, name
    q = _pick(rng, PHRASINGS[mode]).format(img=_pick(rng, IMAGE_WORDS), **slots)
    return Sample(
        q, [a], [add_noise(img, rng)], meta={"cells": labels, "clean": clean, "qtype": mode}
    )


TASKS = {
    "scenes": SynthTask("scenes", "image", "lenient", "describing objects in a scene", make_scene)
}
