"""Latent-space operations on a trained model: encode a split, project to 2-D, rank dimensions.

The 2-D projection is PCA of the posterior means (identity for 2-D latents), so every figure and
the browser explorer show the same map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from vaelab.data.base import Split
from vaelab.data.batches import iterate_batches


@dataclass
class EncodedSplit:
    mean: torch.Tensor  # (N, D) posterior means
    log_var: torch.Tensor  # (N, D)
    labels: Optional[torch.Tensor]  # (N,) or None

    def kl_per_dim(self) -> torch.Tensor:
        """Average KL(q(z_d|x) || N(0, 1)) per dimension -> (D,): how much each dim is used."""
        return 0.5 * (self.mean.square() + self.log_var.exp() - 1.0 - self.log_var).mean(0)


@torch.inference_mode()
def encode_split(model, split: Split, batch_size: int = 1000, max_images: Optional[int] = None) -> EncodedSplit:
    """Posterior means and log-variances of (the first `max_images` of) a split."""
    if max_images is not None and max_images < len(split):
        split = Split(split.images[:max_images], None if split.labels is None else split.labels[:max_images])
    means, log_vars = [], []
    for x, y in iterate_batches(split, batch_size, shuffle=False, device=model.device):
        q = model.encode(x, y if model.conditional else None)
        means.append(q.mean.float().cpu())
        log_vars.append(q.log_var.float().cpu())
    return EncodedSplit(torch.cat(means), torch.cat(log_vars), split.labels)


@dataclass
class Projection:
    """z (N, D) -> 2-D coordinates: (z - center) @ components.T; identity when D <= 2."""

    center: torch.Tensor  # (D,)
    components: torch.Tensor  # (2, D)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.center) @ self.components.T

    def inverse(self, coords: torch.Tensor, base: Optional[torch.Tensor] = None) -> torch.Tensor:
        """2-D coordinates (N, 2) -> latent vectors (N, D) on the projection plane (through `base`)."""
        base = self.center if base is None else base
        offset = coords @ self.components  # (N, D)
        return base + offset - ((base - self.center) @ self.components.T) @ self.components


def fit_projection(means: torch.Tensor) -> Projection:
    """PCA of the posterior means (N, D): the two directions of largest spread."""
    d = means.shape[1]
    if d <= 2:
        comps = torch.eye(2, d) if d == 2 else torch.tensor([[1.0], [0.0]])
        return Projection(torch.zeros(d), comps)
    center = means.mean(0)
    # SVD of the centred data: rows of vh are the principal directions, largest first.
    _, _, vh = torch.linalg.svd(means - center, full_matrices=False)
    comps = vh[:2]
    # Fix the sign so the projection is deterministic across runs of the SVD.
    signs = torch.sign(comps[torch.arange(2), comps.abs().argmax(1)])
    return Projection(center, comps * signs[:, None])
