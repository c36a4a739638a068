"""hide-llava: HiDe-LLaVA, hierarchical decoupling (Guo et al., ACL 2025, arXiv 2503.12941),
as MCITlib runs it, on the per-task experts of `task_experts`.

- Task-specific expansion, the top decoder layer: each sample mixes the seen tasks' experts by
  w = softmax(((cos(image, P_i^image) + cos(text, P_i^text)) / 2) / tau), the similarity of its
  image and text features to each task's prototypes (tau = 0.1, the reference's).
- Task-general fusion, every other layer: the seen experts are merged into one LoRA,
  A = sum_i A_i and B = sum_i B_i (MCITlib's `merge_weight = 1.0`); `merge: deltas` sums the
  experts' updates B_i A_i instead, without the cross terms B_j A_i.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmcl.methods import register
from mmcl.methods.task_experts import Feature, PrototypeExpertOptions, PrototypeExperts


class HiDeOptions(PrototypeExpertOptions):
    temperature: float = Field(0.1, gt=0, description="tau of the top layer's softmax (reference)")
    merge: Literal["factors", "deltas"] = Field(
        "factors", description="lower layers: sum A's and B's apart (reference), or sum B_i A_i"
    )


@register
class HiDeLlava(PrototypeExperts):
    name = "hide-llava"
    summary = (
        "an expert per task; the top layer mixes them by image/text prototype similarity, "
        "the others merge them (HiDe-LLaVA, arXiv 2503.12941)"
    )
    Options = HiDeOptions

    def mixes(self, layer: int, top: int) -> bool:
        return layer == top

    def prototype_features(self) -> tuple[Feature, ...]:
        return ("image", "text")
