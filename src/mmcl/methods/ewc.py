"""ewc: Elastic Weight Consolidation (Kirkpatrick et al., 2017), online form (Schwarz et al.,
2018), on the trainable parameters — the LoRA of lora-ft.

After each task, the diagonal of the Fisher information of the trainable parameters is
estimated from per-sample squared gradients on some of the task's training samples, and
accumulated with decay gamma: F <- gamma F + F_task; the parameters at that point are the
anchor. By default (`fisher: model`, as in Kirkpatrick et al.) the gradients are those of the
log-likelihood of answer tokens sampled from the model's own predictive distribution (inputs
teacher-forced with the reference answer); `fisher: empirical` uses the reference tokens, which
is cheaper to explain but vanishes on samples the model already fits — precisely the ones a
converged task consists of. While later tasks train, the loss gains
(weight / 2) · sum F (theta - anchor)^2. Fisher and anchor are saved for resume.
"""

from __future__ import annotations

import random
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from mmcl.data.benchmarks import Task
from mmcl.errors import MmclError
from mmcl.io import derive_seed
from mmcl.methods import register
from mmcl.methods.lora_ft import LoraFT, LoraOptions
from mmcl.models.base import Batch, Outputs


class EwcOptions(LoraOptions):
    fisher: Literal["model", "empirical"] = Field(
        "model", description="labels of the Fisher: sampled from the model, or the references"
    )
    # A LoRA's diagonal Fisher is ~1e-4: at 1e3 the penalty barely pulls (configs/ability-ewc.yaml).
    weight: float = Field(10000.0, ge=0, description="lambda: weight of the quadratic penalty")
    gamma: float = Field(1.0, ge=0, le=1, description="decay of the older tasks' Fisher")
    fisher_samples: int = Field(128, ge=1, description="training samples per Fisher estimate")
    fisher_batch_size: int = Field(
        1, ge=1, description="samples per gradient (1: per-sample; more underestimates F)"
    )


def ewc_penalty(
    params: dict[str, torch.Tensor],
    anchor: dict[str, torch.Tensor],
    fisher: dict[str, torch.Tensor],
) -> torch.Tensor:
    """sum over parameters of F · (theta - anchor)^2 (without the weight / 2)."""
    terms = [(fisher[n] * (p - anchor[n]).pow(2)).sum() for n, p in params.items()]
    return torch.stack(terms).sum()


def _sampled_nll(out: Outputs, gen: torch.Generator) -> torch.Tensor:
    """Mean NLL of answer tokens drawn from the model's own next-token distributions."""
    logits = out.logits[:, :-1][out.answer_mask].float()
    with torch.no_grad():
        labels = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=gen).squeeze(-1)
    return F.cross_entropy(logits, labels)


@register
class Ewc(LoraFT):
    name = "ewc"
    summary = "lora-ft + online EWC: a Fisher-weighted pull towards the previous tasks' weights"
    Options = EwcOptions

    def __init__(self, backbone, options, tasks, seed):
        super().__init__(backbone, options, tasks, seed)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.penalties: list[float] = []  # the penalty term when each task ends (diagnostic)

    def params(self) -> dict[str, torch.nn.Parameter]:
        return self.backbone.trainable_parameters()

    def penalty(self) -> torch.Tensor:
        return 0.5 * self.opts.weight * ewc_penalty(self.params(), self.anchor, self.fisher)

    def loss(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        if not self.fisher or self.opts.weight == 0:
            return {}
        return {"ewc": self.penalty()}

    def estimate_fisher(self, task: Task) -> dict[str, torch.Tensor]:
        """Diagonal Fisher: mean over samples of the squared gradient of the answer tokens'
        log-likelihood (labels sampled from the model, or the references: `fisher`)."""
        params = self.params()
        seed = derive_seed(self.seed, "ewc-fisher", task.name)
        records = random.Random(seed).sample(
            task.train, min(self.opts.fisher_samples, len(task.train))
        )
        gen = torch.Generator(self.backbone.device).manual_seed(seed)
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        bs, n_batches = self.opts.fisher_batch_size, 0
        with self.backbone.eval_mode():  # the model as it stands after the task, no dropout
            for start in range(0, len(records), bs):
                batch = self.backbone.collate(records[start : start + bs], train=True)
                out = self.backbone.forward(batch.to(self.backbone.device))
                loss = out.loss if self.opts.fisher == "empirical" else _sampled_nll(out, gen)
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                for (n, _), g in zip(params.items(), grads, strict=True):
                    if g is not None:
                        fisher[n] += g.detach().pow(2)
                n_batches += 1
        return {n: f / max(n_batches, 1) for n, f in fisher.items()}

    def after_task(self, task: Task, step: int) -> None:
        with torch.no_grad():
            self.penalties.append(round(float(self.penalty()), 6) if self.fisher else 0.0)
        new = self.estimate_fisher(task)
        g = self.opts.gamma
        self.fisher = {n: g * self.fisher[n] + f if n in self.fisher else f for n, f in new.items()}
        self.anchor = {n: p.detach().clone() for n, p in self.params().items()}

    def report(self) -> dict:
        if not self.fisher:
            return {}
        flat = torch.cat([f.flatten() for f in self.fisher.values()])
        return {
            "fisher_mean": float(flat.mean()),
            "fisher_max": float(flat.max()),
            "penalty_at_task_end": list(self.penalties),
        }

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "fisher": dict(self.fisher),
            "anchor": dict(self.anchor),
            "penalties": list(self.penalties),
        }

    def load_state_dict(self, state: dict) -> None:
        self.penalties = list(state.get("penalties") or [])
        params = self.params()
        for part in ("fisher", "anchor"):
            saved = dict(state.get(part) or {})
            if saved and set(saved) != set(params):
                raise MmclError(
                    f"ewc checkpoint: the saved {part} does not match the trainable parameters"
                )
            device = self.backbone.device
            setattr(self, part, {n: t.to(device) for n, t in saved.items()})
