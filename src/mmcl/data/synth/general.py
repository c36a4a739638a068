"""The built-in general suite: what the embedded base learned in pretraining, asked again.

Held-out scenes (each task draws its own samples, never the pretraining corpus's) with one
question form of the corpus per task: describe a scene, name an object's colour, say whether
an object is there (yes/no, as POPE asks; half of them absent), name the object at a position.
None of it is a task of any built-in stream, so it measures what continual tuning costs the
base model's own skills.
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
    # Exact yes/no, not POPE's rule: that reads any answer without a "no" as yes, so a model
    # that forgot the question would keep half of its score on balanced questions.
    "presence": SynthTask(
        "presence",
        "image",
        "exact",
        "saying whether an object is in the scene",
        partial(make_scene, question="presence"),
    ),
    "position": SynthTask(
        "position",
        "image",
        "lenient",
        "naming the object at a position",
        partial(make_scene, question="position"),
    ),
}
