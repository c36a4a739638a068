"""disco: DISCO, dynamic knowledge organisation and subspace-selective activation (Guo et al.,
2025, arXiv 2503.12897, federated continual instruction tuning), as MCITlib runs it on one
client, on the per-task experts of `task_experts`.

- Dynamic knowledge organisation: each task owns a LoRA subspace (its expert, in every layer),
  trained alone while its task runs and never touched again; the task's feature prototype is
  its identity signature. (Across clients the reference aggregates the updates of the same task
  into the same subspace; mmcl trains on one client, where that is the identity.)
- Subspace-selective activation: at inference every layer activates all seen subspaces, each
  scaled by softmax(cos(text, P_i^text) / tau) over the tasks: the similarity of the sample's
  instruction features to each task's prototype (the reference's text-only similarity, its
  image term left out; tau = 0.05, the reference's). `features: both` adds the image term.

Unlike hide-llava nothing is merged: every layer keeps the subspaces apart and selects them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmcl.methods import register
from mmcl.methods.task_experts import Feature, PrototypeExpertOptions, PrototypeExperts


class DiscoOptions(PrototypeExpertOptions):
    temperature: float = Field(0.05, gt=0, description="tau of the activation softmax (reference)")
    features: Literal["text", "both"] = Field(
        "text", description="what the signatures compare: the instruction (reference) or + image"
    )


@register
class Disco(PrototypeExperts):
    name = "disco"
    summary = (
        "a LoRA subspace per task, all layers activate them by text-prototype similarity "
        "(DISCO, arXiv 2503.12897)"
    )
    Options = DiscoOptions

    def mixes(self, layer: int, top: int) -> bool:
        return True

    def prototype_features(self) -> tuple[Feature, ...]:
        return ("text",) if self.opts.features == "text" else ("image", "text")
