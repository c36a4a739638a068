"""hide-llava: HiDe-LLaVA, hierarchical decoupling (Guo et al., ACL 2025, arXiv 2503.12941),
as MCITlib runs it.

Every adapted linear layer of the LM holds one LoRA expert per task. While task k trains, only
its expert is active (in every layer) and trainable. At inference the layers are decoupled:

- task-general fusion, every layer but the top one: the experts of the seen tasks are merged
  into one LoRA, A = sum_i A_i and B = sum_i B_i (MCITlib's `merge_weight = 1.0` fusion;
  `fusion: deltas` sums the experts' updates B_i A_i instead, without the cross terms);
- task-specific expansion, the top layer: each sample mixes the seen experts,
  sum_i w_i B_i A_i x, with w = softmax(((cos(img, P_i^img) + cos(txt, P_i^txt)) / 2) / tau),
  the similarity of the sample's image and text features to each task's prototypes.

The features are the frozen base model's last hidden state pooled over the media tokens and
over the text tokens (the reference uses CLIP's image and text towers, which mmcl's backbones
do not have); a task's prototypes are their means over its training set. The reference mixes
with one weight vector per batch (its evaluation runs batch size 1); here every sample gets its
own, so the result does not depend on how test samples are batched.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mmcl.data.benchmarks import Task
from mmcl.errors import MmclError
from mmcl.methods import register
from mmcl.methods.base import Method, MethodOptions
from mmcl.models.base import Batch, LoraSpec

_LAYER = re.compile(r"\.layers\.(\d+)\.")


class HiDeState:
    """What every HiDe layer reads at forward time; one object shared by all of them."""

    def __init__(self) -> None:
        self.mode: Literal["off", "train", "infer"] = "off"
        self.task = 0  # the expert that trains (mode "train")
        self.seen = 0  # experts merged / mixed at inference: those of the tasks done
        self.fusion: Literal["factors", "deltas"] = "factors"
        self.weights: torch.Tensor | None = None  # (B, seen) top-layer mixture of the batch


class HiDeLinear(nn.Module):
    """A frozen nn.Linear plus one float32 LoRA expert per task (as peft keeps adapters)."""

    def __init__(self, base: nn.Linear, experts: int, spec: LoraSpec, top: bool, state: HiDeState):
        super().__init__()
        self.base_layer, self.top, self.state = base, top, state
        self.scaling = spec.alpha / spec.r
        kw = {"bias": False, "device": base.weight.device, "dtype": torch.float32}
        # kaiming-uniform A, zero B: peft's LoRA init, the same start as the lora-ft baseline
        self.hide_A = nn.ModuleList(
            nn.Linear(base.in_features, spec.r, **kw) for _ in range(experts)
        )
        self.hide_B = nn.ModuleList(
            nn.Linear(spec.r, base.out_features, **kw) for _ in range(experts)
        )
        for b in self.hide_B:
            nn.init.zeros_(b.weight)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout else nn.Identity()

    def _expert(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.hide_B[i](self.hide_A[i](x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        st = self.state
        if st.mode == "off" or (st.mode == "infer" and st.seen == 0):
            return out
        xf = self.dropout(x.float())
        if st.mode == "train":
            delta = self._expert(st.task, xf)
        elif self.top:
            w = st.weights
            if w is None or w.shape != (len(x), st.seen):
                raise MmclError("hide-llava: the top layer's expert weights do not fit the batch")
            w = w.to(xf.device).view(len(x), *([1] * (xf.dim() - 2)), st.seen)
            delta = sum(w[..., i, None] * self._expert(i, xf) for i in range(st.seen))
        elif st.fusion == "deltas":
            delta = sum(self._expert(i, xf) for i in range(st.seen))
        else:
            a = sum(self.hide_A[i].weight for i in range(st.seen))
            b = sum(self.hide_B[i].weight for i in range(st.seen))
            delta = F.linear(F.linear(xf, a), b)
        return out + (delta * self.scaling).to(out.dtype)


def add_hide_layers(
    model: nn.Module, targets: str, experts: int, spec: LoraSpec, state: HiDeState
) -> dict[str, HiDeLinear]:
    """Wrap every nn.Linear of `model` whose name fully matches `targets`, in place; those in
    the decoder layer with the highest index are the top layer."""
    pattern = re.compile(targets)
    found = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and pattern.fullmatch(n) and _LAYER.search(n)
    ]
    if not found:
        raise MmclError(f"hide-llava: no linear layer of a decoder layer matches {targets!r}")
    top = max(int(_LAYER.search(n).group(1)) for n, _ in found)
    wrapped = {}
    for name, m in found:
        is_top = int(_LAYER.search(name).group(1)) == top
        wrapped[name] = HiDeLinear(m, experts, spec, is_top, state)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, wrapped[name])
    return wrapped


class HiDeOptions(MethodOptions):
    lora: LoraSpec = Field(default_factory=LoraSpec, description="each task's expert")
    temperature: float = Field(
        0.1, gt=0, description="tau of the top layer's softmax (the reference's 0.1)"
    )
    fusion: Literal["factors", "deltas"] = Field(
        "factors", description="factors: sum A's and B's apart (the reference); deltas: sum B_i A_i"
    )


@register
class HiDeLlava(Method):
    name = "hide-llava"
    summary = (
        "an expert per task; top layer mixes them by image/text prototype similarity, lower "
        "layers merge them (HiDe-LLaVA, arXiv 2503.12941)"
    )
    Options = HiDeOptions

    def __init__(self, backbone, options, tasks, seed):
        super().__init__(backbone, options, tasks, seed)
        self.state = HiDeState()
        self.state.fusion = options.fusion
        self.prototypes: dict[str, torch.Tensor] = {}  # "image"/"text" -> (seen, H)
        self.top_weight: list[float] = []  # per step: mean top-layer weight of the chosen expert

    def setup(self) -> None:
        spec = self.opts.lora
        if spec.vision:
            raise MmclError("hide-llava: its experts sit in the LM's decoder layers (lora.vision)")
        targets = spec.targets or self.backbone.lm_lora_targets
        self.layers = add_hide_layers(
            self.backbone.core, targets, len(self.tasks), spec, self.state
        )
        self.backbone.set_trainable({})

    def expert_parameters(self, task: int) -> dict[str, nn.Parameter]:
        return {
            n: p
            for n, p in self.backbone.core.named_parameters()
            if re.search(rf"\.hide_[AB]\.{task}\.", n)
        }

    def before_task(self, task: Task, step: int) -> None:
        self.state.mode, self.state.task = "train", step
        self.backbone.set_trainable(self.expert_parameters(step))

    @torch.no_grad()
    def features(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, text) features of the frozen base model (every expert off)."""
        mode, self.state.mode = self.state.mode, "off"
        try:
            return self.backbone.modality_features(batch.to(self.backbone.device))
        finally:
            self.state.mode = mode

    def after_task(self, task: Task, step: int) -> None:
        """Freeze the expert and add the task's image and text prototypes."""
        self.backbone.set_trainable({})
        sums, n = [0.0, 0.0], 0
        records = task.train
        for s in range(0, len(records), 64):
            feats = self.features(self.backbone.collate(records[s : s + 64], train=False))
            sums = [acc + f.sum(0) for acc, f in zip(sums, feats, strict=True)]
            n += len(feats[0])
        for key, total in zip(("image", "text"), sums, strict=True):
            proto = (total / n).cpu().unsqueeze(0)
            old = self.prototypes.get(key)
            self.prototypes[key] = proto if old is None else torch.cat([old, proto])
        self.state.mode, self.state.seen = "infer", step + 1
        self.top_weight.append(0.0)
        self._chosen = 0

    def expert_weights(self, batch: Batch) -> torch.Tensor:
        """(B, seen) top-layer mixture weights of each sample."""
        image, text = self.features(batch)
        sim = [
            F.cosine_similarity(f.cpu().unsqueeze(1), self.prototypes[k].unsqueeze(0), dim=-1)
            for k, f in (("image", image), ("text", text))
        ]
        return F.softmax((sim[0] + sim[1]) / 2 / self.opts.temperature, dim=-1)

    def predict(self, batch: Batch) -> list[str] | None:
        """Sets the top layer's per-sample expert weights for the generation that follows."""
        if self.state.seen:
            w = self.expert_weights(batch)
            self.state.weights = w
            n = self._chosen + len(w)
            self.top_weight[-1] = (
                self.top_weight[-1] * self._chosen + float(w.max(-1).values.sum())
            ) / n
            self._chosen = n
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
        self._chosen = 0
        self.state.mode = "infer" if self.state.seen else "off"
