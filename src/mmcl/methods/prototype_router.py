"""mr-lora's training-free router (`router: prototype`): the nearest per-task prototype of the
base model's prompt-pooled last hidden state. Prototypes are the means over a few samples per
task; "nearest" is in the Mahalanobis distance of the within-task covariance pooled over the
tasks (shrunk towards a scaled identity): the raw hidden states share large directions that
make plain cosine or Euclidean nearest-mean routing poor.
"""

from __future__ import annotations

import torch

from mmcl.models.base import Backbone, Batch
from mmcl.models.lora import BASE


@torch.no_grad()
def pooled_states(backbone: Backbone, batch: Batch, layers: int | None) -> torch.Tensor:
    """(B, H) the base model's prompt-pooled last hidden states of `batch` (every adapter
    bypassed; after the first `layers` decoder layers, None: all)."""
    batch = batch.to(backbone.device)
    names = [BASE] * len(batch) if backbone.adapters else None
    with backbone.eval_mode(), backbone.first_layers(layers):
        out = backbone.forward(batch, adapter_names=names, hidden=True)
    return out.hidden.float().cpu()


def prototype_metric(
    features: list[torch.Tensor], shrinkage: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prototypes (T, H), precision matrix (H, H)) from each task's pooled states (N_t, H)."""
    feats = [f.double() for f in features]
    protos = torch.stack([f.mean(0) for f in feats])
    centred = torch.cat([f - f.mean(0) for f in feats])
    cov = centred.T @ centred / max(1, len(centred) - len(feats))
    eye = torch.eye(cov.shape[0], dtype=cov.dtype)
    cov = (1 - shrinkage) * cov + shrinkage * cov.diagonal().mean().clamp(min=1e-8) * eye
    return protos, torch.linalg.inv(cov)


def nearest_prototype(
    states: torch.Tensor, protos: torch.Tensor, precision: torch.Tensor
) -> torch.Tensor:
    """(B,) index of the prototype nearest to each pooled state (B, H) in that metric."""
    diff = states.cpu().double().unsqueeze(1) - protos  # (B, T, H)
    return torch.einsum("bth,hk,btk->bt", diff, precision, diff).argmin(-1)
