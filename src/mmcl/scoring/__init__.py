"""Published scorers: the rules by which the MLLM-CL and MICL papers scored their tables.

A record scorer sees the whole test record, not only its references: the published rules
choose by fields the test files carry (the image's source, `answer_type`, `question_type`,
...). Each scorer has a one-line rule (`mmcl list`) and says which fields a record needs, so
a test file that lacks one fails when it is loaded, naming the record, not mid-evaluation.

- `mllm_cl`: ETrain/Eval/LLaVA/CoIN/eval_*.py of MLLM-CL, one scorer per script;
- `mathvista`: MLLM-CL's math scorer (MathVista's comparison, a deterministic answer
  extractor in place of the GPT judge, and an optional judge on any OpenAI-compatible server);
- `micl`: MICL_TMLR's `train.py` (VQA normalisation, QA accuracy, CIDEr on one reference).

Where a published rule has a quirk, the published rule keeps it and a corrected variant
is registered beside it under a `-fixed` name; the README's scorer table lists both.
"""

from __future__ import annotations

from mmcl.scoring import mathvista, micl, mllm_cl, mme_pope  # noqa: F401  (they register)
from mmcl.scoring.registry import (
    RECORD_SCORERS,
    RULES,
    RecordScorer,
    has_field,
    missing_fields,
    question_text,
    register,
)

__all__ = [
    "RECORD_SCORERS",
    "RULES",
    "RecordScorer",
    "has_field",
    "missing_fields",
    "question_text",
    "register",
]
