"""smolora: SMoLoRA, separable mixture of low-rank adaptation (Wang et al., ICCV 2025, arXiv
2411.13949), against the dual forgetting of continual visual instruction tuning (visual
understanding and instruction following), as its authors' code (Minato-Zackie/SMoLoRA,
`PEFT_SMoLoRA/peft/tuners/smolora.py`) runs it.

Every adapted linear layer holds E LoRA experts of rank r / E (total rank r, as one LoRA of
rank r), shared by all tasks and trained through them, in two separate halves:

- visual-understanding (VU) experts, chosen per sample by a top-1 router on the sample's
  image features;
- instruction-following (IF) experts, chosen per sample by a top-1 router on its instruction
  features;

so each routing sees only its own modality and picks only among its own experts. The two
outputs are fused per token by attention: softmax([f_vu(y_vu), f_if(y_if)]) weighs y_vu and
y_if (the reference's `lora_fc_A/B`).

Departures, each because mmcl's backbones differ or for determinism:
- Features: the reference's VU router reads the mean of the layer's own input over all
  tokens (answer and padding included) and its IF router a sentence-BERT embedding of the
  task's instruction type, given by the task's index (task identity at test time). Here both
  are the frozen base model's last hidden state pooled over the prompt's media tokens (VU) and
  its text tokens (IF), per sample, as hide-llava's prototypes: no task identity at test.
- The reference's top-1 one-hot routers get no gradient (and are meant to be frozen after the
  first task); here the one-hot passes the softmax's gradient straight through, so the
  routers learn during the first task and are then frozen (`train_routers: first`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from mmcl.data.benchmarks import Task
from mmcl.errors import MmclError
from mmcl.methods import register
from mmcl.methods.base import Method
from mmcl.methods.lora_ft import LoraOptions
from mmcl.methods.task_experts import wrap_decoder_linears
from mmcl.models.base import Batch, LoraSpec


class RouteState:
    """What every layer reads at forward time: the batch's (B, H) image and instruction
    features, set right before the model runs on it (`prepare_batch`)."""

    def __init__(self) -> None:
        self.image: torch.Tensor | None = None
        self.text: torch.Tensor | None = None
        self.off = False  # the frozen base model answers (the features' own forward pass)


def top1(logits: torch.Tensor) -> torch.Tensor:
    """One-hot of each row's largest logit; the softmax's gradient passes straight through."""
    p = F.softmax(logits, dim=-1)
    hard = F.one_hot(p.argmax(-1), p.shape[-1]).to(p.dtype)
    return hard + (p - p.detach())  # exactly the one-hot forward


class SMoLoraLinear(nn.Module):
    """A frozen nn.Linear plus E LoRA experts: the first half routed by image features, the
    second by instruction features, fused per token by a learned attention."""

    def __init__(
        self, base: nn.Linear, spec: LoraSpec, experts: int, features: int, state: RouteState
    ):
        super().__init__()
        self.base_layer, self.state = base, state
        self.half, self.rank = experts // 2, spec.r // experts
        self.scaling = spec.alpha / spec.r
        kw = {"bias": False, "device": base.weight.device, "dtype": torch.float32}
        self.expert_A = nn.Linear(base.in_features, spec.r, **kw)  # experts side by side
        self.expert_B = nn.Linear(spec.r, base.out_features, **kw)
        nn.init.zeros_(self.expert_B.weight)  # starts as the base layer, as LoRA does
        self.router_vu = nn.Linear(features, self.half, **kw)
        self.router_if = nn.Linear(features, self.half, **kw)
        self.fuse_vu = nn.Linear(base.out_features, 1, **kw)
        self.fuse_if = nn.Linear(base.out_features, 1, **kw)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout else nn.Identity()

    def routes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, E/2) one-hot VU and IF routes of the batch."""
        st = self.state
        if st.image is None or st.text is None:
            raise MmclError("smolora: the batch's routing features were not set")
        dev = self.expert_A.weight.device
        return top1(self.router_vu(st.image.to(dev))), top1(self.router_if(st.text.to(dev)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.state.off:
            return out
        g_vu, g_if = self.routes()
        if len(g_vu) != len(x):
            raise MmclError("smolora: the routing features do not fit the batch")
        shape = (len(x), *([1] * (x.dim() - 2)), self.half, 1)
        h = self.expert_A(self.dropout(x.float())).unflatten(-1, (2, self.half, self.rank))
        cut = self.half * self.rank
        w = self.expert_B.weight
        y_vu = F.linear((h[..., 0, :, :] * g_vu.view(shape)).flatten(-2), w[:, :cut])
        y_if = F.linear((h[..., 1, :, :] * g_if.view(shape)).flatten(-2), w[:, cut:])
        att = F.softmax(torch.cat([self.fuse_vu(y_vu), self.fuse_if(y_if)], -1), -1)
        delta = (att[..., :1] * y_vu + att[..., 1:] * y_if) * self.scaling
        return out + delta.to(out.dtype)


class SMoLoraOptions(LoraOptions):
    experts: int = Field(
        4, ge=2, description="experts per layer, half VU, half IF (the reference's default)"
    )
    train_routers: Literal["first", "always"] = Field(
        "first", description="routers learn in the first task only (the reference), or always"
    )

    @model_validator(mode="after")
    def _fits(self) -> SMoLoraOptions:
        if self.experts % 2 or self.lora.r % self.experts:
            raise ValueError(
                f"experts {self.experts} must be even and divide the rank {self.lora.r}"
            )
        return self


@register
class SMoLora(Method):
    name = "smolora"
    summary = (
        "LoRA experts in two halves: visual-understanding experts routed by image features, "
        "instruction-following ones by instruction features (SMoLoRA, arXiv 2411.13949)"
    )
    Options = SMoLoraOptions
    not_exportable = "its two routers pick LoRA experts per sample inside each layer"

    def __init__(self, backbone, options, tasks, seed):
        super().__init__(backbone, options, tasks, seed)
        self.state = RouteState()
        # per step: (layer, test sample) pairs routed to each VU / IF expert
        self.usage: list[dict[str, list[int]]] = []

    def setup(self) -> None:
        spec, e = self.opts.lora, self.opts.experts
        h = self.backbone.input_embeddings().embedding_dim
        self.layers: dict[str, SMoLoraLinear] = wrap_decoder_linears(
            self.backbone,
            spec,
            self.name,
            lambda m, _l, _t: SMoLoraLinear(m, spec, e, h, self.state),
        )

    def parameters_of(self, *parts: str) -> dict[str, nn.Parameter]:
        return {
            f"{n}.{k}": p
            for n, layer in self.layers.items()
            for k, p in layer.named_parameters()
            if k.split(".")[0] in parts
        }

    def before_task(self, task: Task, step: int) -> None:
        parts = ["expert_A", "expert_B", "fuse_vu", "fuse_if"]
        if step == 0 or self.opts.train_routers == "always":
            parts += ["router_vu", "router_if"]
        self.backbone.set_trainable(self.parameters_of(*parts))

    def after_task(self, task: Task, step: int) -> None:
        self.backbone.set_trainable({})
        self.usage.append(
            {"vu": [0] * (self.opts.experts // 2), "if": [0] * (self.opts.experts // 2)}
        )

    # --- routing ----------------------------------------------------------------------------
    @torch.no_grad()
    def prepare_batch(self, batch: Batch) -> Batch:
        """The batch's image and instruction features, from the frozen base model."""
        bb, st = self.backbone, self.state
        st.off = True
        try:
            st.image, st.text = bb.modality_features(batch)
        finally:
            st.off = False
        return batch

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[str] | None:
        """Counts which experts the test samples take, over all layers (for the report)."""
        if self.usage:
            for layer in self.layers.values():
                for key, g in zip(("vu", "if"), layer.routes(), strict=True):
                    for e, n in enumerate(g.sum(0).round().int().tolist()):
                        self.usage[-1][key][e] += n
        return None

    def report(self) -> dict[str, Any]:
        return {"experts": self.opts.experts, "routes_per_step": list(self.usage)}

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"usage": [dict(u) for u in self.usage]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Every weight (experts, routers, fusion) loads with the model."""
        self.usage = [dict(u) for u in state.get("usage") or []]
