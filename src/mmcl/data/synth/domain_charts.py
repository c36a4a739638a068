"""The chart domains of the `domain` stream (domain.py): science charts and stock charts."""

from __future__ import annotations

import numpy as np
from PIL import ImageDraw

from mmcl.data.synth import Sample
from mmcl.data.synth.ability import GRID, _pick
from mmcl.data.synth.domain_scenes import LETTER_OPTIONS, _jitter, _options, _question
from mmcl.data.synth.draw import COLOURS, add_noise, canvas

# --- science: charts and diagrams --------------------------------------------------------------
CHARTS = ["bar chart", "pie chart", "line graph"]
ORDINALS = ["first", "second", "third", "fourth"]
_INKS = ["red", "blue", "green", "purple", "orange"]


def _axes(d: ImageDraw.ImageDraw) -> None:
    s = GRID.size
    d.line((1, 0, 1, s - 2), fill=(20, 20, 20))
    d.line((1, s - 2, s - 1, s - 2), fill=(20, 20, 20))


def _bar_chart(d: ImageDraw.ImageDraw, rng: np.random.Generator, tallest: int) -> None:
    """Four bars, one per column; the tallest reaches the top row, the others do not."""
    _axes(d)
    ink = COLOURS[_pick(rng, _INKS)]
    for col in range(GRID.n):
        cells = GRID.n if col == tallest else int(rng.integers(1, GRID.n))
        x0, _, x1, _ = GRID.box(0, col, pad=3)
        d.rectangle((x0, GRID.size - 2 - cells * GRID.cell + 3, x1, GRID.size - 3), fill=ink)


def _pie_chart(d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    cuts = np.sort(rng.choice(np.arange(30, 330, 15), size=int(rng.integers(1, 4)), replace=False))
    angles = [0, *[int(a) for a in cuts], 360]
    inks = _pick(rng, _INKS, len(angles) - 1)
    for k in range(len(angles) - 1):
        d.pieslice((4, 4, GRID.size - 5, GRID.size - 5), angles[k], angles[k + 1], COLOURS[inks[k]])


def _line_graph(d: ImageDraw.ImageDraw, rng: np.random.Generator, rows: list[int]) -> None:
    """A line through one marker per column, at the centre of the cell in row `rows[col]`."""
    _axes(d)
    ink = COLOURS[_pick(rng, _INKS)]
    pts = [(col * GRID.cell + 8, r * GRID.cell + 8) for col, r in enumerate(rows)]
    d.line(pts, fill=ink, width=2)
    for x, y in pts:
        d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=ink)


def make_science(rng: np.random.Generator, split: str) -> Sample:
    img, d = canvas(GRID, _jitter(rng, (248, 248, 244), 6))
    form = _question(rng, [0.35, 0.35, 0.3])
    if form == 0:
        chart = _pick(rng, CHARTS)
        if chart == "bar chart":
            _bar_chart(d, rng, int(rng.integers(0, GRID.n)))
        elif chart == "pie chart":
            _pie_chart(d, rng)
        else:
            _line_graph(d, rng, [int(v) for v in rng.integers(0, GRID.n, size=GRID.n)])
        q, a = "what type of chart is shown in this diagram?", chart
    elif form == 1:
        tallest = int(rng.integers(0, GRID.n))
        _bar_chart(d, rng, tallest)
        q, a = f"which bar is the highest? {_options(ORDINALS)}", LETTER_OPTIONS[tallest]
    else:
        rows = [int(v) for v in rng.integers(0, GRID.n, size=GRID.n)]
        while rows[-1] == rows[0]:
            rows[-1] = int(rng.integers(0, GRID.n))
        _line_graph(d, rng, rows)
        q = "is the last value of the line graph higher than the first value?"
        a = "yes" if rows[-1] < rows[0] else "no"  # a smaller row is higher up
    return Sample(q, [a], [add_noise(img, rng, 4.0)])


# --- finance: stock price charts ---------------------------------------------------------------
TRENDS = ["rising", "falling", "flat"]
MOVES = {1: "up", -1: "down", 0: "flat"}
_MOVE_INK = {1: (40, 200, 90), -1: (230, 60, 60), 0: (160, 160, 160)}


def _price_walk(rng: np.random.Generator, trend: str) -> list[int]:
    """Price levels 0-2 (2 is the top) at the 5 day boundaries, with a net change that matches
    `trend`; each day moves by -1, 0 or +1 level."""
    while True:
        levels = [int(rng.integers(0, 3))]
        for _ in range(GRID.n):
            levels.append(int(np.clip(levels[-1] + rng.integers(-1, 2), 0, 2)))
        net = levels[-1] - levels[0]
        if TRENDS[0 if net > 0 else 1 if net < 0 else 2] == trend:
            return levels


def make_finance(rng: np.random.Generator, split: str) -> Sample:
    """A dark trading-app chart: one day per column, rising days green and falling days red;
    volume bars in the bottom row."""
    levels = _price_walk(rng, _pick(rng, TRENDS))
    img, d = canvas(GRID, _jitter(rng, (18, 22, 32), 4))
    for k in range(1, GRID.n):
        d.line((k * GRID.cell, 0, k * GRID.cell, GRID.size - 1), fill=(40, 45, 60))
    ys = [GRID.cell * (2 - lv) + GRID.cell // 2 for lv in levels]
    for day in range(GRID.n):
        move = int(np.sign(levels[day + 1] - levels[day]))
        x0, x1 = day * GRID.cell, (day + 1) * GRID.cell - 1
        d.line((x0, ys[day], x1, ys[day + 1]), fill=_MOVE_INK[move], width=3)
        vol = int(rng.integers(3, 14))
        bx0, _, bx1, by1 = GRID.box(3, day, pad=3)
        d.rectangle((bx0, by1 - vol, bx1, by1), fill=(90, 100, 140))
    moves = [int(np.sign(levels[k + 1] - levels[k])) for k in range(GRID.n)]
    net = levels[-1] - levels[0]
    form = _question(rng, [0.35, 0.35, 0.3])
    if form == 0:
        trend = 0 if net > 0 else 1 if net < 0 else 2
        q, a = f"what is the overall trend of the stock? {_options(TRENDS)}", LETTER_OPTIONS[trend]
    elif form == 1:
        q, a = "did the stock price rise on the last day?", "yes" if moves[-1] > 0 else "no"
    else:
        q, a = "how did the stock price move on the first day?", MOVES[moves[0]]
    return Sample(q, [a], [add_noise(img, rng, 3.0)])
