"""An optional answer-extraction judge on any OpenAI-compatible chat server (off by default).

MLLM-CL's math scores came from a GPT judge that extracts the final answer from a response.
mmcl scores math with a deterministic extractor; with a judge, a local server (vLLM,
llama.cpp, ...) takes the extractor's place for the responses whose raw text does not already
pass the comparison, as in the published pipeline. The judge's model, URL and prompt are
recorded beside the scores. The prompt is mmcl's own (same task: answer type hint, question,
response, "Extracted answer:"), sent at temperature 0.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mmcl.data.records import Record
from mmcl.errors import MmclError
from mmcl.scoring.mathvista import prefetch_passes
from mmcl.scoring.registry import question_text

if TYPE_CHECKING:
    from mmcl.config import EvalSettings

PROMPT = (
    "Read a model's response to a question and write only the final answer it gives: an "
    "option letter for a multiple-choice question, a number for a numeric one (no units), a "
    "Python list for a list, else the short answer text.\n\n"
    "Question: Which number is missing? (integer)\n"
    "Model response: The missing number in the sequence is 14.\n"
    "Extracted answer: 14\n\n"
    "Question: What fraction of the shape is blue? Choices: (A) 3/11 (B) 8/11 (C) 6/11\n"
    "Model response: The correct answer is (B) 8/11.\n"
    "Extracted answer: B\n\n"
    "Question: {question}\n"
    "Model response: {response}\n"
    "Extracted answer:"
)
JUDGED = frozenset({"mllm-cl-math", "mllm-cl-math-fixed"})


@dataclass(frozen=True)
class Judge:
    """A chat-completions endpoint: `url` is the server's base (e.g. http://127.0.0.1:8000/v1)."""

    url: str
    model: str
    timeout_s: float = 120.0

    def describe(self) -> dict[str, str]:
        """What results record about the judge."""
        return {"url": self.url, "model": self.model, "prompt": PROMPT}

    def extract(self, question: str, response: str, where: str) -> str:
        """The judge's extracted answer for one response."""
        body = {
            "model": self.model,
            "messages": [
                {"role": "user", "content": PROMPT.format(question=question, response=response)}
            ],
            "temperature": 0,
            "max_tokens": 128,
        }
        request = urllib.request.Request(
            self.url.rstrip("/") + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                answer = json.loads(reply.read())["choices"][0]["message"]["content"]
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise MmclError(f"judge {self.model} at {self.url} failed on {where}: {e}") from e
        return str(answer).strip()


def judge_of(settings: EvalSettings) -> Judge | None:
    """The math answer judge of eval.judge_url/judge_model, if set (off by default)."""
    url, model = settings.judge_url, settings.judge_model
    return Judge(url, model) if url and model else None


def judge_predictions(
    metric: str, predictions: Sequence[str], records: Sequence[Record], judge: Judge | None
) -> list[str]:
    """The texts the scorer compares: for a judged scorer, the judge's extraction of every
    prediction whose raw text does not already pass; the predictions themselves otherwise."""
    if judge is None or metric not in JUDGED:
        return list(predictions)
    return [
        pred
        if prefetch_passes(pred, rec)
        else judge.extract(question_text(rec), pred, f"record {rec.id!r}")
        for pred, rec in zip(predictions, records, strict=True)
    ]
