"""Fréchet distance between two sets of feature vectors (FID, Heusel et al. 2017).

    d² = ||μ₁ − μ₂||² + tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2})

the squared 2-Wasserstein distance between Gaussians fitted to the two sets. The trace of the
matrix square root is computed from symmetric eigen-decompositions in float64 (no complex
`sqrtm`): tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2} = Σ_i sqrt(λ_i), λ_i the eigenvalues of that symmetric
PSD matrix; it equals tr (Σ₁Σ₂)^{1/2}, the usual formula.

vaelab's protocol (`vaelab eval`): features = the 128-d penultimate layer of vaelab's own
classifier (`classifier.py`), trained on the dataset's training split; FID_SAMPLES (10 000, or the
whole split if smaller) real images of the evaluated split in grey values, against as many
expected images decoded from z ~ N(0, I) (for a conditional model, with the real images' labels).
Numbers are comparable only between runs evaluated this way, not with Inception-based FIDs.
"""

from __future__ import annotations

import torch

FID_SAMPLES = 10_000


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """features (N, F) -> mean (F,) and covariance (F, F) in float64 (unbiased, N − 1)."""
    f = features.double()
    mean = f.mean(0)
    centred = f - mean
    cov = centred.T @ centred / max(f.shape[0] - 1, 1)
    return mean, cov


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix (negative rounding eigenvalues -> 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Squared Fréchet distance between N(mean1, cov1) and N(mean2, cov2); >= 0."""
    mean1, cov1, mean2, cov2 = (t.double() for t in (mean1, cov1, mean2, cov2))
    root1 = _sqrt_psd(cov1)
    middle = root1 @ cov2 @ root1  # (F, F), symmetric PSD
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    distance = (mean1 - mean2).square().sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * trace_sqrt
    return max(float(distance), 0.0)
