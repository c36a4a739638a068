"""MLLM-CL (Zhao et al., 2025): the published layouts of its two streams, domain (DCL) and
ability (ACL) continual learning, as RealBenchmarks."""

from __future__ import annotations

from mmcl.data.real import RealBenchmark, real_task

# Defaults are the paths the published scripts read (REFERENCES.md), then the released archive's.
MLLM_CL_DCL = RealBenchmark(
    "mllm-cl-dcl",
    "MLLM-CL domain CL (real data under data.root): RS -> Med -> AD -> Sci -> Fin",
    (
        real_task(
            "rs",
            "mllm-cl-ai2d",
            "remote sensing: satellite and aerial images",
            ["RemoteSensing/train.json", "RS/train.json"],
            ["RS/test.json"],
        ),
        real_task(
            "med",
            "mllm-cl-pvqa",
            "medical: pathology and clinical images",
            ["Medical/data/train.json", "Med/train.json"],
            ["Med/test.json"],
        ),
        real_task(
            "ad",
            "mllm-cl-ai2d",
            "autonomous driving: scenes from a vehicle's six cameras",
            ["AD/DriveLM/train.json", "AD/train.json"],
            ["AD/test.json"],
        ),
        real_task(
            "sci",
            "mllm-cl-sci",
            "science: diagrams, maps and textbook figures",
            ["Sci/train.json"],
            ["Sci/test.json"],
        ),
        real_task(
            "fin",
            "mllm-cl-finvis",
            "finance: stock and market charts",
            ["Fin/train.json"],
            ["Fin/test.json"],
        ),
    ),
)

# Ability CL: test sets are other benchmarks than the training data (non-IID). Every task is
# scored by its published rule (mmcl.scoring.mllm_cl); math by MathVista's comparison after a
# deterministic answer extractor (or a judge). The published GUI score came from MMT-Bench's
# server (closed); mmcl scores GUI answers locally with `lenient`.
MLLM_CL_ACL = RealBenchmark(
    "mllm-cl-acl",
    "MLLM-CL ability CL (real data under data.root): OCR -> math -> perception -> GUI agent",
    (
        real_task(
            "ocr",
            "mllm-cl-ocr",
            "OCR: reading text in images",
            ["OCR/train.json"],
            ["OCR_test/test.json"],
        ),
        real_task(
            "math",
            "mllm-cl-math",
            "math and logic: problems shown in figures",
            ["math2/train.json", "Math/train.json"],
            ["math_test/test.json", "Math_test/test.json"],
        ),
        real_task(
            "perception",
            "mllm-cl-sat",
            "visual perception: counting objects",
            ["tallyqa150k/ty_cl_sft.json", "VP/train.json"],
            ["CV-Benchv2/test.json", "VP_test/test.json"],
        ),
        real_task(
            "gui",
            "lenient",
            "GUI agent: acting on mobile app screens",
            ["App/train.json", "APP/train.json"],
            ["APP_test/test.json"],
        ),
    ),
)
