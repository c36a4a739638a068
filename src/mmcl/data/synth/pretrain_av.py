"""The general audio and video corpus that extends the base model to hear and watch.

Sounds and clips come from the same primitives as the MICL tasks (synth/media.py). The
questions verify one fact at a time and are answered yes or no (as the image base's "is there
... in the image?"), or name the objects of a clip and where one of them is at its start or
end, in words the image base already speaks: the LM stays frozen while the new projectors
learn to carry every attribute (kind, pitch, repetitions, loudness; objects, motion, speed)
into it. No MICL caption or question format is asked (open answers about pitch, repetitions,
directions, speeds, colours of moving objects; captions), so those tasks stay unknown to the
extended base. `meta` carries every attribute, for the audio encoder's pretraining heads.
"""

from __future__ import annotations

import numpy as np

from mmcl.data.synth import Sample, SynthTask
from mmcl.data.synth.ability import _pick
from mmcl.data.synth.draw import position_name
from mmcl.data.synth.media import DIRECTIONS, SOUND_KINDS, SPEED_CELLS
from mmcl.data.synth.micl import _NOUN, COUNT_WORDS, _sound, an, moving_clip


def _yes_no(rng: np.random.Generator, truth: str, options: list[str]) -> tuple[str, str]:
    """(asked value, "yes"/"no"): the true value half the time, else another option."""
    if rng.random() < 0.5:
        return truth, "yes"
    return _pick(rng, [o for o in options if o != truth]), "no"


def make_sound(rng: np.random.Generator, split: str) -> Sample:
    clip, a = _sound(rng)
    mode = int(rng.integers(0, 5 if a["kind"] == "chirp" else 4))
    if mode == 0:
        kind, ans = _yes_no(rng, a["kind"], list(SOUND_KINDS))
        q = f"is there {an(_NOUN[kind])} in the audio?"
    elif mode == 1:
        pitch, ans = _yes_no(rng, a["pitch"], ["low", "high"])
        q = f"is the sound {pitch}?"
    elif mode == 2:
        n, ans = _yes_no(rng, COUNT_WORDS[a["count"] - 1], list(COUNT_WORDS[:4]))
        q = f"is the sound heard {n} time{'s' if n != 'one' else ''}?"
    elif mode == 3:
        loud, ans = _yes_no(rng, a["loudness"], ["quiet", "loud"])
        q = f"is the sound {loud}?"
    else:
        way, ans = _yes_no(rng, "rising" if a["rising"] else "falling", ["rising", "falling"])
        q = f"is the pitch {way}?"
    return Sample(q, [ans], audios=[clip], meta={"sound": a})


def make_clip(rng: np.random.Generator, split: str) -> Sample:
    frames, w = moving_clip(rng)
    x = f"{w['colour']} {w['shape']}"
    objs = [(w["shape"], w["colour"], w["start"]), *w["still"]]
    mode = int(rng.integers(0, 5))
    if mode == 0:
        names = sorted(an(f"{c} {s}") for s, c, _ in objs)
        q, ans = "what objects are in the video?", " and ".join(names) + "."
    elif mode == 1:
        way, ans = _yes_no(rng, w["direction"], list(DIRECTIONS))
        q = f"does the {x} move {way}?"
    elif mode == 2:
        speed, ans = _yes_no(rng, w["speed"], list(SPEED_CELLS))
        q = f"is the {x} {speed}?"
    elif mode == 3 and w["still"]:
        s, c, _ = w["still"][0]
        q, ans = f"does the {c} {s} move?", "no"
    else:
        at_end = rng.random() < 0.5
        r, c = w["start"]
        if at_end:
            dr, dc = DIRECTIONS[w["direction"]]
            k = SPEED_CELLS[w["speed"]]
            r, c = r + dr * k, c + dc * k
        q = f"where is the {x} at the {'end' if at_end else 'start'}?"
        ans = position_name(r, c)
    return Sample(q, [ans], videos=[frames], meta={"clip": w})


TASKS = {
    "sounds": SynthTask("sounds", "audio", "lenient", "yes/no facts about a sound", make_sound),
    "clips": SynthTask(
        "clips", "video", "lenient", "objects in a clip, their motion, where", make_clip
    ),
}
