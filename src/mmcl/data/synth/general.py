"""The built-in general suite: what the embedded base learned in pretraining, asked again.

Held-out scenes (each task draws its own samples, never the pretraining corpus's) with one
question form of the corpus per task: describe a scene, name an object's colour, name the
object at a position. None of it is a task of any built-in stream, so it measures what
continual tuning costs the base model's own skills. The corpus's fourth form, whether an object
is there, is left out: bases before v11 answered it "yes" whatever the scene (chance), and the
suite keeps its three tasks so that retention stays comparable across bases. Each question comes
in any of the corpus's phrasings.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from mmcl.data.synth import Sample, SynthTask
from mmcl.data.synth.pretrain import make_scene

# A description of more objects runs past the demo's answer budget (eval.max_new_tokens).
MAX_DESCRIBED = 3


def make_description(rng: np.random.Generator, split: str) -> Sample:
    """A scene of at most MAX_DESCRIBED objects to describe."""
    while True:
        sample = make_scene(rng, split, "describe")
        if sum(what != "empty" for what, _, _ in sample.meta["cells"]) <= MAX_DESCRIBED:
            return sample


TASKS = {
    "describe": SynthTask(
        "describe", "image", "lenient", "describing the objects of a scene", make_description
    ),
    "colour": SynthTask(
        "colour",
        "image",
        "exact",
        "naming an object's colour",
        partial(make_scene, question="colour"),
    ),
    "position": SynthTask(
        "position",
        "image",
        "lenient",
        "naming the object at a position",
        partial(make_scene, question="position"),
    ),
}
