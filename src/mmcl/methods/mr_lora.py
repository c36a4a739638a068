"""mr-lora: MR-LoRA (MLLM-CL, Zhao et al., 2025) — parameter isolation plus an MLLM router, as a
real two-stage model.

Experts: one LoRA adapter per task, named after the task, trained from the base model on that
task only (no other adapter active) and frozen once its task is over.

Router (`router: mllm`, the paper's): another LoRA on the same base model, trained on 40 samples
per seen task (the paper's about 20 left it fragile on one embedded base of three; their record
ids kept) to answer a prompt that lists each expert's letter and its task's one-line description
with the letter of the expert that should answer. After every task it trains on (warm start) on a
set of fixed size: the new task's samples and a seeded draw of earlier ones in which every answer
weighs alike (router_samples.py). The expert list that opens every routing prompt is read by the
base model once per step, its keys and values kept (`Backbone.sharing_prefix(base_prefix)`), in
training and at test: the router's cost per step does not grow with the number of earlier tasks.
At test time one batched pass of the router scores the seen experts' letters as its next token
and the best expert answers (mixed batches: `Backbone.generate` with `adapter_names`); when its
top token is no letter, the best letter is the deterministic fallback (counted).

Routing shares work with answering: the media features are encoded once per batch for the
router and the expert (not with a vision LoRA). The rest cannot be shared (both put LoRA on
every LM layer), so the router's pass is cheaper: by default it reads the first `router_depth`
(0.25; the paper's is 1, the whole LM) of the decoder layers, the last of them for the letter's
position only (last_position.py). `router: prototype` is in prototype_router.py.
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
from mmcl.methods.prototype_router import nearest_prototype, pooled_states, prototype_metric
from mmcl.methods.router_samples import balanced_set
from mmcl.methods.routing_cost import routing_cost
from mmcl.models.base import Batch, LoraSpec
from mmcl.models.lora import BASE
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
        0.25,
        gt=0,
        le=1,
        description="share of the LM's decoder layers the router (either kind) reads before "
        "its final norm and head: 1 is the whole LM, as in the paper; less is a cheaper pass",
    )
    router_samples: int = Field(40, ge=1, description="routing samples kept per seen task")
    router_replay: int = Field(
        160, ge=0, description="earlier tasks' routing samples the router trains on per step"
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
        if ROUTER in names or BASE in names:
            raise MmclError(f"mr-lora: a task may not be named {ROUTER!r} or {BASE!r}")
        if len(names) > len(LETTERS):
            raise MmclError(f"mr-lora: at most {len(LETTERS)} experts (one letter each)")
        self.descriptions = {t.name: t.description for t in tasks}
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
        """The expert list, then the record's question and media next to the answer, where a
        small LM attends best (measured: far fewer steps to learn than question first)."""
        question = _PLACEHOLDERS.sub("", rec.prompt).strip()
        return f"{self.expert_list()}\n{_media_placeholders(rec)}\n{question}"

    def expert_list(self) -> str:
        """What every routing prompt starts with: the seen experts and the ask."""
        experts = " ".join(f"{self.letter(n)}. {self.descriptions[n]}" for n in self.experts)
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
        chosen = sorted(rng.choice(len(task.train), size=n, replace=False).tolist())
        self.samples[task.name] = [task.train[i] for i in chosen]
        self.sample_ids[task.name] = [r.id for r in self.samples[task.name]]
        if self.opts.router == "prototype":
            samples = self.backbone.collate(self.samples[task.name], train=False)
            self.features[task.name] = pooled_states(self.backbone, samples, self.router_layers())
            self._metric = None
        else:
            self._train_router(step)
        self.fallbacks, self.routed = [*self.fallbacks, 0], [*self.routed, 0]
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
        """The router's training set after `step`, the same size whatever came before: every
        routing sample of the new task and `router_replay` earlier ones, drawn (seeded) so
        that each answer the router can give gets an equal share (router_samples.py)."""
        *earlier, new = self.experts
        letter = {n: self.letter(self.answering(n)) for n in self.experts}
        pools: dict[str, list[tuple[str, Record]]] = {}
        for n in earlier:
            pools.setdefault(letter[n], []).extend((n, r) for r in self.samples[n])
        fresh = [(new, r) for r in self.samples[new]]
        rng = np.random.default_rng(derive_seed(self.seed, "router-replay", step))
        size = len(fresh) + self.opts.router_replay
        chosen = balanced_set(fresh, pools, letter[new], size, rng)
        return [self.routing_record(r, letter[n]) for n, r in chosen]

    def answering(self, task: str) -> str:
        """The expert the router is taught to name for `task`'s samples: the newest with its
        description (a router reading descriptions sees a scenario's visits as one choice)."""
        return [n for n in self.experts if self.descriptions[n] == self.descriptions[task]][-1]

    def _train_router(self, step: int) -> None:
        """Train the router LoRA (created at the first step, warm-started since) on
        `router_records`."""
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
        return self.backbone.layers_of_share(self.opts.router_depth, "method.router_depth")

    @contextmanager
    def _routing(self, answering: bool = False) -> Iterator[None]:
        """Within: the router's passes: the expert list read by the base model once, then the
        first `router_layers()` layers (answering: the last for the letter's position only)."""
        bb, depth = self.backbone, self.router_layers()
        with bb.sharing_prefix(self.expert_list()), bb.first_layers(depth, read_last=answering):
            yield

    def activate(self) -> None:  # adapters on (mixed-adapter generation), nothing trainable
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
    def router_scores(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass of the router (no generation): (B, experts) scores of each expert's
        letter as the next token, (B,) whether its top token is a letter; media features that
        `batch` (the records' own prompts) holds are read, not encoded again."""
        prefix, firsts = self.letter_tokens()
        routing = [self.routing_record(r) for r in batch.records]
        routing = self.backbone.collate(routing, train=False)
        routing = routing.to(self.backbone.device)
        routing.encoded = batch.encoded  # the same media, in the same order
        routing = routing.with_suffix(prefix)
        self.backbone.use_adapters(ROUTER)
        with self._routing(answering=True):
            logits = self.backbone.next_token_logits(routing).float()
        named = torch.isin(logits.argmax(-1), torch.tensor(firsts, device=logits.device))
        return logits[:, firsts].cpu(), named.cpu()

    def _route_mllm(self, batch: Batch) -> tuple[list[str], int]:
        """The best-scored letter (the counted fallback, too, when the top token is none)."""
        scores, named = self.router_scores(batch)
        return [self.experts[int(k)] for k in scores.argmax(-1)], int((~named).sum())

    # --- the prototype router ---------------------------------------------------------------
    def prototype_metric(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(prototypes, precision matrix) of the stored pooled states (prototype_router.py)."""
        if self._metric is None:
            feats = [self.features[n] for n in self.experts]
            self._metric = prototype_metric(feats, self.opts.prototype_shrinkage)
        return self._metric

    def _route_prototype(self, batch: Batch) -> list[str]:
        states = pooled_states(self.backbone, batch, self.router_layers())  # the base model's
        nearest = nearest_prototype(states, *self.prototype_metric())
        return [self.experts[int(k)] for k in nearest]

    # --- inference --------------------------------------------------------------------------
    def route(self, batch: Batch) -> tuple[list[str], int]:
        """(expert per record of `batch`, number of fallbacks). The batch, on the model's device,
        gets its media features (encoded once), which the router and then the expert read."""
        self.backbone.encode_media(batch)
        if self.opts.router == "prototype":
            return self._route_prototype(batch), 0
        return self._route_mllm(batch)

    def predict(self, batch: Batch) -> list[str] | None:
        if not self.experts:
            return None
        routes, failed = self.route(batch)
        self.fallbacks[-1] += failed
        self.routed[-1] += len(routes)
        self.activate()
        return routes

    def measure_cost(self, records: list[Record]) -> dict[str, float]:
        return routing_cost(self, records)  # routing + experts against one adapter

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
