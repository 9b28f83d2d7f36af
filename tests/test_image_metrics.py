"""PSNR and SSIM against scikit-image's implementations (the references), grey and colour,
several sizes, plus closed-form cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vaelab.image_metrics import psnr, ssim, ssim_map

skimage_metrics = pytest.importorskip("skimage.metrics")


def _pair(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=gen, dtype=torch.float64)
    noise = 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
    b = (a + noise).clamp(0, 1)
    # smooth structure too, so SSIM is far from both 0 and 1
    return (0.5 * a + 0.5 * a.roll(1, -1)).clamp(0, 1), b


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 32, 32), (2, 1, 11, 19), (1, 3, 64, 40)])
def test_ssim_matches_scikit_image(shape):
    a, b = _pair(shape, seed=sum(shape))
    ours = ssim(a, b)
    for i in range(shape[0]):
        x, y = a[i].numpy(), b[i].numpy()
        ref = skimage_metrics.structural_similarity(
            x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
            channel_axis=0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-10)


def test_ssim_of_volumes_matches_scikit_image_3d():
    a, b = _pair((1, 1, 14, 16, 12), seed=7)
    ref = skimage_metrics.structural_similarity(
        a[0, 0].numpy(), b[0, 0].numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=1.0)
    assert ssim(a, b).item() == pytest.approx(ref, abs=1e-10)


def test_ssim_closed_form_cases():
    a, _ = _pair((2, 1, 16, 16), seed=1)
    torch.testing.assert_close(ssim(a, a), torch.ones(2, dtype=torch.float64))
    # A constant offset c on a constant image: luminance term (2 m (m+c) + C1) / (m² + (m+c)² + C1).
    flat = torch.full((1, 1, 16, 16), 0.3, dtype=torch.float64)
    c1 = 0.01**2
    expected = (2 * 0.3 * 0.5 + c1) / (0.3**2 + 0.5**2 + c1)
    assert ssim(flat, flat + 0.2).item() == pytest.approx(expected, rel=1e-12)
    assert ssim_map(a, a).shape == a.shape


def test_small_images_use_a_narrower_window():
    a, b = _pair((4, 1, 8, 8), seed=3)  # the bundled digits: narrower than 11 pixels
    values = ssim(a, b)
    assert values.shape == (4,) and torch.isfinite(values).all() and (values < 1).all()
    ref = skimage_metrics.structural_similarity(  # skimage's own 7-pixel window on the same images
        a[0, 0].numpy(), b[0, 0].numpy(), win_size=7, gaussian_weights=False, use_sample_covariance=False,
        data_range=1.0)
    assert abs(values[0].item() - ref) < 0.2  # same measure, Gaussian vs uniform weights


def test_psnr_matches_scikit_image_and_closed_form():
    a, b = _pair((3, 3, 20, 20), seed=2)
    ours = psnr(a, b)
    for i in range(3):
        ref = skimage_metrics.peak_signal_noise_ratio(a[i].numpy(), b[i].numpy(), data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, rel=1e-12)
    flat = torch.zeros(1, 1, 4, 4)
    assert psnr(flat, flat + 0.1).item() == pytest.approx(20.0, rel=1e-6)  # MSE 0.01 -> 20 dB
    assert psnr(flat, flat).item() == pytest.approx(100.0)  # identical: capped, finite
    assert math.isfinite(psnr(flat, flat).item())


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError):
        psnr(torch.zeros(4, 4), torch.zeros(4, 4))
    assert np.isfinite(ssim(torch.rand(1, 1, 3, 3), torch.rand(1, 1, 3, 3)).item())
