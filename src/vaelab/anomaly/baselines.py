"""Baselines that need no model, in pixel space ([0, 1] values, every channel and pixel).

Comparative studies of unsupervised anomaly detection find that simple baselines often match or
beat autoencoders (Baur et al. 2021; Meissen et al. 2021), so every `vaelab anomaly` table
carries them next to the model's scores:

- `mean_image_distance`: ||x - m||_2 with m the mean normal training image.
- `nearest_neighbour_distance`: min_j ||x - t_j||_2 over the normal training images t_j,
  computed exactly (no approximate search): squared distances ||x||² + ||t||² - 2 x·t by float32
  matrix products over chunks of queries and of the bank, so memory stays bounded by one chunk
  pair (1024 × 8192 values, 32 MB), then the chosen neighbour's distance recomputed in float64.
  Only the choice among neighbours closer than float32 rounding (~1e-5 in squared distance for
  28×28 images) can differ from a float64 search, never the distance by more than that.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

QUERY_CHUNK = 1024
BANK_CHUNK = 8192


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, *S) -> float32 in [0, 1]; float input is taken as already in [0, 1]."""
    return images / 255.0 if images.dtype == torch.uint8 else images.to(torch.float32)


def as_double(images: torch.Tensor) -> torch.Tensor:
    """Like `as_float`, in float64 (uint8 divided in float64: exact to the last bit)."""
    return images.double() / 255.0 if images.dtype == torch.uint8 else images.double()


def mean_image(images: torch.Tensor, chunk: int = BANK_CHUNK) -> torch.Tensor:
    """The mean image (C, *S) float64 of (N, C, *S) images, summed chunk by chunk (uint8 stays uint8)."""
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    for start in range(0, len(images), chunk):
        total += as_double(images[start:start + chunk]).sum(0).cpu()
    return total / len(images)


def mean_image_distance(images: torch.Tensor, mean: torch.Tensor) -> np.ndarray:
    """||x - m||_2 per image: images (N, C, *S), mean (C, *S) -> (N,) float64."""
    out = []
    for start in range(0, len(images), QUERY_CHUNK):
        x = as_double(images[start:start + QUERY_CHUNK]).cpu()
        out.append((x - mean.double()).flatten(1).norm(dim=1))
    return torch.cat(out).numpy() if out else np.zeros(0)


@torch.inference_mode()
def nearest_neighbour_distance(images: torch.Tensor, bank: torch.Tensor, *,
                               exclude: Optional[torch.Tensor] = None, query_chunk: int = QUERY_CHUNK,
                               bank_chunk: int = BANK_CHUNK) -> np.ndarray:
    """min_j ||x_i - t_j||_2 per query image: images (N, C, *S), bank (M, C, *S) -> (N,) float64.

    `exclude` (N,) int64 gives, per query, a bank index to leave out (-1: none): scoring the
    bank's own images leave-one-out, so an image is not its own neighbour.
    """
    if len(bank) == 0:
        raise ValueError("the nearest-neighbour bank is empty")
    if exclude is not None and len(bank) < 2:
        raise ValueError("leave-one-out nearest neighbours need at least 2 bank images")
    bank_norms = []  # ||t_j||² per bank chunk, computed once
    for start in range(0, len(bank), bank_chunk):
        t = as_float(bank[start:start + bank_chunk]).flatten(1)
        bank_norms.append(t.square().sum(1))
    result = np.empty(len(images))
    for q0 in range(0, len(images), query_chunk):
        x = as_float(images[q0:q0 + query_chunk]).flatten(1)  # (q, P)
        x_norm = x.square().sum(1, keepdim=True)  # (q, 1)
        best = torch.full((len(x),), float("inf"))
        best_index = torch.zeros(len(x), dtype=torch.int64)
        for k, b0 in enumerate(range(0, len(bank), bank_chunk)):
            t = as_float(bank[b0:b0 + bank_chunk]).flatten(1)  # (m, P)
            d2 = x_norm + bank_norms[k][None, :] - 2.0 * (x @ t.T)  # (q, m) squared distances
            if exclude is not None:
                own = exclude[q0:q0 + query_chunk] - b0  # the excluded column within this chunk
                rows = torch.nonzero((own >= 0) & (own < len(t))).squeeze(1)
                d2[rows, own[rows]] = float("inf")
            value, index = d2.min(1)
            better = value < best
            best = torch.where(better, value, best)
            best_index = torch.where(better, index + b0, best_index)
        # The chosen neighbour's distance in float64: exact, whatever float32 rounding did above.
        nearest = as_double(bank.index_select(0, best_index)).flatten(1)
        exact = as_double(images[q0:q0 + query_chunk]).flatten(1)
        result[q0:q0 + len(x)] = (exact - nearest).norm(dim=1).numpy()
    return result
