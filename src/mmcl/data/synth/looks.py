"""Generic looks for the base-pretraining corpus: backgrounds of any tone and texture, and
relighting (a colour cast, haze, uneven light), so that the vision encoder tells shapes and
colours apart beyond one look, as a CLIP encoder has seen many photographs.

None of the streams' own looks (scenario's tarmac, water, sky and rooms; ability's and domain's
screens) is drawn here: these are random mixtures of generic effects.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmcl.data.synth.draw import Grid, blend, canvas, light_background

CLEAN_SHARE = 0.5  # scenes rendered clean (light background, no relighting)


def _tone(rng: np.random.Generator, lo: int = 50, hi: int = 245) -> np.ndarray:
    return rng.integers(lo, hi, size=3).astype(np.float32)


def _unit_coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)  # (y, x) in [0, 1]


def _background(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """A plain, gradient, textured or tiled background of any tone, (H, W, 3) floats."""
    size = grid.size
    y, x = _unit_coords(size)
    kind = int(rng.integers(0, 4))
    if kind == 1:
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle), 0, 1)[..., None]
        return blend(_tone(rng), _tone(rng), t)
    arr = np.broadcast_to(_tone(rng), (size, size, 3)).copy()
    if kind == 2:
        arr += rng.normal(0, rng.uniform(4, 14), size=(size, size, 1))
        freq, phase = rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
        arr += rng.uniform(3, 10) * np.sign(np.sin(x * size * freq + phase))[..., None]
    elif kind == 3:
        for r, c in grid.cells():
            arr[r * grid.cell : (r + 1) * grid.cell, c * grid.cell : (c + 1) * grid.cell] += (
                rng.normal(0, 10)
            )
    return arr


def generic_canvas(rng: np.random.Generator, grid: Grid) -> tuple[Image.Image, bool]:
    """A blank canvas, and whether the scene is a clean render (light background; no
    relighting later)."""
    if rng.random() < CLEAN_SHARE:
        return canvas(grid, light_background(rng))[0], True
    return Image.fromarray(np.clip(_background(rng, grid), 0, 255).astype(np.uint8)), False


def relight(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A colour cast, haze and uneven light, each at random strength (or none)."""
    arr = np.asarray(img, np.float32)
    y, x = _unit_coords(img.height)
    if rng.random() < 0.5:
        cast = rng.uniform(0.1, 0.35)
        arr = blend(arr, _tone(rng, 0, 256), cast)
    if rng.random() < 0.4:
        haze = rng.uniform(0.05, 0.25) * (y if rng.random() < 0.5 else 1 - y)[..., None]
        arr = blend(arr, _tone(rng, 150, 256), haze)
    if rng.random() < 0.4:
        ly, lx = rng.uniform(0, 1, size=2)
        light = rng.uniform(1.0, 1.2) - rng.uniform(0.2, 0.45) * np.hypot(y - ly, x - lx)
        arr = arr * light[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
