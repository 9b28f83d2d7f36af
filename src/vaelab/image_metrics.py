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


def _blur_matrix(size: int, radius: int, device: torch.device) -> torch.Tensor:
    """(size, size) float64 M with (M @ v) = the normalised Gaussian blur of a length-`size`
    signal v, borders reflected (numpy's/PyTorch's "reflect": the edge sample is not repeated)."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    kernel = kernel / kernel.sum()
    rows = torch.arange(size, device=device)[:, None]  # (size, 1)
    cols = rows + offsets.long()[None, :]  # (size, 2r+1) the samples each output reads
    cols = torch.where(cols < 0, -cols, cols)
    cols = torch.where(cols >= size, 2 * (size - 1) - cols, cols)
    matrix = torch.zeros(size, size, dtype=torch.float64, device=device)
    matrix.index_put_((rows.expand_as(cols), cols), kernel.expand_as(cols), accumulate=True)
    return matrix


def _gaussian_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable normalised Gaussian blur along every spatial axis; x (N, 1, *S), float64.

    Each axis is one matrix product with a banded blur matrix (`_blur_matrix`): the same sums as
    a 1-D convolution over the reflect-padded signal, about 6x faster than float64 `conv2d` on a
    CPU. Borders are reflected (only pixels whose window lies inside the image enter `ssim`'s
    mean, so the border rule affects `ssim_map` near the edges, never `ssim`)."""
    if not radius:
        return x
    for axis in range(2, x.dim()):
        matrix = _blur_matrix(x.shape[axis], radius, x.device)  # (S_a, S_a)
        x = torch.movedim(torch.movedim(x, axis, -1) @ matrix.T, -1, axis)
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

