"""Classical baselines that `vaelab eval` scores beside an image-to-image model, on the same images.

`BASELINES` maps a name to a class; `baselines_for(kinds)` picks those that fit a degradation:

- identity: the input itself. For a `downsample` degradation the input *is* the bicubic upsampling
  of the low-resolution image (vaelab/data/degrade.py), so this row is the bicubic baseline.
- gaussian: a Gaussian filter (vaelab.data.degrade.gaussian_blur) with σ chosen on the validation
  split (the grid SIGMAS, best mean PSNR); for noise, JPEG, or pairs of unknown kind.
- nlm: non-local means (Buades et al. 2005) from scikit-image, `denoise_nl_means` with 5×5
  patches within 13×13 windows, fast mode, the noise σ from the degradation (else estimated per
  image, `estimate_noise_std`) and the filter strength h = f·σ with f chosen on the validation
  split (the grid NLM_FACTORS). Needs scikit-image (pip install 'vaelab[classical]'); without it
  the row says so instead of failing.

Each baseline has `fit(val_inputs, val_targets)` (tuning on at most TUNE_IMAGES validation
images), `__call__(inputs)` and `params` (what was chosen). Images are float (N, C, H, W) in [0, 1].
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from vaelab.data.degrade import gaussian_blur
from vaelab.image_metrics import psnr

SIGMAS = (0.25, 0.4, 0.55, 0.7, 0.85, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
NLM_FACTORS = (0.4, 0.6, 0.8, 1.0, 1.2)
NLM_PATCH_SIZE, NLM_PATCH_DISTANCE = 5, 6
TUNE_IMAGES = 200
INSTALL_HINT = "pip install 'vaelab[classical]'"


def estimate_noise_std(image: np.ndarray) -> float:
    """Donoho & Johnstone 1994: σ ≈ median(|HH|) / 0.6745 over the finest diagonal Haar wavelet
    coefficients HH = (a - b - c + d) / 2 of every 2×2 block (and channel); image (C, H, W)."""
    h, w = image.shape[-2] // 2 * 2, image.shape[-1] // 2 * 2
    x = image[..., :h, :w]
    hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2
    return float(np.median(np.abs(hh)) / 0.6745) if hh.size else 0.0


class Identity:
    """The input as the prediction."""

    name = "identity"

    def __init__(self, noise_std: float = 0.0, kinds: Optional[list[str]] = None) -> None:
        self.kinds = kinds or []
        self.params: dict[str, Any] = {}

    @staticmethod
    def available() -> Optional[str]:
        """None when the baseline can run here, else why not (an optional package is missing)."""
        return None

    def describe(self) -> str:
        if "downsample" in self.kinds:
            return "the input (= bicubic upsampling of the low-resolution image)"
        return "the input"

    def fit(self, inputs: torch.Tensor, targets: torch.Tensor) -> Identity:
        return self

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs


class GaussianFilter(Identity):
    """A Gaussian blur whose σ is tuned on the validation split."""

    name = "gaussian"

    def describe(self) -> str:
        return f"Gaussian filter, σ = {self.params.get('sigma', float('nan')):g} px (tuned on the validation split)"

    def fit(self, inputs: torch.Tensor, targets: torch.Tensor) -> GaussianFilter:
        scores = {s: float(psnr(gaussian_blur(inputs, s), targets).mean()) for s in SIGMAS}
        self.params = {"sigma": max(scores, key=scores.get)}
        return self

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(inputs, self.params["sigma"])


class NonLocalMeans(Identity):
    """scikit-image's non-local means, its strength tuned on the validation split."""

    name = "nlm"

    def __init__(self, noise_std: float = 0.0, kinds: Optional[list[str]] = None) -> None:
        super().__init__(noise_std, kinds)
        self.noise_std = noise_std  # 0: estimated per image
        self.params = {"h_factor": NLM_FACTORS[2]}

    @staticmethod
    def available() -> Optional[str]:
        """None when scikit-image can be imported, else why not."""
        try:
            import skimage.restoration  # noqa: F401
        except ImportError:
            return f"scikit-image is not installed ({INSTALL_HINT})"
        return None

    def describe(self) -> str:
        sigma = f"σ = {self.noise_std:g}" if self.noise_std else "σ estimated per image"
        return (f"non-local means (scikit-image), {NLM_PATCH_SIZE}×{NLM_PATCH_SIZE} patches, {sigma}, "
                f"h = {self.params['h_factor']:g}·σ (tuned on the validation split)")

    def _run(self, inputs: torch.Tensor, factor: float) -> torch.Tensor:
        from skimage.restoration import denoise_nl_means

        out = np.empty(tuple(inputs.shape), dtype=np.float64)
        arrays = inputs.detach().double().cpu().numpy()
        for i, image in enumerate(arrays):
            colour = image.shape[0] == 3
            img = image.transpose(1, 2, 0) if colour else image[0]
            axis = -1 if colour else None
            sigma = self.noise_std or estimate_noise_std(image)
            sigma = max(sigma, 1e-4)
            result = denoise_nl_means(img, h=factor * sigma, sigma=sigma, fast_mode=True, patch_size=NLM_PATCH_SIZE,
                                      patch_distance=NLM_PATCH_DISTANCE, channel_axis=axis)
            out[i] = result.transpose(2, 0, 1) if colour else result[None]
        return torch.from_numpy(out).to(inputs.dtype).clamp_(0, 1)

    def fit(self, inputs: torch.Tensor, targets: torch.Tensor) -> NonLocalMeans:
        scores = {f: float(psnr(self._run(inputs, f), targets).mean()) for f in NLM_FACTORS}
        self.params = {"h_factor": max(scores, key=scores.get)}
        return self

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._run(inputs, self.params["h_factor"])


BASELINES: dict[str, type[Identity]] = {"identity": Identity, "gaussian": GaussianFilter, "nlm": NonLocalMeans}
# Baselines that are classical restoration methods (identity is a reference point, or bicubic for SR).
DENOISERS = ("gaussian", "nlm")


def baselines_for(kinds: Optional[list[str]]) -> list[str]:
    """The baselines for a degradation's steps (`Degradation.kinds`), or for pairs of unknown kind (None)."""
    names = ["identity"]
    if kinds is None or "noise" in kinds or "jpeg" in kinds:
        names += list(DENOISERS)
    return names
