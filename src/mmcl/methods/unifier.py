"""unifier: UNIFIER (Jiang et al., 2025) — multi-scenario continual learning on the vision side.

Vision Representation Expansion (VRE): every vision-encoder block gets a module parallel to its
FFN, holding K bottleneck branches (down -> GELU -> up), one per scenario, and a shared
projection that maps the concatenated branch outputs back to the block width; its output is
added to the FFN's (so to the block's output). A new scenario adds a branch; a revisit
(`<scenario>_<n>`, see data/synth/scenario.py) trains that scenario's branch again. Only the
current branch and the projection train; earlier branches are frozen. At inference every
branch runs and the projection fuses them: no router, no scenario id (`predict` returns None).

Vision Consistency Constraint (VCC), per layer: the prototype is the mean of the branch
outputs (a fixed target); each branch output is summarised as a token profile (mean over
features, softmax over tokens) and a feature profile (mean over tokens, softmax over features),
and pulled to the prototype's profiles with a temperature-scaled KL (x tau^2), summed over the
branches; a like term pulls the projection output's profiles to those of the old model's
projection output (the module as it was before this task, on the same input), from the second
task on. L = L_task + lambda * mean over layers of L_vcc. The old-model term is what holds the
shared projection, which every image goes through and every task retrains.

Ablations: `vre: false` keeps one shared branch trained on every scenario; `vcc` then compares
it with frozen snapshots of itself taken after each earlier scenario (VCC without expansion:
the per-scenario representations are the snapshots, used in the loss only). `proj_train: own`
trains only the current branch's block of the projection, holding the other blocks and the
bias (so at zero) as before the task: it tests whether a task's retraining of how the earlier
branches are mixed is what forgets (not the paper's method, which trains the whole
projection). `routed: true` goes further and removes the fusion: each image runs only its
scenario's branch and that branch's block of the projection (trained as with `own`), the
scenario told at test time by the nearest per-branch prototype of the base model's pooled image
features (prototype_router.py; VRE and LoRA off). It tests whether fusing every branch for every
image is what forgets; it is a routed expansion, not the paper's method.

The language model is tuned with one LoRA, as in lora-ft. The modules (vision_expansion.py) live
inside the vision blocks of `backbone.core` (registered as `<block>.mlp.vre`, run by a hook on
the FFN that finds them there), so the runner checkpoints them by name, and a copy of the model
(FSDP's sharded one, see train.py) runs its own copies of them.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call

from mmcl.data.benchmarks import Task
from mmcl.data.synth.scenario import scenario_of
from mmcl.errors import MmclError
from mmcl.methods import register
from mmcl.methods.base import Method, MethodOptions
from mmcl.methods.prototype_router import nearest_prototype, prototype_metric
from mmcl.methods.vision_expansion import VisionExpansion, add_expansion, consistency_loss
from mmcl.models.base import Batch, LoraSpec, Outputs
from mmcl.models.lora import BASE


def _ffn(block: nn.Module) -> nn.Module:
    ffn = getattr(block, "mlp", None)
    if not isinstance(ffn, nn.Module):
        raise MmclError(
            f"unifier needs vision blocks with an `mlp` FFN; got {type(block).__name__}"
        )
    return ffn


class UnifierOptions(MethodOptions):
    lora: LoraSpec = LoraSpec()
    vre: bool = Field(True, description="a branch per scenario (False: one shared branch)")
    vcc: bool = Field(True, description="vision consistency constraint")
    rank: int = Field(16, ge=1, description="bottleneck width of a branch")
    vcc_weight: float = Field(1.0, ge=0, description="lambda, the weight of the VCC loss")
    vcc_tau: float = Field(1.0, gt=0, description="temperature of the VCC KL")
    proj_train: Literal["all", "own"] = Field(
        "all", description="projection blocks a task trains: all (the paper) or its branch's"
    )
    routed: bool = Field(
        False, description="each image through its scenario's branch only (not the paper's)"
    )
    route_samples: int = Field(128, ge=2, description="routed: prototype samples per task")
    route_shrinkage: float = Field(
        0.1, gt=0, le=1, description="routed: covariance shrinkage of the prototype metric"
    )


@register
class Unifier(Method):
    name = "unifier"
    summary = "UNIFIER: per-scenario vision branches fused without routing + consistency (VRE+VCC)"
    Options = UnifierOptions
    not_exportable = "its per-scenario vision branches and their fusion live in the vision encoder"

    def setup(self) -> None:
        if self.opts.routed and (self.opts.vcc or not self.opts.vre):
            raise MmclError("unifier: routed needs vre: true and vcc: false (no fusion to hold)")
        self.backbone.add_lora("main", self.opts.lora)
        self.backbone.use_adapters("main")
        self.vres: list[VisionExpansion] = []
        for block in self.backbone.vision_blocks():
            ffn = _ffn(block)
            first = next(m for m in ffn.modules() if isinstance(m, nn.Linear))
            vre = VisionExpansion(first.in_features, self.opts.rank, first.weight.dtype)
            vre.record = self.opts.vcc
            ffn.add_module("vre", vre)
            ffn.register_forward_hook(add_expansion)
            self.vres.append(vre)
        self.branch_of: dict[str, int] = {}  # scenario -> its branch (training only)
        self.snapshots: dict[str, list[dict[str, torch.Tensor]]] = {}  # vre=False: per layer
        self.old: list[VisionExpansion] = []  # per layer, as before this task (VCC's old model)
        self.current: str | None = None
        self.features: dict[int, torch.Tensor] = {}  # routed: branch -> base image features
        self.metric: tuple[torch.Tensor, torch.Tensor] | None = None
        self.routing: dict[str, float] = {}  # routed: task -> share of its test images routed right
        self.tests: dict[str, list] = {}  # routed: each seen task's test records (routing_accuracy)
        self.routes: dict[str, int] = {}  # routed: test record id -> branch, as last evaluated

    def _add_branch(self) -> None:
        for vre in self.vres:
            vre.add_branch(self.backbone.device, scale=not self.opts.routed)

    def before_task(self, task: Task, step: int) -> None:
        self.current = scenario_of(task.name)
        self.tests[task.name] = task.test
        # Taken before a new branch is added: its up-projection starts at zero, so the old
        # model's output is the same with or without it. Rebuilt from the weights on resume.
        self.old = [vre.frozen_copy() for vre in self.vres] if self.branch_of else []
        if self.current not in self.branch_of:
            if self.opts.vre or not self.branch_of:
                self._add_branch()
            self.branch_of[self.current] = len(self.vres[0].branches) - 1
        k = self.branch_of[self.current]
        params = dict(self.backbone.adapter_parameters("main"))
        # proj_train=own and routed: the bias is no branch's, so it does not train (stays 0).
        own = self.opts.proj_train == "own" or self.opts.routed
        proj = r"proj\.weight" if own else r"proj\."
        params.update(self.backbone.parameters_of(rf"\.vre\.(?:{proj}|branches\.{k}\.)"))
        self.backbone.set_trainable(params)
        if own:
            for vre in self.vres:
                vre.hold(k)
        for vre in self.vres:
            vre.route = k if self.opts.routed else None

    def loss(self, batch: Batch, outputs: Outputs) -> dict[str, torch.Tensor]:
        if not self.opts.vcc:
            return {}
        terms = []
        # The modules of the model that ran, which under FSDP are copies of self.vres.
        running = [m for m in self.backbone.running_modules() if isinstance(m, VisionExpansion)]
        for i, vre in enumerate(running):
            if vre.cache is None:
                continue
            x, outs, fused = vre.cache
            vre.cache = None
            with torch.no_grad():  # vre=False: earlier scenarios' snapshots of the shared branch
                outs = outs + [
                    functional_call(vre.branches[0], snap[i], (x,))
                    for s, snap in self.snapshots.items()
                    if s != self.current
                ]
                old = self.old[i](x) if self.old else None
            terms.append(consistency_loss(outs, fused, old, self.opts.vcc_tau))
        if not terms:
            return {}
        return {"vcc": self.opts.vcc_weight * torch.stack(terms).mean()}

    def after_task(self, task: Task, step: int) -> None:
        for vre in self.vres:
            vre.hold(None)
        if self.opts.routed:
            rng = torch.Generator().manual_seed(self.seed * 1000 + step)
            n = min(self.opts.route_samples, len(task.train))
            chosen = torch.randperm(len(task.train), generator=rng)[:n].sort().values
            picked = [task.train[i] for i in chosen.tolist()]
            feats = torch.cat(
                [
                    self.base_features(self.backbone.collate(picked[s : s + 64], train=False))
                    for s in range(0, len(picked), 64)
                ]
            )
            k = self.branch_of[self.current]
            old = self.features.get(k)
            self.features[k] = feats if old is None else torch.cat([old, feats])
            self.metric = None
        if not self.opts.vre and self.opts.vcc:
            self.snapshots[self.current] = [
                {n: p.detach().clone() for n, p in vre.branches[0].named_parameters()}
                for vre in self.vres
            ]

    # --- routed: which branch sees an image ---------------------------------------------------
    @torch.no_grad()
    def base_features(self, batch: Batch) -> torch.Tensor:
        """(B, H) the base model's last hidden state pooled over each prompt's image tokens,
        with VRE and LoRA off."""
        for vre in self.vres:
            vre.enabled = False
        try:
            batch = batch.to(self.backbone.device)
            names = [BASE] * len(batch) if self.backbone.adapters else None
            return self.backbone.modality_features(batch, adapter_names=names)[0].cpu()
        finally:
            for vre in self.vres:
                vre.enabled = True

    def route(self, batch: Batch) -> torch.Tensor:
        """(B,) the branch of each image: the nearest branch prototype."""
        if self.metric is None:
            ks = sorted(self.features)
            self.metric = prototype_metric(
                [self.features[k] for k in ks], self.opts.route_shrinkage
            )
        return nearest_prototype(self.base_features(batch), *self.metric)

    def predict(self, batch: Batch) -> list[str] | None:
        """routed: sets each image's branch for the generation that follows."""
        if self.opts.routed and self.features:
            route = self.route(batch)
            for vre in self.vres:
                vre.route = route
            self.routes.update(zip((r.id for r in batch.records), route.tolist(), strict=True))
        return None

    def after_stream(self) -> None:
        """routed: the share of each task's test images that the last evaluation sent to its
        scenario's branch."""
        if self.opts.routed and self.features:
            for name, test in self.tests.items():
                k = self.branch_of[scenario_of(name)]
                hit = sum(self.routes.get(r.id) == k for r in test) / len(test)
                self.routing[name] = round(100 * hit, 2)

    def report(self) -> dict[str, Any]:
        n = sum(p.numel() for vre in self.vres for p in vre.parameters())
        extra = {"routing_accuracy": dict(self.routing)} if self.opts.routed else {}
        return {
            "branches": len(self.vres[0].branches),
            "branch_of": dict(self.branch_of),
            "vision_expansion_parameters": n,
            **extra,
        }

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # Branch and projection weights are saved by the runner (they were trainable); here
        # only the scenario -> branch map and the snapshots (never trainable, so not saved).
        # Not `routing`: the runner saves before `after_stream`, which derives it from `routes`.
        snaps = {s: {str(i): x for i, x in enumerate(ls)} for s, ls in self.snapshots.items()}
        feats = {str(k): f for k, f in self.features.items()}
        return {
            "branch_of": dict(self.branch_of),
            "snapshots": snaps,
            "features": feats,
            "routes": dict(self.routes),
        }

    def restore_tasks(self, seen: list[Task]) -> None:
        self.tests = {t.name: t.test for t in seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.branch_of = {s: int(k) for s, k in state["branch_of"].items()}
        for _ in range(max(self.branch_of.values(), default=-1) + 1):
            self._add_branch()  # the runner then loads their weights by name
        self.snapshots = {
            s: [
                {n: t.to(self.backbone.device) for n, t in layers[str(i)].items()}
                for i in range(len(self.vres))
            ]
            for s, layers in state.get("snapshots", {}).items()
        }
        self.features = {int(k): f for k, f in state.get("features", {}).items()}
        self.routes = dict(state.get("routes", {}))
