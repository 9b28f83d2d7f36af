"""The measures of `vaelab eval` for image-to-image runs on constructed cases: calibration of
a std against Gaussian errors of that std, the coverage scale, the generalised energy distance
and the diversity against direct computations, and the baselines against their definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from vaelab.data.degrade import gaussian_blur
from vaelab.image_metrics import psnr
from vaelab.translate.baselines import GaussianFilter, Identity, NonLocalMeans, baselines_for, estimate_noise_std
from vaelab.translate.metrics import (
    TWO_SIGMA_COVERAGE,
    Calibration,
    coverage_scale,
    generalised_energy_distance,
    image_distance,
    sample_diversity,
)


def _errors(n: int, scale: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sigma = 0.01 + 0.2 * torch.rand(n, generator=gen, dtype=torch.float64)
    return sigma, scale * sigma * torch.randn(n, generator=gen, dtype=torch.float64)


def test_calibrated_gaussian_errors():
    sigma, error = _errors(1_000_000)
    cal = Calibration()
    for part in range(4):  # streaming over batches = one pass over everything
        cal.add(sigma[part::4], error[part::4])
    assert abs(cal.within_2std - TWO_SIGMA_COVERAGE) < 0.002 and abs(TWO_SIGMA_COVERAGE - 0.9545) < 1e-4
    ref = np.corrcoef(sigma.numpy(), np.abs(error.numpy()))[0, 1]
    assert cal.correlation > 0.3 and abs(cal.correlation - ref) < 1e-9
    assert abs(cal.rms_error - float(error.square().mean().sqrt())) < 1e-12


def test_overconfident_std_is_caught_and_rescaled():
    sigma, error = _errors(400_000, scale=3.0)  # the true std is 3x the predicted one
    cal = Calibration()
    cal.add(sigma, error)
    assert cal.within_2std < 0.6
    scale = coverage_scale(sigma, error)
    assert abs(scale - 3.0) < 0.05
    rescaled = Calibration()
    rescaled.add(sigma, error, scale)
    assert abs(rescaled.within_2std - TWO_SIGMA_COVERAGE) < 0.003
    # A std that says nothing about where errors are: no correlation.
    flat = Calibration()
    flat.add(torch.full_like(sigma, 0.1) + 1e-3 * torch.rand(len(sigma), dtype=torch.float64), error)
    assert abs(flat.correlation) < 0.02


def test_coverage_scale_handles_zero_std():
    std = torch.tensor([0.0, 0.0, 1.0, 1.0])
    error = torch.tensor([0.0, 1.0, 0.5, 2.0])  # |e|/σ = 0 (0/0 counts as covered), inf (never), 0.5, 2
    assert coverage_scale(std, error) == math.inf  # 95 % of these pixels cannot be covered by any scale
    assert coverage_scale(std, error, coverage=0.5) == pytest.approx(1.0)  # the sample quantile (higher): 2 / 2


def _direct(samples: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """GED and diversity of one input by the definitions, with plain loops."""
    def d(a, b):
        return math.sqrt(float(np.mean((a - b) ** 2)))

    def mean_distinct(xs):
        pairs = [d(a, b) for (i, a), (j, b) in itertools.product(enumerate(xs), repeat=2) if i != j]
        return sum(pairs) / len(pairs) if pairs else 0.0

    cross = sum(d(s, y) for s in samples for y in targets) / (len(samples) * len(targets))
    return 2 * cross - mean_distinct(samples) - mean_distinct(targets), mean_distinct(samples)


def test_ged_and_diversity_match_a_direct_computation():
    gen = torch.Generator().manual_seed(3)
    samples, targets = torch.rand(4, 2, 1, 3, 3, generator=gen), torch.rand(3, 2, 1, 3, 3, generator=gen)
    ged, diversity = generalised_energy_distance(samples, targets), sample_diversity(samples)
    for b in range(2):
        want_ged, want_div = _direct(samples[:, b].numpy().astype(np.float64), targets[:, b].numpy().astype(np.float64))
        assert float(ged[b]) == pytest.approx(want_ged, abs=1e-6)
        assert float(diversity[b]) == pytest.approx(want_div, abs=1e-6)


def test_ged_closed_forms():
    a, b = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    point_masses = generalised_energy_distance(a.expand(5, 1, 1, 2, 2), b.expand(2, 1, 1, 2, 2))
    assert float(point_masses) == pytest.approx(2 * float(image_distance(a, b)))  # 2 d(a, b); the rest is 0
    same = torch.rand(200, 1, 1, 2, 2, generator=torch.Generator().manual_seed(4))
    other = torch.rand(200, 1, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    assert abs(float(generalised_energy_distance(same, other))) < 0.01  # one distribution: ~0
    assert float(sample_diversity(same[:1])) == 0.0


def test_baselines_do_what_they_say():
    gen = torch.Generator().manual_seed(6)
    clean = gaussian_blur(torch.rand(12, 1, 20, 20, generator=gen), 2.0)  # smooth images
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
    assert torch.equal(Identity()(noisy), noisy)
    gauss = GaussianFilter().fit(noisy, clean)
    torch.testing.assert_close(gauss(noisy), gaussian_blur(noisy, gauss.params["sigma"]))
    assert float(psnr(gauss(noisy), clean).mean()) > float(psnr(noisy, clean).mean()) + 3
    assert baselines_for(["downsample"]) == ["identity"] and "nlm" in baselines_for(["noise"])
    assert "bicubic" in Identity(kinds=["downsample"]).describe() and baselines_for(None)[1:] == ["gaussian", "nlm"]
    if NonLocalMeans.available() is None:
        from skimage.restoration import denoise_nl_means

        nlm = NonLocalMeans(noise_std=0.1).fit(noisy[:4], clean[:4])
        h = nlm.params["h_factor"] * 0.1
        ref = denoise_nl_means(noisy[5, 0].double().numpy(), h=h, sigma=0.1, fast_mode=True, patch_size=5,
                               patch_distance=6)
        np.testing.assert_allclose(nlm(noisy[5:6])[0, 0].double().numpy(), np.clip(ref, 0, 1), atol=1e-6)
        assert float(psnr(nlm(noisy), clean).mean()) > float(psnr(noisy, clean).mean())


def test_noise_std_estimate():
    gen = torch.Generator().manual_seed(7)
    flat = 0.5 + 0.08 * torch.randn(3, 64, 64, generator=gen, dtype=torch.float64)
    assert estimate_noise_std(flat.numpy()) == pytest.approx(0.08, rel=0.05)
    ramp = torch.linspace(0, 1, 64, dtype=torch.float64)[None, None].expand(1, 64, 64)
    assert estimate_noise_std(ramp.numpy()) < 1e-3  # smooth structure is not mistaken for noise
