"""Procedural audio and video: synthesis primitives (as draw.py is for images) and the file
writers (WAV int16, mp4 H.264) that importing this module registers in MEDIA_WRITERS.

A sound is one kind of event (tone, chirp, noise burst, bell) at a pitch, repeated a number of
times within a one-second clip. A video clip shows objects on the drawing grid, one of which
steps from cell to cell, so that the uniformly sampled frames see it on the grid.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from PIL import Image

from mmcl.data.media import AUDIO_RATE
from mmcl.data.synth import MEDIA_WRITERS
from mmcl.data.synth.draw import COLOURS, Grid, canvas, draw_shape

CLIP_SECONDS = 1.0
SOUND_KINDS = ("tone", "chirp", "noise", "bell")
PITCH_HZ = {"low": (200.0, 400.0), "high": (1300.0, 2600.0)}
LOUDNESS = {"quiet": 0.12, "loud": 0.7}
VIDEO_FPS = 8
VIDEO_LENGTH = 8  # frames written per clip; 4 sampled uniformly are frames 0, 2, 5, 7
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
SPEED_CELLS = {"slow": 1, "fast": 3}  # cells travelled over the clip


def _event(rng: np.random.Generator, kind: str, pitch: str, rising: bool, n: int) -> np.ndarray:
    """One sound event of `n` samples, peak amplitude about 1."""
    t = np.arange(n) / AUDIO_RATE
    f0 = rng.uniform(*PITCH_HZ[pitch])
    if kind == "tone":
        wave_ = np.sin(2 * np.pi * f0 * t)
    elif kind == "chirp":
        lo, hi = f0 * 0.6, f0 * 1.5
        freq = np.linspace(lo, hi, n) if rising else np.linspace(hi, lo, n)
        wave_ = np.sin(2 * np.pi * np.cumsum(freq) / AUDIO_RATE)
    elif kind == "noise":
        white = rng.normal(0, 1, n)
        if pitch == "high":
            wave_ = np.diff(white, prepend=0.0)
        else:  # a moving average keeps the low frequencies
            wave_ = np.convolve(white, np.ones(24) / 24, mode="same")
        wave_ /= np.abs(wave_).max() + 1e-9
    elif kind == "bell":
        partials = [(1.0, 1.0), (2.76, 0.5), (5.4, 0.25)]
        wave_ = sum(a * np.sin(2 * np.pi * f0 * r * t) for r, a in partials) / 1.75
        wave_ = wave_ * np.exp(-t * 18)
    else:
        raise ValueError(f"unknown sound kind {kind!r}")
    ramp = min(n // 2, int(0.005 * AUDIO_RATE))  # 5 ms fades: no clicks
    env = np.ones(n)
    env[:ramp], env[n - ramp :] = np.linspace(0, 1, ramp), np.linspace(1, 0, ramp)
    return wave_ * env


def synth_sound(
    rng: np.random.Generator, kind: str, pitch: str, count: int, rising: bool, loudness: str
) -> np.ndarray:
    """A one-second clip: `count` events of `kind` spread over it, over faint background noise."""
    total = int(CLIP_SECONDS * AUDIO_RATE)
    out = rng.normal(0, 0.004, total)
    slot = total // count
    n = int(0.16 * AUDIO_RATE)
    amp = LOUDNESS[loudness] * rng.uniform(0.85, 1.15)
    for k in range(count):
        start = k * slot + int(rng.integers(0, slot - n + 1))
        out[start : start + n] += amp * _event(rng, kind, pitch, rising, n)
    return out.astype(np.float32)


def render_clip(
    grid: Grid,
    background: tuple[int, int, int],
    mover: tuple[str, str, tuple[int, int]],
    direction: str,
    speed: str,
    still: list[tuple[str, str, tuple[int, int]]],
) -> list[Image.Image]:
    """VIDEO_LENGTH frames: `mover` (shape, colour, start cell) steps `SPEED_CELLS[speed]` cells
    in `direction`, evenly in time; the `still` objects stay put."""
    shape, colour, (r0, c0) = mover
    dr, dc = DIRECTIONS[direction]
    cells = SPEED_CELLS[speed]
    frames = []
    for j in range(VIDEO_LENGTH):
        step = (j * (cells + 1)) // VIDEO_LENGTH  # 0 .. cells, each held for equal time
        img, d = canvas(grid, background)
        for s, c, (r, cc) in still:
            draw_shape(d, s, grid.box(r, cc, pad=3), COLOURS[c])
        draw_shape(d, shape, grid.box(r0 + dr * step, c0 + dc * step, pad=3), COLOURS[colour])
        frames.append(img)
    return frames


def write_wav(samples: np.ndarray, path: Path) -> None:
    """Mono float samples in [-1, 1] at AUDIO_RATE -> 16-bit PCM WAV."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(AUDIO_RATE)
        w.writeframes(pcm.tobytes())


def write_mp4(frames: list[Image.Image], path: Path) -> None:
    """RGB frames -> H.264 mp4 at VIDEO_FPS, lossless (qp 0): the decoded frames are exactly
    the frames in yuv420p, whatever the encoder decides. Lossy x264 (crf 12, even single-threaded)
    gave other bytes on some runs, more often on a busy machine, and so other training data from
    the same seed; lossless is also smaller on these flat-coloured clips."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=VIDEO_FPS)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qp": "0", "preset": "veryfast"}
        for img in frames:
            out.mux(stream.encode(av.VideoFrame.from_image(img.convert("RGB"))))
        out.mux(stream.encode(None))


MEDIA_WRITERS["audio"] = (".wav", write_wav)
MEDIA_WRITERS["video"] = (".mp4", write_mp4)
