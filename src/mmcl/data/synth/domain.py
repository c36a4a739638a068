"""The `domain` stream of MLLM-CL, procedurally: remote sensing -> medical -> driving -> science
-> finance. Train and test are IID within a domain, as in the DCL setting.

Every domain draws its own look on the same 4 x 4 grid of 16 px cells that the embedded model
learned to see (aerial land-cover tiles, grayscale scans, a four-camera driving mosaic, charts,
stock charts), and asks the question forms its real counterpart uses: a short answer, yes/no,
or a multiple choice answered with a letter (the options, always in the same order per
question, are in the question). Each question reads a cue that sits in a fixed place of the
grid, with few answer classes, so that a small model can learn every domain; the domains share
answer forms (yes/no, letters) with different meanings, so that a model tuned on one drifts on
the others.
"""

from __future__ import annotations

from mmcl.data.synth import SynthTask
from mmcl.data.synth.domain_charts import make_finance, make_science
from mmcl.data.synth.domain_scenes import make_driving, make_medical, make_remote_sensing

TASKS = {
    t.name: t
    for t in (
        SynthTask(
            "remote_sensing",
            "image",
            "lenient",
            "remote sensing: aerial land-cover images",
            make_remote_sensing,
        ),
        SynthTask(
            "medical",
            "image",
            "lenient",
            "medical: grayscale scans with lesions",
            make_medical,
        ),
        SynthTask(
            "driving",
            "image",
            "lenient",
            "autonomous driving: camera views of the road",
            make_driving,
        ),
        SynthTask(
            "science",
            "image",
            "lenient",
            "science: charts and diagrams",
            make_science,
        ),
        SynthTask(
            "finance",
            "image",
            "exact",
            "finance: stock price charts",
            make_finance,
        ),
    )
}
