"""Reading audio and video files: the one place that decodes them (validation and featurizers).

Audio is mono float32 at AUDIO_RATE; WAV files are read with the standard `wave` module (exact
and fast), other containers through PyAV. Video is decoded with PyAV and a fixed number of
frames is sampled uniformly over the clip, so the same file always gives the same frames.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from PIL import Image

from mmcl.errors import MmclError

AUDIO_RATE = 16000  # Hz: Whisper's rate, and that of every generated clip
MIN_AUDIO_SECONDS = 0.25  # shorter clips hold too few feature frames to say what they are
VIDEO_FRAMES = 4  # frames sampled per clip (MoInCL samples 4)


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """(mono float32 samples in [-1, 1], sample rate) of an audio file; raises MmclError."""
    path = Path(path)
    if not path.is_file():
        raise MmclError(f"audio file not found: {path}")
    if path.suffix.lower() != ".wav":
        return _read_audio_av(path)
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as e:
        raise MmclError(f"corrupt audio {path}: {e}") from e
    if width not in (1, 2, 4):
        raise MmclError(f"corrupt audio {path}: unsupported sample width {width} bytes")
    dtype, scale = {1: (np.uint8, 128.0), 2: (np.int16, 32768.0), 4: (np.int32, 2.0**31)}[width]
    data = np.frombuffer(raw[: len(raw) - len(raw) % (width * channels)], dtype=dtype)
    samples = (data.astype(np.float32) - (128.0 if width == 1 else 0.0)) / scale
    return samples.reshape(-1, channels).mean(axis=1), rate


def _read_audio_av(path: Path) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            rate = stream.rate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [
                r.to_ndarray().reshape(-1)
                for frame in container.decode(stream)
                for r in resampler.resample(frame)
            ]
    except Exception as e:
        raise MmclError(f"corrupt audio {path}: {e}") from e
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), rate


def load_audio(path: Path, rate: int = AUDIO_RATE) -> np.ndarray:
    """Mono float32 samples of an audio file, which must be at `rate` Hz."""
    samples, got = read_audio(path)
    if got != rate:
        raise MmclError(f"audio {path} has a sample rate of {got} Hz; expected {rate} Hz")
    return samples


def audio_problem(path: Path) -> str | None:
    """Why an audio file is unusable (missing, corrupt, wrong rate, too short), or None."""
    try:
        samples = load_audio(path)
    except MmclError as e:
        return str(e)
    if len(samples) < MIN_AUDIO_SECONDS * AUDIO_RATE:
        return (
            f"audio {path} is too short: {len(samples) / AUDIO_RATE:.3f} s "
            f"(at least {MIN_AUDIO_SECONDS} s)"
        )
    return None


def read_video(path: Path) -> list[Image.Image]:
    """Every frame of a video file as RGB images; raises MmclError."""
    import av

    path = Path(path)
    if not path.is_file():
        raise MmclError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            frames = [f.to_image() for f in container.decode(video=0)]
    except Exception as e:
        raise MmclError(f"corrupt video {path}: {e}") from e
    return frames


def sample_frames(frames: list[Image.Image], k: int = VIDEO_FRAMES) -> list[Image.Image]:
    """k frames spread uniformly from the first to the last (repeats when the clip is short)."""
    idx = np.linspace(0, len(frames) - 1, k).round().astype(int)
    return [frames[i] for i in idx]


def video_problem(path: Path, min_frames: int = VIDEO_FRAMES) -> str | None:
    """Why a video file is unusable (missing, corrupt, fewer than `min_frames` frames), or None."""
    try:
        frames = read_video(path)
    except MmclError as e:
        return str(e)
    if len(frames) < min_frames:
        return f"video {path} is too short: {len(frames)} frame(s) (at least {min_frames})"
    return None
