"""Drawing primitives shared by the procedural benchmarks: a palette, shapes, glyphs, a grid.

Scenes are laid out on a grid of square cells (default 4 x 4 cells of 16 px): small models
learn to see grid-aligned objects from a few thousand samples, which is what lets the embedded
default run in minutes. Benchmarks style the cells in their own way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (150, 60, 190),
    "orange": (245, 130, 20),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # no I, O, Q: too close to 1, 0 at 16 px
DIGITS = "0123456789"
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six")


@dataclass(frozen=True)
class Grid:
    """A square image of `n` x `n` cells of `cell` pixels."""

    n: int = 4
    cell: int = 16

    @property
    def size(self) -> int:
        return self.n * self.cell

    def box(self, row: int, col: int, pad: int = 2) -> tuple[int, int, int, int]:
        c = self.cell
        return (col * c + pad, row * c + pad, (col + 1) * c - 1 - pad, (row + 1) * c - 1 - pad)

    def cells(self) -> list[tuple[int, int]]:
        return [(r, c) for r in range(self.n) for c in range(self.n)]


def position_name(row: int, col: int) -> str:
    return f"row {NUMBER_WORDS[row]} column {NUMBER_WORDS[col]}"


_FONTS: dict[int, ImageFont.FreeTypeFont] = {}


def font(size: int) -> ImageFont.FreeTypeFont:
    if size not in _FONTS:
        _FONTS[size] = ImageFont.load_default(size=size)
    return _FONTS[size]


def canvas(grid: Grid, colour: tuple[int, int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (grid.size, grid.size), colour)
    return img, ImageDraw.Draw(img)


def draw_shape(
    d: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]
) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
    elif shape == "diamond":
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    elif shape == "cross":
        w = max(2, (x1 - x0) // 3)
        d.rectangle((cx - w / 2, y0, cx + w / 2, y1), fill=colour)
        d.rectangle((x0, cy - w / 2, x1, cy + w / 2), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def draw_glyph(
    d: ImageDraw.ImageDraw, ch: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]
) -> None:
    x0, y0, x1, y1 = box
    size = int((y1 - y0 + 1) * 1.1)
    d.text(((x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2), ch, fill=colour, font=font(size), anchor="mm")


def draw_button(
    d: ImageDraw.ImageDraw, label: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]
) -> None:
    """A labelled button: a coloured frame round a letter in the same colour. The label is drawn
    as any glyph (only smaller), so reading a button builds on reading letters."""
    x0, y0, x1, y1 = box
    d.rounded_rectangle(box, radius=3, fill=(250, 250, 250), outline=colour, width=2)
    draw_glyph(d, label, (x0 + 2, y0 + 2, x1 - 2, y1 - 2), colour)


def light_background(rng: np.random.Generator) -> tuple[int, int, int]:
    base = rng.integers(200, 256, size=3)
    return tuple(int(v) for v in base)


def blend(a: np.ndarray, b: np.ndarray, share: float | np.ndarray) -> np.ndarray:
    """`a` moved towards `b` by `share` (0: a, 1: b): a veil, a cast or a gradient; arrays or
    colours, `share` a number or an array that broadcasts."""
    return a * (1 - share) + b * share


def add_noise(img: Image.Image, rng: np.random.Generator, amount: float = 6.0) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, amount, size=(img.height, img.width, 1))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
