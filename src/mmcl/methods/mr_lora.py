"""mr-lora: MR-LoRA (MLLM-CL, Zhao et al., 2025) — parameter isolation plus an MLLM router, as a
real two-stage model.

Experts: one LoRA adapter per task, named after the task, trained from the base model on that
task only (no other adapter active) and frozen once its task is over.

Router (`router: mllm`, the paper's): another LoRA on the same base model, trained on a few
samples per seen task (their record ids are kept) to answer a prompt that lists each expert's
letter and its task's one-line description with the letter of the expert that should answer.
After every task it trains on (warm start) on the new task's samples and a fixed-size seeded
draw of the earlier ones (all of them, repeated to that size, while fewer exist). The expert
list that every routing prompt starts with is read by the base model once per step and its keys
and values kept (`Backbone.sharing_prefix(base_prefix)`; the router's LoRA reads the question
and media after it, in training and at test time alike): so the router's cost per step does not
grow with the number of earlier tasks, though its prompt lists every expert. With
`router_replay` at least the earlier samples' number (short streams), it trains on all of them,
as the paper's router does. At test time one
batched forward pass of the router scores the seen experts' letters as its next answer token
(the answer it would generate, without a generation loop) and the best-scored expert answers
(the evaluator batches mixed experts through peft's `adapter_names`). When the router's top
token is no expert's letter, the best letter is the deterministic fallback, and such samples are
counted.

Routing shares work with answering: the media features are encoded once per batch and read by
the router and then the expert (`Backbone.encode_media`; not with a vision LoRA, whose features
differ per adapter). The rest cannot be shared, since router and experts put LoRA on every LM
layer. So the router's own pass is made cheaper: by default (`router_depth` 0.5, a departure
from the paper's whole-LM router) it reads its answer after the first half of the LM's decoder
layers (either router kind), and the experts of a mixed batch answer through batched per-row
LoRA matmuls (`Backbone.generate` with `adapter_names`).

Router (`router: prototype`): training-free — the nearest per-task prototype of the base model's
prompt-pooled last hidden state. Prototypes are the means over the same few samples per task;
"nearest" is in the Mahalanobis distance of the within-task covariance pooled over the tasks
(shrunk towards a scaled identity): the raw hidden states share large directions that make
plain cosine or Euclidean nearest-mean routing poor.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from mmcl.data.benchmarks import Task
from mmcl.data.records import MODALITIES, PLACEHOLDER, Record
from mmcl.errors import MmclError
from mmcl.io import derive_seed
from mmcl.methods import register
from mmcl.methods.base import Method, MethodOptions
from mmcl.methods.routing_cost import routing_cost
from mmcl.models.base import Batch, LoraSpec
from mmcl.train import TrainSettings, train

ROUTER = "router"  # the router's adapter name; no task may be called so
LETTERS = string.ascii_uppercase
_PLACEHOLDERS = re.compile("|".join(re.escape(PLACEHOLDER[m]) for m in MODALITIES))


class MrLoraOptions(MethodOptions):
    lora: LoraSpec = Field(default_factory=LoraSpec, description="the experts' LoRA")
    router: Literal["mllm", "prototype"] = Field(
        "mllm", description="mllm: a router LoRA answers a letter; prototype: nearest prototype"
    )
    router_lora: LoraSpec = Field(default_factory=LoraSpec, description="the router's LoRA")
    router_depth: float = Field(
        0.5,
        gt=0,
        le=1,
        description="share of the LM's decoder layers the router (either kind) reads before "
        "its final norm and head: 1 is the whole LM, as in the paper; less is a cheaper pass",
    )
    router_samples: int = Field(20, ge=1, description="routing samples kept per seen task")
    router_replay: int = Field(
        80, ge=0, description="earlier tasks' routing samples the router trains on per step"
    )
    router_train: TrainSettings = Field(
        default_factory=lambda: TrainSettings(epochs=8, batch_size=8, lr=2e-3),
        description="how the router is trained after each task",
    )
    prototype_shrinkage: float = Field(
        0.1, gt=0, le=1, description="prototype router: covariance shrinkage towards identity"
    )
    cost_batch_size: int = Field(64, ge=1, description="batch size of the cost measurement")
    cost_repeats: int = Field(3, ge=1, description="passes over the probe in the cost measurement")


def _media_placeholders(rec: Record) -> str:
    """Every media placeholder of a record's conversation (the router sees the media too)."""
    human = "".join(h for h, _ in rec.turns)
    return "".join(PLACEHOLDER[m] * human.count(PLACEHOLDER[m]) for m in MODALITIES)


@register
class MrLora(Method):
    name = "mr-lora"
    summary = "a LoRA expert per task + a router choosing the expert per sample (MLLM-CL)"
    Options = MrLoraOptions
    stores_samples = True  # a few record ids per task, for the router and the prototypes

    def __init__(self, backbone, options, tasks, seed):
        super().__init__(backbone, options, tasks, seed)
        names = [t.name for t in tasks]
        if ROUTER in names or "__base__" in names:
            raise MmclError(f"mr-lora: a task may not be named {ROUTER!r} or '__base__'")
        if len(names) > len(LETTERS):
            raise MmclError(f"mr-lora: at most {len(LETTERS)} experts (one letter each)")
        self.experts: list[str] = []  # tasks whose expert is trained, in order
        self.sample_ids: dict[str, list[str]] = {}  # the routing samples (record ids) per task
        self.samples: dict[str, list[Record]] = {}  # the same, resolved to records
        self.features: dict[str, torch.Tensor] = {}  # prototype router: pooled states
        self._metric: tuple[torch.Tensor, torch.Tensor] | None = None  # (prototypes, precision)
        self.fallbacks: list[int] = []  # per step: routed samples that named no expert
        self.routed: list[int] = []  # per step: samples routed
        self.cost: dict[str, float] = {}

    # --- letters and prompts ----------------------------------------------------------------
    def letter(self, task: str) -> str:
        return LETTERS[[t.name for t in self.tasks].index(task)]

    def routing_prompt(self, rec: Record) -> str:
        """The seen experts (letter + description), the ask, then the record's question and
        media: next to the answer, where a small LM attends best (measured: the router learns
        in far fewer steps than with the question first and the long expert list after it)."""
        question = _PLACEHOLDERS.sub("", rec.prompt).strip()
        return f"{self.expert_list()}\n{_media_placeholders(rec)}\n{question}"

    def expert_list(self) -> str:
        """What every routing prompt starts with: the seen experts and the ask."""
        desc = {t.name: t.description for t in self.tasks}
        experts = " ".join(f"{self.letter(n)}. {desc[n]}" for n in self.experts)
        return (
            f"experts: {experts}\nwhich expert should answer this question? answer with its letter."
        )

    def routing_record(self, rec: Record, answer: str = "") -> Record:
        return rec.with_turns([(self.routing_prompt(rec), answer or "?")])

    # --- lifecycle --------------------------------------------------------------------------
    def before_task(self, task: Task, step: int) -> None:
        """A fresh expert for this task; only it is active and trainable."""
        if task.name in self.backbone.adapters:
            raise MmclError(f"mr-lora: task {task.name!r} comes twice; experts are per task")
        self.backbone.add_lora(task.name, self.opts.lora)
        self.backbone.use_adapters(task.name)
        self.backbone.set_trainable(self.backbone.adapter_parameters(task.name))

    def after_task(self, task: Task, step: int) -> None:
        """Freeze the expert, keep routing samples, rebuild the router."""
        self.backbone.set_trainable({})
        self.experts.append(task.name)
        rng = np.random.default_rng(derive_seed(self.seed, "routing-samples", task.name))
        n = min(self.opts.router_samples, len(task.train))
        chosen = sorted(int(i) for i in rng.choice(len(task.train), size=n, replace=False))
        self.samples[task.name] = [task.train[i] for i in chosen]
        self.sample_ids[task.name] = [r.id for r in self.samples[task.name]]
        if self.opts.router == "prototype":
            self.features[task.name] = self._pooled(self.samples[task.name]).cpu()
            self._metric = None
        else:
            self._train_router(step)
        self.fallbacks.append(0)
        self.routed.append(0)
        self.activate()

    def after_stream(self) -> None:
        """Measure the inference cost of routing on the stored samples (not training time)."""
        self.cost = self.measure_cost([r for n in self.experts for r in self.samples[n]])
        self.activate()

    def restore_tasks(self, seen: list[Task]) -> None:
        by_task = {t.name: {r.id: r for r in t.train} for t in seen}
        for name, ids in self.sample_ids.items():
            missing = [i for i in ids if i not in by_task.get(name, {})]
            if missing:
                raise MmclError(
                    f"mr-lora checkpoint: routing samples {missing[:5]} of task {name!r} are not "
                    "in its training data; resume with the same data"
                )
            self.samples[name] = [by_task[name][i] for i in ids]

    # --- the MLLM router --------------------------------------------------------------------
    def router_records(self, step: int) -> list[Record]:
        """The router's training set after `step`: the new task's routing samples, plus a
        seeded draw of `router_replay` routing samples of the earlier tasks (all of them,
        repeated, while there are fewer), so that the router's work per step stays the same
        however many tasks came before."""
        new = self.experts[-1]
        earlier = [(n, r) for n in self.experts[:-1] for r in self.samples[n]]
        rng = np.random.default_rng(derive_seed(self.seed, "router-replay", step))
        k = min(self.opts.router_replay, len(earlier))
        drawn = [earlier[int(i)] for i in sorted(rng.choice(len(earlier), size=k, replace=False))]
        chosen = [(new, r) for r in self.samples[new]] + drawn
        # Early on, fewer earlier samples exist: the set is repeated up to the size it has
        # later, so that every step trains the router for the same number of batches.
        size = len(self.samples[new]) + self.opts.router_replay
        chosen = [chosen[i % len(chosen)] for i in range(max(size, len(chosen)))]
        return [self.routing_record(r, self.letter(self.answering(n))) for n, r in chosen]

    def answering(self, task: str) -> str:
        """The expert that the router is taught to name for `task`'s samples: the newest one
        with the same description. A router reads only descriptions, so experts that share
        one (a stream that visits a scenario again) are one choice to it, and naming each
        sample's own visit would be a guess; the newest has seen the latest data of the kind.
        Where descriptions differ (the paper's streams), that is the task's own expert."""
        desc = {t.name: t.description for t in self.tasks}
        return [n for n in self.experts if desc[n] == desc[task]][-1]

    def _train_router(self, step: int) -> None:
        """Train the router LoRA, created before the first task's routing and kept since (warm
        start), on `router_records`; the expert list that every routing prompt starts with
        runs once per batch."""
        if ROUTER not in self.backbone.adapters:
            torch.manual_seed(derive_seed(self.seed, "router-init", step))
            self.backbone.add_lora(ROUTER, self.opts.router_lora)
        self.backbone.use_adapters(ROUTER)
        self.backbone.set_trainable(self.backbone.adapter_parameters(ROUTER))
        records = self.router_records(step)
        with self._routing():
            train(
                self.backbone,
                records,
                self.opts.router_train,
                derive_seed(self.seed, "router-train", step),
                desc=f"mr-lora router after step {step + 1} ({len(records)} samples)",
            )
        self.backbone.set_trainable({})

    def router_layers(self) -> int | None:
        """How many of the LM's decoder layers the router runs (None: all of them)."""
        if self.opts.router_depth >= 1:
            return None
        total = self.backbone.decoder_layers()
        if total is None:
            raise MmclError(
                f"mr-lora: {type(self.backbone).__name__} cannot run part of its language "
                "model; set method.router_depth: 1"
            )
        return max(1, round(self.opts.router_depth * total))

    @contextmanager
    def _routing(self) -> Iterator[None]:
        """Within: the router's passes, in training and in answering alike: the expert list
        that every routing prompt starts with is read by the base model once (where the
        backbone can share a prefix), and only the first `router_layers()` layers run."""
        backbone, depth = self.backbone, self.router_layers()
        with backbone.sharing_prefix(self.expert_list()), backbone.first_layers(depth):
            yield

    def activate(self) -> None:
        """Leave adapters enabled (mixed-adapter generation needs that), nothing trainable."""
        self.backbone.use_adapters(ROUTER if ROUTER in self.backbone.adapters else self.experts[-1])
        self.backbone.set_trainable({})

    def letter_tokens(self) -> tuple[list[int], list[int]]:
        """(tokens every letter answer starts with, e.g. a space; the token that then tells the
        seen experts' letters apart, one per expert)."""
        tok = self.backbone.tokenizer
        enc = [tok(" " + self.letter(n), add_special_tokens=False).input_ids for n in self.experts]
        k = 0
        while all(len(e) > k + 1 for e in enc) and len({e[k] for e in enc}) == 1:
            k += 1
        firsts = [e[k] for e in enc]
        if len(set(firsts)) != len(firsts):
            raise MmclError("mr-lora: the tokenizer does not tell the experts' letters apart")
        return enc[0][:k], firsts

    @torch.no_grad()
    def router_scores(
        self, records: list[Record], batch: Batch | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass of the router over the routing prompts (no generation): (B, experts)
        scores of each expert's letter as the next answer token, and (B,) whether the router's
        own top token is one of those letters. The media features that `batch` (the records'
        own prompts) already holds are read, not encoded again."""
        prefix, firsts = self.letter_tokens()
        routing = self.backbone.collate([self.routing_record(r) for r in records], train=False)
        routing = routing.to(self.backbone.device)
        if batch is not None:
            routing.encoded = batch.encoded  # the same media, in the same order
        routing = routing.with_suffix(prefix)
        self.backbone.use_adapters(ROUTER)
        with self._routing():
            logits = self.backbone.next_token_logits(routing).float()
        named = torch.isin(logits.argmax(-1), torch.tensor(firsts, device=logits.device))
        return logits[:, firsts].cpu(), named.cpu()

    def _route_mllm(self, records: list[Record], batch: Batch | None) -> tuple[list[str], int]:
        """The letter the router scores highest; when its top token is no letter at all, that
        is still the deterministic fallback, and it is counted."""
        scores, named = self.router_scores(records, batch)
        return [self.experts[int(k)] for k in scores.argmax(-1)], int((~named).sum())

    # --- the prototype router ---------------------------------------------------------------
    @torch.no_grad()
    def _pooled(self, records: list[Record], batch: Batch | None = None) -> torch.Tensor:
        """The base model's prompt-pooled last hidden states (every adapter bypassed)."""
        if batch is None:
            batch = self.backbone.collate(records, train=False).to(self.backbone.device)
        names = ["__base__"] * len(batch) if self.backbone.adapters else None
        with self.backbone.eval_mode(), self.backbone.first_layers(self.router_layers()):
            out = self.backbone.forward(batch, adapter_names=names, hidden=True)
        return out.hidden.float()

    def prototype_metric(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(prototypes (T, H), precision matrix (H, H)) from the stored pooled states."""
        if self._metric is None:
            feats = [self.features[n].double() for n in self.experts]
            protos = torch.stack([f.mean(0) for f in feats])
            centred = torch.cat([f - f.mean(0) for f in feats])
            cov = centred.T @ centred / max(1, len(centred) - len(feats))
            lam = self.opts.prototype_shrinkage
            eye = torch.eye(cov.shape[0], dtype=cov.dtype)
            cov = (1 - lam) * cov + lam * cov.diagonal().mean().clamp(min=1e-8) * eye
            self._metric = (protos, torch.linalg.inv(cov))
        return self._metric

    def _route_prototype(self, records: list[Record], batch: Batch | None) -> list[str]:
        protos, precision = self.prototype_metric()
        diff = self._pooled(records, batch).cpu().double().unsqueeze(1) - protos  # (B, T, H)
        dist = torch.einsum("bth,hk,btk->bt", diff, precision, diff)
        return [self.experts[int(k)] for k in dist.argmin(-1)]

    # --- inference --------------------------------------------------------------------------
    def route(self, records: list[Record], batch: Batch | None = None) -> tuple[list[str], int]:
        """(expert per record, number of fallbacks). `batch`, the records' own prompts, gets
        their media features (encoded once), which the router and then the expert read."""
        if batch is not None:
            self.backbone.encode_media(batch)
        if self.opts.router == "prototype":
            return self._route_prototype(records, batch), 0
        return self._route_mllm(records, batch)

    def predict(self, batch: Batch) -> list[str] | None:
        if not self.experts:
            return None
        routes, failed = self.route(batch.records, batch)
        self.fallbacks[-1] += failed
        self.routed[-1] += len(routes)
        self.activate()
        return routes

    def measure_cost(self, records: list[Record]) -> dict[str, float]:
        """Inference cost of routing + experts against one adapter (see `routing_cost`)."""
        return routing_cost(self, records)

    def report(self) -> dict[str, Any]:
        """Fallbacks, stored samples, and the inference cost of routing (routing_cost.py)."""
        return {
            "routing": {
                "router": self.opts.router,
                "fallbacks": self.fallbacks[-1] if self.fallbacks else 0,
                "routed": self.routed[-1] if self.routed else 0,
                "fallbacks_per_step": list(self.fallbacks),
                "router_samples": sum(len(v) for v in self.sample_ids.values()),
                "cost": dict(self.cost),
            }
        }

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # Adapter weights of the router are kept here: the runner saves the weights that the
        # task's own training touched (the experts), and the router trains after that.
        router = self.backbone.adapter_parameters(ROUTER)
        router = {n: p.detach().clone() for n, p in router.items()}
        return {
            "experts": list(self.experts),
            "sample_ids": {k: list(v) for k, v in self.sample_ids.items()},
            "fallbacks": list(self.fallbacks),
            "routed": list(self.routed),
            "cost": dict(self.cost),
            "router": router,
            "features": {k: v.detach().cpu() for k, v in self.features.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-add the experts (their weights load afterwards) and the router with its weights."""
        self.experts = list(state.get("experts", []))
        self.sample_ids = {k: list(v) for k, v in state.get("sample_ids", {}).items()}
        self.fallbacks = list(state.get("fallbacks", []))
        self.routed = list(state.get("routed", []))
        self.cost = dict(state.get("cost", {}))
        self.features = dict(state.get("features", {}))
        self._metric = None
        for name in self.experts:
            self.backbone.add_lora(name, self.opts.lora)
        if state.get("router"):
            self.backbone.add_lora(ROUTER, self.opts.router_lora)
            self.backbone.load_adapter(ROUTER, state["router"])
        if self.experts:
            self.activate()
