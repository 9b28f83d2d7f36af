"""Image-quality measures shared by evaluation, anomaly scoring and image-to-image: PSNR and SSIM.

- `psnr(a, b)`: peak signal-to-noise ratio per image, 10·log10(peak² / MSE) with peak 1.0 for
  [0, 1] pixels, MSE over every channel and pixel of the image. Identical images would give +inf;
  the MSE is floored at 1e-10 (100 dB) so that means over a split stay finite.
- `ssim(a, b)`: the structural similarity of Wang et al. 2004 per image: local means, variances
  and covariance under a Gaussian window (σ = 1.5 pixels, truncated at 3.5σ: 11 pixels wide),
  population (not sample) statistics, C1 = (0.01·L)², C2 = (0.03·L)² with L = 1; the mean of the
  SSIM map over the pixels whose whole window lies inside the image, averaged over channels.
  This is scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)` (tests/test_image_metrics.py compares the two).
  Images narrower than 11 pixels use the widest odd window that fits (7 for 8×8 digits).
  Works on volumes (C, D, H, W) too, with the window along every spatial axis.
- `ssim_map(a, b)`: the per-pixel SSIM (B, C, *S), e.g. for anomaly maps (1 − SSIM).

All functions take float tensors (B, C, *S) in [0, 1] and return (B,) float64 (or the map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
PSNR_MIN_MSE = 1e-10  # caps PSNR at 100 dB for identical images


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image: a, b (B, C, *S) -> (B,) float64."""
    _check(a, b)
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    return 10.0 * torch.log10(peak**2 / mse.clamp_min(PSNR_MIN_MSE))


def _radius(spatial: tuple[int, ...]) -> int:
    """Half-width of the Gaussian window: 3.5σ rounded (5), or less for images too small for it."""
    full = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    return max(0, min(full, (min(spatial) - 1) // 2))


def _gaussian_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable normalised Gaussian blur along every spatial axis; x (N, 1, *S), float64.

    Borders are reflected (only pixels whose window lies inside the image enter `ssim`'s mean,
    so the border rule affects `ssim_map` near the edges, never `ssim`)."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    kernel = kernel / kernel.sum()
    spatial_dims = x.dim() - 2
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial_dims]
    for axis in range(spatial_dims):
        shape = [1, 1] + [1] * spatial_dims
        shape[2 + axis] = kernel.numel()
        pad = [0, 0] * spatial_dims
        # F.pad lists the last dim first
        pad[2 * (spatial_dims - 1 - axis)] = pad[2 * (spatial_dims - 1 - axis) + 1] = radius
        if radius:  # radius <= (size - 1) // 2, so a reflection always fits
            x = F.pad(x, pad, mode="reflect")
        x = conv(x, kernel.reshape(shape))
    return x


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM (B, C, *S) float64 of Wang et al. 2004 (see the module docstring)."""
    _check(a, b)
    batch, channels, *spatial = a.shape
    radius = _radius(tuple(spatial))
    x = a.double().reshape(batch * channels, 1, *spatial)
    y = b.double().reshape(batch * channels, 1, *spatial)
    # E[x], E[y], E[x²], E[y²], E[xy] under the window, in one filter pass over five stacked maps.
    stats = _gaussian_filter(torch.cat([x, y, x * x, y * y, x * y]), radius)
    mu_x, mu_y, xx, yy, xy = stats.chunk(5)
    var_x, var_y, cov = xx - mu_x.square(), yy - mu_y.square(), xy - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return value.reshape(batch, channels, *spatial)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per image (B,) float64: the map's mean over the interior pixels and the channels."""
    value = ssim_map(a, b, data_range)
    radius = _radius(tuple(a.shape[2:]))
    interior = value[(slice(None), slice(None), *(slice(radius, s - radius) for s in a.shape[2:]))]
    return interior.flatten(1).mean(1)


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() < 3:
        raise ValueError(f"expected two image batches (B, C, *S) of one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")

