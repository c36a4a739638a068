"""Per-task LoRA experts mixed by prototype similarity: the machinery that HiDe-LLaVA and DISCO
share (each method is its own file; this holds what they have in common).

Every adapted linear layer of the LM holds one LoRA expert per task. While task k trains, only
its expert is active (in every layer) and trainable, as in MCITlib. At inference each layer
either *mixes* the seen experts per sample, sum_i w_i B_i A_i x, with
w = softmax(mean_f cos(feature_f, prototype_f,i) / tau) over the seen tasks, or *merges* them
into one LoRA (sum_i A_i, sum_i B_i; or sum_i B_i A_i). Which layers mix is the method's choice.

The features are the frozen base model's last hidden state pooled over the prompt's media
tokens ("image") and over its text tokens ("text"), where the references use CLIP's image and
text towers, which mmcl's backbones do not have; a task's prototypes are their means over its
training set. The references compute one weight vector per batch (their evaluation runs batch
size 1); here every sample gets its own, so results do not depend on how samples are batched.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mmcl.data.benchmarks import Task
from mmcl.errors import MmclError
from mmcl.methods.base import Method, MethodOptions
from mmcl.models.base import Backbone, Batch, LoraSpec

_LAYER = re.compile(r"\.layers\.(\d+)\.")
Feature = Literal["image", "text"]


def wrap_decoder_linears(
    backbone: Backbone,
    spec: LoraSpec,
    who: str,
    make: Callable[[nn.Linear, int, int], nn.Module],
) -> dict[str, nn.Module]:
    """Replace, in place, every nn.Linear of the LM's decoder layers that `spec.targets`
    (default: the backbone's LM targets) matches by `make(linear, layer, top_layer)`; the
    wrappers by module name. Methods whose adapters are layers of their own use it."""
    if spec.vision:
        raise MmclError(f"{who}: its adapters sit in the LM's decoder layers")
    pattern = re.compile(spec.targets or backbone.lm_lora_targets)
    model = backbone.core
    found = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and pattern.fullmatch(n) and _LAYER.search(n)
    ]
    if not found:
        raise MmclError(f"{who}: no linear layer of a decoder layer matches {pattern}")
    top = max(int(_LAYER.search(n).group(1)) for n, _ in found)
    wrapped = {}
    for name, m in found:
        wrapped[name] = make(m, int(_LAYER.search(name).group(1)), top)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, wrapped[name])
    return wrapped


class ExpertState:
    """What every expert layer reads at forward time; one object shared by all of them."""

    def __init__(self, merge: Literal["factors", "deltas"] = "factors") -> None:
        self.mode: Literal["off", "train", "infer"] = "off"
        self.task = 0  # the expert that trains (mode "train")
        self.seen = 0  # experts merged / mixed at inference: those of the tasks done
        self.merge = merge
        self.weights: torch.Tensor | None = None  # (B, seen) mixture of the batch at inference


class TaskExpertLinear(nn.Module):
    """A frozen nn.Linear plus one float32 LoRA expert per task (as peft keeps adapters)."""

    def __init__(
        self, base: nn.Linear, experts: int, spec: LoraSpec, mix: bool, state: ExpertState
    ):
        super().__init__()
        self.base_layer, self.mix, self.state = base, mix, state
        self.scaling = spec.alpha / spec.r
        kw = {"bias": False, "device": base.weight.device, "dtype": torch.float32}
        # kaiming-uniform A, zero B: peft's LoRA init, the same start as the lora-ft baseline
        self.expert_A = nn.ModuleList(
            nn.Linear(base.in_features, spec.r, **kw) for _ in range(experts)
        )
        self.expert_B = nn.ModuleList(
            nn.Linear(spec.r, base.out_features, **kw) for _ in range(experts)
        )
        for b in self.expert_B:
            nn.init.zeros_(b.weight)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout else nn.Identity()

    def _expert(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.expert_B[i](self.expert_A[i](x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        st = self.state
        if st.mode == "off" or (st.mode == "infer" and st.seen == 0):
            return out
        xf = self.dropout(x.float())
        if st.mode == "train":
            delta = self._expert(st.task, xf)
        elif self.mix:
            w = st.weights
            if w is None or w.shape != (len(x), st.seen):
                raise MmclError("the experts' mixture weights do not fit the batch")
            w = w.to(xf.device).view(len(x), *([1] * (xf.dim() - 2)), st.seen)
            delta = sum(w[..., i, None] * self._expert(i, xf) for i in range(st.seen))
        elif st.merge == "deltas":
            delta = sum(self._expert(i, xf) for i in range(st.seen))
        else:
            a = sum(self.expert_A[i].weight for i in range(st.seen))
            b = sum(self.expert_B[i].weight for i in range(st.seen))
            delta = F.linear(F.linear(xf, a), b)
        return out + (delta * self.scaling).to(out.dtype)


class PrototypeExpertOptions(MethodOptions):
    lora: LoraSpec = Field(default_factory=LoraSpec, description="each task's expert")


class PrototypeExperts(Method, ABC):
    """Base of hide-llava and disco: subclasses say which layers mix (`mixes`), which features
    the prototypes compare (`prototype_features`) and the softmax temperature."""

    not_exportable = "its task experts are mixed per sample by prototype similarity"

    def __init__(self, backbone, options, tasks, seed):
        super().__init__(backbone, options, tasks, seed)
        self.state = ExpertState(getattr(options, "merge", "factors"))
        self.prototypes: dict[str, torch.Tensor] = {}  # feature -> (seen, H)
        self.top_weight: list[float] = []  # per step: mean weight of each sample's top expert
        self._weighed = 0  # samples whose weights went into top_weight[-1]

    # --- what a subclass chooses ------------------------------------------------------------
    @abstractmethod
    def mixes(self, layer: int, top: int) -> bool:
        """Whether decoder layer `layer` (of 0..top) mixes the experts per sample."""

    @abstractmethod
    def prototype_features(self) -> tuple[Feature, ...]:
        """Which pooled features (image, text) the prototypes compare."""

    @property
    def temperature(self) -> float:
        return self.opts.temperature

    # --- setup and training -----------------------------------------------------------------
    def setup(self) -> None:
        spec, n = self.opts.lora, len(self.tasks)
        self.layers: dict[str, TaskExpertLinear] = wrap_decoder_linears(
            self.backbone,
            spec,
            self.name,
            lambda m, layer, top: TaskExpertLinear(m, n, spec, self.mixes(layer, top), self.state),
        )
        self.backbone.set_trainable({})

    def expert_parameters(self, task: int) -> dict[str, nn.Parameter]:
        pattern = re.compile(rf"\.expert_[AB]\.{task}\.")
        return {n: p for n, p in self.backbone.core.named_parameters() if pattern.search(n)}

    def before_task(self, task: Task, step: int) -> None:
        self.state.mode, self.state.task = "train", step
        self.backbone.set_trainable(self.expert_parameters(step))

    @torch.no_grad()
    def features(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The frozen base model's (B, H) features by name (every expert off)."""
        mode, self.state.mode = self.state.mode, "off"
        try:
            image, text = self.backbone.modality_features(batch.to(self.backbone.device))
        finally:
            self.state.mode = mode
        return {"image": image.cpu(), "text": text.cpu()}

    def after_task(self, task: Task, step: int) -> None:
        """Freeze the expert; the task's prototypes are its training set's mean features."""
        self.backbone.set_trainable({})
        sums: dict[str, torch.Tensor] = {}
        for s in range(0, len(task.train), 64):
            feats = self.features(self.backbone.collate(task.train[s : s + 64], train=False))
            for k in self.prototype_features():
                sums[k] = sums.get(k, 0) + feats[k].sum(0)
        for k, total in sums.items():
            proto = (total / len(task.train)).unsqueeze(0)
            old = self.prototypes.get(k)
            self.prototypes[k] = proto if old is None else torch.cat([old, proto])
        self.state.mode, self.state.seen = "infer", step + 1
        self.top_weight.append(0.0)
        self._weighed = 0

    # --- inference --------------------------------------------------------------------------
    def expert_weights(self, batch: Batch) -> torch.Tensor:
        """(B, seen) mixture weights of each sample."""
        feats = self.features(batch)
        sims = [
            F.cosine_similarity(feats[k].unsqueeze(1), self.prototypes[k].unsqueeze(0), dim=-1)
            for k in self.prototype_features()
        ]
        return F.softmax(torch.stack(sims).mean(0) / self.temperature, dim=-1)

    def predict(self, batch: Batch) -> list[str] | None:
        """Sets each sample's expert weights for the generation that follows (`predict` runs
        right before it); the model answers as it is, so no adapter names are returned."""
        if self.state.seen:
            w = self.expert_weights(batch)
            self.state.weights = w
            n = self._weighed + len(w)
            top = float(w.max(-1).values.sum())
            self.top_weight[-1] = (self.top_weight[-1] * self._weighed + top) / n
            self._weighed = n
        return None

    def report(self) -> dict[str, Any]:
        return {
            "experts": self.state.seen,
            "mean_top_weight_per_step": [round(w, 4) for w in self.top_weight],
        }

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "seen": self.state.seen,
            "prototypes": {k: v.clone() for k, v in self.prototypes.items()},
            "top_weight": list(self.top_weight),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The experts' weights load with the model; the prototypes come from here."""
        self.state.seen = int(state.get("seen", 0))
        self.prototypes = dict(state.get("prototypes") or {})
        self.top_weight = list(state.get("top_weight") or [])
        self._weighed = 0
        self.state.mode = "infer" if self.state.seen else "off"
