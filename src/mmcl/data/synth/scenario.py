"""The multi-scenario stream of MSVQA (UNIFIER), procedurally: one look per scenario.

Four scenarios share the object categories (the shapes of draw.py), the colours and the
question types, and differ in how the scene looks:
- high_altitude: top-down over tarmac, many small objects with tiny shadows, under the
  blue-white veil of the air between camera and ground (washed-out colours, lifted darks);
- underwater: water absorbs red first (red targets turn dark, orange and yellow green-grey),
  then a blue-green cast, haze and caustic light patterns over a gradient;
- low_altitude: an oblique view with sky, horizon and road; objects grow towards the camera
  and, lying on the ground, are foreshortened to half their height;
- indoor: a room (wall, wooden floor, a table), larger objects, lit by a warm tungsten lamp
  that is poor in blue and green (yellow turns orange, blue dark).

Objects sit in the cells of the 4 x 4 grid of 16 px cells (one object per cell, of a size that
varies with the scenario), which is what the embedded model's vision encoder was pretrained on.
A scene holds zero to three coloured targets among black clutter, and every question is about
the targets, as in target search from drones or underwater robots. Question types (record meta
"qtype"): existence ("is there a coloured circle?"), counting (of the targets), category and
colour (of the one target), position ("row two column three") and grounding: the boxes of the
one or two targets as text in grid-cell units, x = column and y = row, corners on cell
boundaries: the object in row r, column c is "[c,r,c+1,r+1]" (multiply by 16 for pixels); see
metrics.format_boxes / parse_boxes.

Why targets and fixed questions: questions that pick an object by its position words ("what
colour is the object at row two column three?") were not learned by the embedded 5M LM from a
few hundred samples per task (every method scored 30-32 on the 5-step protocol). Each question
type is drawn with a number of targets that keeps its answers balanced (counting: 0-3 evenly;
existence: "yes" half the time), so that a constant answer scores little; reports
show each type's score beside that constant-answer baseline (mmcl.question_types). The
embedded base reads the targets' colour, shape, number and position through every look (its
encoder was pretrained on generic looks too, and its image tokens carry their position in
number words); existence, which needs a comparison, is the type it does not learn (README,
"The embedded base model").

The looks disturb each other where it counts, each in its own way, as real scenarios do: water
and the tungsten lamp shift colours in opposite directions (under water orange reads as yellow,
under the lamp yellow as orange), the air washes them out, and the oblique view changes how
shapes look. The base's encoder, which has seen none of these looks, misreads them differently
in each scenario, so what a model learns to read in one can be undone by the next (README, "The
embedded base model", has what lora-ft and UNIFIER keep of it).
A visit has 2000 training samples: with 1000, the first visits still taught the skills that
every scenario shares, and later visits kept raising them, hiding that forgetting.

A task is one visit of a scenario with all question types; revisits are separate tasks named
`<scenario>_<n>` (n >= 2) whose samples come from their own random streams (fresh data).
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image, ImageDraw

from mmcl.data.synth import Sample, SynthTask
from mmcl.data.synth.ability import GRID, _pick
from mmcl.data.synth.draw import COLOURS, SHAPES, add_noise, blend, draw_shape, position_name
from mmcl.metrics import format_boxes

OBJECT_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
QTYPES = ("existence", "counting", "category", "colour", "position", "grounding")
_QTYPE_P = (0.15, 0.2, 0.15, 0.15, 0.15, 0.2)
VISITS = 5  # scenario-20: four scenarios x five visits

Obj = tuple[int, int, str, str]  # row, column, shape, colour


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32)


def _img(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _coords() -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0 : GRID.size, 0 : GRID.size].astype(np.float32)  # (y, x)


def _place(
    rng: np.random.Generator, cells: list[tuple[int, int]], n: int, targets: int
) -> list[Obj]:
    """At least `targets` + 1 objects in distinct cells (at most `n` unless more are needed):
    `targets` coloured ones, the rest black clutter."""
    n = max(n, targets + 1)
    colours = [_pick(rng, list(OBJECT_COLOURS)) for _ in range(targets)] + ["black"] * (n - targets)
    return [
        (r, c, _pick(rng, SHAPES), col)
        for (r, c), col in zip(_pick(rng, cells, n), colours, strict=True)
    ]


# --- the four looks -----------------------------------------------------------------------------
def _high_altitude(rng: np.random.Generator, targets: int) -> tuple[Image.Image, list[Obj]]:
    base = rng.integers(105, 150)
    arr = np.full((GRID.size, GRID.size, 3), base, dtype=np.float32)
    for r, c in GRID.cells():  # tarmac patches of slightly different tone per cell
        tone = rng.normal(0, 10) + np.array([0, 2, -3])
        arr[r * GRID.cell : (r + 1) * GRID.cell, c * GRID.cell : (c + 1) * GRID.cell] += tone
    arr += rng.normal(0, 7, size=arr.shape[:2])[..., None]  # texture
    img = _img(arr)
    d = ImageDraw.Draw(img)
    for k in range(1, GRID.n):  # taxiway markings run along cell boundaries
        if rng.random() < 0.4:
            y = k * GRID.cell - 1
            for x in range(0, GRID.size, 6):
                d.line((x, y, x + 2, y), fill=(225, 225, 200))
    objs = _place(rng, GRID.cells(), int(rng.integers(6, 12)), targets)
    for r, c, shape, colour in objs:
        pad = int(rng.integers(4, 6))  # small: 6-8 px seen from far above
        x0, y0, x1, y1 = GRID.box(r, c, pad=pad)
        draw_shape(d, shape, (x0 + 1, y0 + 1, x1 + 1, y1 + 1), (45, 45, 45))  # shadow
        draw_shape(d, shape, (x0, y0, x1, y1), COLOURS[colour])
    # Seen through kilometres of air: a blue-white veil lifts the darks and washes colours out.
    haze = float(rng.uniform(0.35, 0.5))
    arr = blend(_arr(img), np.array([195, 205, 225]), haze)
    return add_noise(_img(arr), rng, 5.0), objs


def _underwater(rng: np.random.Generator, targets: int) -> tuple[Image.Image, list[Obj]]:
    y, x = _coords()
    top, bottom = np.array([45, 160, 175]), np.array([10, 55, 90])
    t = (y / (GRID.size - 1))[..., None]
    img = _img(blend(top, bottom, t) + rng.normal(0, 4, size=(GRID.size, GRID.size, 1)))
    d = ImageDraw.Draw(img)
    objs = _place(rng, GRID.cells(), int(rng.integers(3, 8)), targets)
    for r, c, shape, colour in objs:
        draw_shape(d, shape, GRID.box(r, c, pad=int(rng.integers(2, 4))), COLOURS[colour])
    # Water absorbs long wavelengths first (the module docstring says what that does).
    arr = _arr(img) * np.array([rng.uniform(0.25, 0.45), rng.uniform(0.7, 0.85), 1.0])
    cast = float(rng.uniform(0.2, 0.35))  # and the scattered light is blue-green
    arr = blend(arr, np.array([0, 120, 140]), cast)
    haze = float(rng.uniform(0.1, 0.25)) * (0.5 + 0.5 * (1 - y / GRID.size))[..., None]
    arr = blend(arr, np.array([110, 180, 190]), haze)
    f1, f2, ph = rng.uniform(0.25, 0.45), rng.uniform(0.25, 0.45), rng.uniform(0, 2 * np.pi)
    caustics = np.maximum(0, np.sin(x * f1 + np.sin(y * 0.2) * 2 + ph) * np.sin(y * f2 - ph))
    arr += float(rng.uniform(25, 45)) * (caustics**3)[..., None]
    return add_noise(_img(arr), rng, 5.0), objs


def _low_altitude(rng: np.random.Generator, targets: int) -> tuple[Image.Image, list[Obj]]:
    y, x = _coords()
    horizon = GRID.cell  # the top row is sky
    sky = np.array([150, 195, 240]) + (y / horizon)[..., None] * np.array([45, 30, 8])
    far, near = np.array([150, 165, 120]), np.array([70, 120, 50])
    t = np.clip((y - horizon) / (GRID.size - horizon), 0, 1)[..., None]
    ground = blend(far, near, t)
    arr = np.where((y < horizon)[..., None], sky, ground)
    img = _img(arr + rng.normal(0, 4, size=(GRID.size, GRID.size, 1)))
    d = ImageDraw.Draw(img)
    vx = float(rng.uniform(16, 48))  # a road converging to a vanishing point on the horizon
    d.polygon(
        [(vx - 2, horizon), (vx + 2, horizon), (vx + 22, GRID.size), (vx - 22, GRID.size)],
        fill=(120, 118, 110),
    )
    cells = [(r, c) for r, c in GRID.cells() if r > 0]
    objs = _place(rng, cells, int(rng.integers(2, 7)), targets)
    for r, c, shape, colour in objs:
        pad = {1: 4, 2: 2, 3: int(rng.integers(0, 2))}[r]  # perspective: nearer is larger
        x0, y0, x1, y1 = GRID.box(r, c, pad=pad)
        d.ellipse((x0, y1 - 2, x1 + 2, y1 + 1), fill=(40, 55, 30))  # shadow on the ground
        # Seen obliquely, an object lying on the ground is foreshortened: half its height.
        draw_shape(d, shape, (x0, (y0 + y1) // 2, x1, y1), COLOURS[colour])
    return add_noise(img, rng, 4.0), objs


def _indoor(rng: np.random.Generator, targets: int) -> tuple[Image.Image, list[Obj]]:
    y, x = _coords()
    wall = np.array(_pick(rng, [(225, 210, 180), (200, 220, 200), (200, 210, 230)]), np.float32)
    wall_tex = wall + 6 * np.sign(np.sin(x * 1.6))[..., None]  # wallpaper stripes
    floor = np.array([150, 105, 65]) + 18 * ((y.astype(int) % 5) == 0)[..., None] * -1
    arr = np.where((y < 2 * GRID.cell)[..., None], wall_tex, floor)
    img = _img(arr)
    d = ImageDraw.Draw(img)
    d.line((0, 2 * GRID.cell, GRID.size, 2 * GRID.cell), fill=(90, 60, 40), width=2)  # skirting
    tx = int(rng.integers(0, 3)) * GRID.cell  # a table straddling a row boundary
    table = (tx + 4, 3 * GRID.cell - 2, tx + 2 * GRID.cell + 10, 3 * GRID.cell)
    d.rectangle(table, fill=(95, 60, 35))
    objs = _place(rng, GRID.cells(), int(rng.integers(3, 8)), targets)
    for r, c, shape, colour in objs:
        draw_shape(d, shape, GRID.box(r, c, pad=int(rng.integers(1, 3))), COLOURS[colour])
    arr = _arr(img)
    ly, lx = _pick(rng, [(0, 0), (0, GRID.size), (GRID.size / 2, 0), (GRID.size / 2, GRID.size)])
    dist = np.hypot(y - ly, x - lx) / (GRID.size * 1.4)
    light = float(rng.uniform(1.05, 1.2)) - float(rng.uniform(0.3, 0.45)) * dist
    # A warm tungsten lamp in one corner: its light is poor in blue and green.
    gains = np.array([1.0, rng.uniform(0.72, 0.82), rng.uniform(0.4, 0.55)])
    arr = arr * light[..., None] * gains
    return add_noise(_img(arr), rng, 4.0), objs


SCENARIOS = {
    "high_altitude": (_high_altitude, "top-down aerial views of many small objects"),
    "underwater": (_underwater, "underwater scenes with a blue-green cast, haze and caustics"),
    "low_altitude": (_low_altitude, "oblique low-altitude views with sky, road and larger objects"),
    "indoor": (_indoor, "indoor rooms with furniture and lamp lighting"),
}


# --- questions ----------------------------------------------------------------------------------
# How many coloured targets a scene of each question type holds: counting spreads its answers
# evenly; existence's answers are half "yes" (see _question).
_TARGETS = {
    "existence": (0.1, 0.5, 0.3, 0.1),
    "counting": (0.25, 0.25, 0.25, 0.25),
    "category": (0, 1, 0, 0),
    "colour": (0, 1, 0, 0),
    "position": (0, 1, 0, 0),
    "grounding": (0, 0.5, 0.5, 0),
}


def _question(rng: np.random.Generator, objs: list[Obj], qtype: str) -> tuple[str, str]:
    """(question, answer) of a type about the scene's targets."""
    targets = sorted(o for o in objs if o[3] != "black")  # reading order
    if qtype == "existence":
        # Half of all answers are "yes": a scene without targets can only say "no", so the
        # others ask about a target's shape a little more than half the time. A "no" names a
        # shape no target has (a random shape would often hit one: "yes" about 61%).
        if targets and rng.random() < 0.5 / (1 - _TARGETS["existence"][0]):
            return f"is there a coloured {_pick(rng, targets)[2]} in the scene?", "yes"
        absent = [s for s in SHAPES if all(o[2] != s for o in targets)]
        return f"is there a coloured {_pick(rng, absent)} in the scene?", "no"
    if qtype == "counting":
        return "how many coloured objects are there?", str(len(targets))
    if qtype == "grounding":
        boxes = [(c, r, c + 1, r + 1) for r, c, _, _ in targets]
        return "locate the coloured objects. answer with bounding boxes.", format_boxes(boxes)
    r, c, shape, colour = targets[0]
    if qtype == "category":
        return "what category is the coloured object?", shape
    if qtype == "colour":
        return "what colour is the coloured object?", colour
    return "where is the coloured object?", position_name(r, c)


def scenario_maker(scenario: str):
    """The sample maker of one scenario (every question type)."""
    look, _ = SCENARIOS[scenario]

    def make(rng: np.random.Generator, split: str) -> Sample:
        qtype = QTYPES[int(rng.choice(len(QTYPES), p=_QTYPE_P))]
        img, objs = look(rng, int(rng.choice(4, p=_TARGETS[qtype])))
        question, answer = _question(rng, objs, qtype)
        return Sample(question, [answer], [img], meta={"scenario": scenario, "qtype": qtype})

    return make


def task_name(scenario: str, visit: int) -> str:
    """`underwater` for the first visit, `underwater_2`, ... for the revisits."""
    return scenario if visit == 1 else f"{scenario}_{visit}"


TASKS = {
    task_name(s, v): SynthTask(
        task_name(s, v),
        "image",
        "msvqa",
        desc,  # a revisit is the same scenario: a router reading descriptions sees one choice
        scenario_maker(s),
    )
    for v in range(1, VISITS + 1)
    for s, (_, desc) in SCENARIOS.items()
}
# The protocols: five steps (the four scenarios, then the first revisited), and twenty steps
# (the four scenarios visited five times, each visit with fresh data).
ORDER_5 = (*SCENARIOS, task_name("high_altitude", 2))
ORDER_20 = tuple(task_name(s, v) for v in range(1, VISITS + 1) for s in SCENARIOS)


def scenario_of(task: str) -> str:
    """The scenario a task visits: its name without a revisit suffix (`underwater_2` ->
    `underwater`). Methods use it at training time only (a branch per scenario)."""
    return re.sub(r"_\d+$", "", task)
