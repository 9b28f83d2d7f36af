"""Measures of an image-to-image model's samples and uncertainty (PSNR and SSIM: vaelab.image_metrics).

- `image_distance(a, b)`: d = the root mean squared difference over an image's values, a scaled
  Euclidean distance (a metric of negative type, so the energy distance below is a proper one).
- `sample_diversity(samples)`: the mean pairwise distance E[d(S, S')] between a model's samples
  of one input, over the K(K-1) ordered pairs of distinct samples.
- `generalised_energy_distance(samples, targets)`: Kohl et al. 2018, eq. 4,
  D²_GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')], S, S' samples, Y, Y' targets (annotators);
  every expectation over all pairs of distinct draws (S, S' and Y, Y' independent), so one target
  gives E[d(Y, Y')] = 0 (a point mass). Lower is better; 0 when the two distributions agree.
- `Calibration`: does the predicted per-pixel std σ say where the error e = prediction - target
  is large? Accumulated over any number of batches (float64 sums): the Pearson correlation
  between σ and |e| over all pixels and channels, and the fraction of pixels with |e| <= 2σ
  (95.45 % for Gaussian errors of exactly that σ).
- `coverage_scale(std, error)`: the factor s for which |e| <= 2·s·σ holds for 95.45 % of the given
  pixels (a quantile of |e| / σ): fitted on the validation split, it recalibrates the test std.
"""

from __future__ import annotations

import math

import torch

TWO_SIGMA_COVERAGE = math.erf(2 / math.sqrt(2))  # P(|e| <= 2σ) for e ~ N(0, σ²): 0.9545
MAX_QUANTILE_VALUES = 4_000_000  # torch.quantile's input is subsampled (seeded) above this


def image_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMS difference over the last three dims (C, H, W): a, b (..., C, H, W) -> (...) float64."""
    return (a.double() - b.double()).square().flatten(-3).mean(-1).sqrt()


def _mean_pairwise(a: torch.Tensor, b: torch.Tensor, distinct: bool) -> torch.Tensor:
    """Mean of d(a_i, b_j) over i, j (i != j when `distinct`): a (I, B, ...), b (J, B, ...) -> (B,)."""
    d = image_distance(a[:, None], b[None])  # (I, J, B)
    if not distinct:
        return d.mean(dim=(0, 1))
    n = a.shape[0]
    if n < 2:
        return torch.zeros(d.shape[-1], dtype=torch.float64, device=d.device)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=d.device)
    return d[off_diagonal].mean(0)


def sample_diversity(samples: torch.Tensor) -> torch.Tensor:
    """Mean pairwise distance between distinct samples: samples (K, B, C, H, W) -> (B,) (0 for K = 1)."""
    return _mean_pairwise(samples, samples, distinct=True)


def generalised_energy_distance(samples: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """D²_GED per input (Kohl et al. 2018): samples (K, B, C, H, W), targets (R, B, C, H, W) -> (B,)."""
    cross = _mean_pairwise(samples, targets, distinct=False)
    return 2 * cross - _mean_pairwise(samples, samples, distinct=True) - _mean_pairwise(targets, targets, distinct=True)


class Calibration:
    """Streaming calibration of a per-pixel std against the actual errors (see the module docstring)."""

    def __init__(self) -> None:
        # n, Σσ, Σ|e|, Σσ², Σe², Σσ|e|, #(|e| <= 2σ), all in float64
        self.sums = torch.zeros(7, dtype=torch.float64)

    def add(self, std: torch.Tensor, error: torch.Tensor, scale: float = 1.0) -> None:
        """Add pixels: `std` and `error` of one shape; `scale` multiplies the std first."""
        s = std.double().flatten() * scale
        e = error.double().abs().flatten()
        self.sums += torch.stack([torch.tensor(float(s.numel()), dtype=torch.float64), s.sum(), e.sum(),
                                  s.square().sum(), e.square().sum(), (s * e).sum(),
                                  (e <= 2 * s).double().sum()]).cpu()

    @property
    def correlation(self) -> float:
        """Pearson correlation between σ and |e| over every pixel added (nan if either is constant)."""
        n, s, e, ss, ee, se, _ = self.sums.tolist()
        cov = se / n - (s / n) * (e / n)
        var_s, var_e = ss / n - (s / n) ** 2, ee / n - (e / n) ** 2
        if var_s <= 0 or var_e <= 0:
            return float("nan")
        return cov / math.sqrt(var_s * var_e)

    @property
    def within_2std(self) -> float:
        """Fraction of pixels with |e| <= 2σ."""
        n = float(self.sums[0])
        return float(self.sums[6]) / n if n else float("nan")

    @property
    def mean_std(self) -> float:
        """The average predicted σ."""
        return float(self.sums[1] / self.sums[0])

    @property
    def rms_error(self) -> float:
        """The root mean squared error over every pixel."""
        return math.sqrt(float(self.sums[4] / self.sums[0]))


def coverage_scale(std: torch.Tensor, error: torch.Tensor, coverage: float = TWO_SIGMA_COVERAGE,
                   seed: int = 0) -> float:
    """The s with P(|e| <= 2·s·σ) = `coverage` over these pixels: half the `coverage` quantile of
    |e| / σ (0 / 0 counts as 0, e / 0 as infinite). More than MAX_QUANTILE_VALUES pixels are
    subsampled with a seeded generator."""
    e = error.double().abs().flatten()
    s = std.double().flatten()
    ratio = torch.where(e == 0, torch.zeros_like(e), e / s)  # e > 0, σ = 0 -> inf
    if ratio.numel() > MAX_QUANTILE_VALUES:
        keep = torch.randperm(ratio.numel(), generator=torch.Generator().manual_seed(seed))[:MAX_QUANTILE_VALUES]
        ratio = ratio[keep]
    value = float(torch.quantile(ratio, coverage, interpolation="higher"))
    return value / 2
