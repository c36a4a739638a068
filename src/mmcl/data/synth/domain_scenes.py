"""The scene domains of the `domain` stream (domain.py): remote sensing, medical scans and
driving, and the helpers every domain shares."""

from __future__ import annotations

import numpy as np
from PIL import ImageDraw

from mmcl.data.synth import Sample
from mmcl.data.synth.ability import GRID, _pick
from mmcl.data.synth.draw import COLOURS, add_noise, canvas

LETTER_OPTIONS = "ABCD"
Colour = tuple[int, int, int]


def _options(names: list[str]) -> str:
    return "options: " + " ".join(f"{LETTER_OPTIONS[k]}. {n}" for k, n in enumerate(names))


def _jitter(rng: np.random.Generator, colour: Colour, amount: int = 12) -> Colour:
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in colour)


def _question(rng: np.random.Generator, weights: list[float]) -> int:
    """Which question form a sample asks (index into `weights`)."""
    return int(rng.choice(len(weights), p=np.asarray(weights) / sum(weights)))


# --- remote sensing: aerial land-cover tiles ---------------------------------------------------
LAND = {
    "water": (50, 100, 180),
    "forest": (40, 110, 50),
    "buildings": (165, 165, 160),
    "farmland": (205, 185, 95),
}
LAND_NAMES = list(LAND)


def _land_cell(d: ImageDraw.ImageDraw, rng: np.random.Generator, r: int, c: int, kind: str):
    """One cell of land cover: a base colour and that cover's texture."""
    x0, y0, x1, y1 = GRID.box(r, c, pad=0)
    d.rectangle((x0, y0, x1, y1), fill=_jitter(rng, LAND[kind]))
    if kind == "water":  # light ripples
        for y in range(y0 + 3, y1, 5):
            dx = int(rng.integers(0, 4))
            d.line((x0 + dx, y, x0 + dx + 6, y), fill=(110, 160, 220))
    elif kind == "forest":  # dark tree crowns
        for _ in range(int(rng.integers(3, 6))):
            cx, cy = x0 + int(rng.integers(3, 13)), y0 + int(rng.integers(3, 13))
            d.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=(20, 70, 30))
    elif kind == "buildings":  # rooftops
        for _ in range(int(rng.integers(2, 4))):
            bx, by = x0 + int(rng.integers(1, 9)), y0 + int(rng.integers(1, 9))
            roof = _pick(rng, [(90, 90, 95), (150, 70, 50), (230, 230, 225)])
            d.rectangle((bx, by, bx + 5, by + 5), fill=roof)
    else:  # ploughed stripes
        vertical = rng.random() < 0.5
        for k in range(2, 16, 4):
            if vertical:
                d.line((x0 + k, y0, x0 + k, y1), fill=(160, 140, 60))
            else:
                d.line((x0, y0 + k, x1, y0 + k), fill=(160, 140, 60))


def _road(d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """A straight road along an inner row or column (never through a corner cell)."""
    k = int(rng.integers(1, 3))
    mid = k * GRID.cell + GRID.cell // 2
    if rng.random() < 0.5:
        d.rectangle((0, mid - 3, GRID.size - 1, mid + 2), fill=(70, 70, 75))
        for x in range(2, GRID.size, 8):
            d.line((x, mid, x + 3, mid), fill=(240, 240, 240))
    else:
        d.rectangle((mid - 3, 0, mid + 2, GRID.size - 1), fill=(70, 70, 75))
        for y in range(2, GRID.size, 8):
            d.line((mid, y, mid, y + 3), fill=(240, 240, 240))


def make_remote_sensing(rng: np.random.Generator, split: str) -> Sample:
    """A tile where one cover holds 7-10 of the 16 cells; the top-left corner's cover is drawn
    uniformly, so that every option letter is equally likely."""
    main, corner = _pick(rng, LAND_NAMES), _pick(rng, LAND_NAMES)
    n_main = int(rng.integers(7, 11))
    others = [k for k in LAND_NAMES if k != main]
    while True:
        kinds = {(0, 0): corner}
        rest = GRID.cells()[1:]
        need = n_main - (corner == main)
        for cell in _pick(rng, rest, need):
            kinds[cell] = main
        for cell in rest:
            kinds.setdefault(cell, _pick(rng, others))
        counts = [list(kinds.values()).count(k) for k in LAND_NAMES]
        if max(n for k, n in zip(LAND_NAMES, counts, strict=True) if k != main) < n_main:
            break
    img, d = canvas(GRID, (0, 0, 0))
    for (r, c), kind in kinds.items():
        _land_cell(d, rng, r, c, kind)
    has_road = rng.random() < 0.5
    if has_road:
        _road(d, rng)
    form = _question(rng, [0.4, 0.3, 0.3])
    if form == 0:
        q, a = "what is the main land cover in this aerial image?", main
    elif form == 1:
        q, a = "is there a road in this aerial image?", "yes" if has_road else "no"
    else:
        q = f"what covers the top left corner of the tile? {_options(LAND_NAMES)}"
        a = LETTER_OPTIONS[LAND_NAMES.index(corner)]
    return Sample(q, [a], [add_noise(img, rng, 4.0)])


# --- medical: grayscale scans with lesions -----------------------------------------------------
BODY_PARTS = ["brain", "chest", "abdomen"]
QUADRANTS = ["upper left", "upper right", "lower left", "lower right"]


def _grey(rng: np.random.Generator, level: int) -> Colour:
    v = int(np.clip(level + rng.integers(-10, 11), 0, 255))
    return (v, v, v)


def _scan(d: ImageDraw.ImageDraw, rng: np.random.Generator, part: str) -> None:
    s = GRID.size
    if part == "brain":  # a bright skull rim around grey brain tissue
        d.ellipse((3, 3, s - 4, s - 4), fill=_grey(rng, 205))
        d.ellipse((7, 7, s - 8, s - 8), fill=_grey(rng, 115))
        d.line((s // 2, 10, s // 2, s - 11), fill=_grey(rng, 80))
    elif part == "chest":  # a body with two dark lungs and a bright spine
        d.rounded_rectangle((2, 6, s - 3, s - 3), radius=10, fill=_grey(rng, 125))
        d.ellipse((7, 10, 28, s - 8), fill=_grey(rng, 35))
        d.ellipse((s - 29, 10, s - 8, s - 8), fill=_grey(rng, 35))
        d.rectangle((s // 2 - 2, 8, s // 2 + 1, s - 5), fill=_grey(rng, 200))
    else:  # abdomen: a round body, a lighter liver, dark bowel loops
        d.ellipse((2, 5, s - 3, s - 3), fill=_grey(rng, 120))
        d.ellipse((6, 10, 34, 34), fill=_grey(rng, 160))
        for _ in range(4):
            cx, cy = int(rng.integers(36, 52)), int(rng.integers(30, 52))
            d.ellipse((cx - 4, cy - 4, cx + 4, cy + 4), fill=_grey(rng, 60))


def make_medical(rng: np.random.Generator, split: str) -> Sample:
    """A scan of one body part; at most one lesion (a bright blob centred in a cell)."""
    part = _pick(rng, BODY_PARTS)
    img, d = canvas(GRID, _grey(rng, 8))
    _scan(d, rng, part)
    form = _question(rng, [0.35, 0.35, 0.3])
    has_lesion = form == 2 or rng.random() < 0.5
    quadrant = int(rng.integers(0, 4))
    if has_lesion:
        r = int(rng.integers(0, 2)) + 2 * (quadrant // 2)
        c = int(rng.integers(0, 2)) + 2 * (quadrant % 2)
        x0, y0, x1, y1 = GRID.box(r, c, pad=int(rng.integers(4, 6)))
        d.ellipse((x0, y0, x1, y1), fill=_grey(rng, 245))
    if form == 0:
        q, a = "what body part is shown in this scan?", part
    elif form == 1:
        q, a = "is there a lesion in this scan?", "yes" if has_lesion else "no"
    else:
        q, a = f"where is the lesion? {_options(QUADRANTS)}", LETTER_OPTIONS[quadrant]
    return Sample(q, [a], [add_noise(img, rng, 5.0)])


# --- autonomous driving: a four-camera mosaic ------------------------------------------------
# Each camera view is a 2 x 2 block of cells: sky above, road below.
VIEWS = {"front": (0, 0), "rear": (0, 2), "left": (2, 0), "right": (2, 2)}
LIGHTS = ["red", "yellow", "green"]
ACTIONS = ["go straight", "slow down", "stop"]  # what each light asks for, in LIGHTS order
_CAR_COLOURS = ["red", "blue", "yellow", "purple", "orange", "green"]


def _camera(d: ImageDraw.ImageDraw, rng: np.random.Generator, r: int, c: int) -> None:
    x0, y0 = c * GRID.cell, r * GRID.cell
    w = 2 * GRID.cell
    d.rectangle((x0, y0, x0 + w - 1, y0 + GRID.cell - 1), fill=_jitter(rng, (150, 190, 230)))
    d.rectangle((x0, y0 + GRID.cell, x0 + w - 1, y0 + w - 1), fill=_jitter(rng, (85, 85, 90), 8))
    mid, horizon, bottom = x0 + w // 2, y0 + GRID.cell, y0 + w - 1
    d.line((x0 + 4, bottom, mid - 2, horizon), fill=(235, 235, 235))
    d.line((x0 + w - 5, bottom, mid + 1, horizon), fill=(235, 235, 235))
    d.rectangle((x0, y0, x0 + w - 1, y0 + w - 1), outline=(15, 15, 15))


def _car(d: ImageDraw.ImageDraw, rng: np.random.Generator, r: int, c: int) -> None:
    x0, y0, x1, y1 = GRID.box(r, c, pad=2)
    body = COLOURS[_pick(rng, _CAR_COLOURS)]
    d.rectangle((x0, y0 + 3, x1, y1 - 2), fill=body)
    d.rectangle((x0 + 3, y0, x1 - 3, y0 + 3), fill=body)
    d.ellipse((x0, y1 - 4, x0 + 4, y1), fill=(10, 10, 10))
    d.ellipse((x1 - 4, y1 - 4, x1, y1), fill=(10, 10, 10))


def _traffic_light(d: ImageDraw.ImageDraw, light: str) -> None:
    """In the front camera's upper right cell: red on top, yellow, green at the bottom."""
    x0, y0, _, _ = GRID.box(0, 1, pad=0)
    hx0, hx1 = x0 + 5, x0 + 10
    d.rectangle((hx0, y0 + 1, hx1, y0 + 15), fill=(20, 20, 20))
    k = LIGHTS.index(light)
    cy = y0 + 3 + 5 * k
    d.ellipse((hx0, cy - 2, hx1, cy + 3), fill=COLOURS[light])


def make_driving(rng: np.random.Generator, split: str) -> Sample:
    """Front, rear, left and right cameras; vehicles on the road cells; one traffic light."""
    img, d = canvas(GRID, (0, 0, 0))
    cars = {}
    for name, (r, c) in VIEWS.items():
        _camera(d, rng, r, c)
        cars[name] = rng.random() < 0.5
        if cars[name]:
            _car(d, rng, r + 1, c + int(rng.integers(0, 2)))
    light = _pick(rng, LIGHTS)
    _traffic_light(d, light)
    form = _question(rng, [0.35, 0.35, 0.3])
    if form == 0:
        q, a = "what colour is the traffic light ahead?", light
    elif form == 1:
        view = _pick(rng, list(VIEWS))
        q, a = f"is there a vehicle in the {view} camera?", "yes" if cars[view] else "no"
    else:
        action = ACTIONS[{"green": 0, "yellow": 1, "red": 2}[light]]
        q = f"what should the ego car do? {_options(ACTIONS)}"
        a = LETTER_OPTIONS[ACTIONS.index(action)]
    return Sample(q, [a], [add_noise(img, rng, 4.0)])
