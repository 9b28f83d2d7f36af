"""Decoder likelihoods p(x|z): `LIKELIHOODS` maps `--likelihood` to a class.

Each likelihood is an `nn.Module` of the VAE (a learned parameter, such as a learned Gaussian
std, is saved with the weights). It says how many raw decoder channels it needs per image
channel (`param_channels`), turns the decoder's raw output into its parameter (`param`), scores
images under it (`log_prob`, summed over every pixel/voxel and channel, in nats) and gives the
image it expects (`mean`).
- bernoulli: param = logits; log p = -BCE-with-logits (the benchmark standard for MNIST).
- gaussian: param = mean in (0, 1) (a sigmoid of the raw output); fixed std `gaussian_std`.
  With std = 1/sqrt(2), -log p(x|z) = sum of squared errors + D/2·log(pi): the paper's MSE
  criterion plus a constant. It is a *density* on [0, 1] pixel values, not comparable with
  discrete-data likelihoods.

Shapes: an image is (C, *S) with S = (H, W), or (D, H, W) for volumes; `event_dims` = 1 + len(S)
trailing dims are summed. `x` is (B, C, *S); the parameter is (B, P·C, *S) or, for K decodings
per image, (K, B, P·C, *S), with P = `param_channels`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from vaelab.config import ModelConfig


class Likelihood(nn.Module):
    """Base class: p(x|z) given the decoder's raw output; see the module docstring."""

    name: str = ""
    discrete: bool = False  # log_prob is a log-probability of the 8-bit/binary data (not a density)
    param_channels: int = 1  # raw decoder channels per image channel
    # Whether `pixel_std` is fitted to the data (a learned σ, the σ-VAE's, a decoder-predicted
    # scale) rather than set by hand: only then is it part of a model's predictive uncertainty
    # (the Probabilistic U-Net's `translate` std adds it to the spread of its samples).
    fitted_std: bool = False

    def __init__(self, event_dims: int = 3) -> None:
        super().__init__()
        self.event_dims = event_dims

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> Likelihood:
        """Build from a model config (its image shape fixes `event_dims`)."""
        return cls(event_dims=len(cfg.image_shape) if cfg.image_shape else 3)

    def param(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw decoder output (..., P·C, *S) -> the likelihood's parameter."""
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        """log p(x | param) summed over the event dims; broadcasts leading dims -> (...)."""
        raise NotImplementedError

    def mean(self, param: torch.Tensor) -> torch.Tensor:
        """Expected image (..., C, *S) in [0, 1]."""
        raise NotImplementedError

    def pixel_std(self, param: torch.Tensor) -> Optional[torch.Tensor]:
        """The decoder's own per-pixel standard deviation (..., C, *S), where it has one; else None."""
        return None

    def _sum_event(self, values: torch.Tensor) -> torch.Tensor:
        """Sum the trailing event dims: (..., C, *S) -> (...)."""
        return values.flatten(-self.event_dims).sum(-1)


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels; the parameter is the logits."""

    name = "bernoulli"
    discrete = True

    def param(self, raw: torch.Tensor) -> torch.Tensor:
        return raw  # logits

    def log_prob(self, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        if x.shape == param.shape:
            # Fused and numerically stable: no sigmoid followed by log.
            return -self._sum_event(F.binary_cross_entropy_with_logits(param, x, reduction="none"))
        # K decodings per image (importance sampling): x (B, *E), logits l (K, B, *E). log p =
        # sum_d x_d·l_d - softplus(l_d); the first sum is a batched dot product, so x is never
        # expanded K times (half the memory traffic of BCE on an expanded x).
        logits = param.flatten(-self.event_dims)  # (K, B, P)
        xl = torch.einsum("bd,kbd->kb", x.flatten(-self.event_dims).to(logits.dtype), logits)
        return xl - F.softplus(logits).sum(-1)

    def mean(self, param: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(param)


class Gaussian(Likelihood):
    """Independent Gaussian pixels with a fixed std; the parameter is the mean in (0, 1)."""

    name = "gaussian"
    discrete = False

    def __init__(self, gaussian_std: float = 1 / math.sqrt(2), event_dims: int = 3) -> None:
        super().__init__(event_dims)
        self.std = float(gaussian_std)
        self.log_norm = 0.5 * math.log(2 * math.pi * self.std**2)  # per-pixel normaliser

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> Gaussian:
        return cls(gaussian_std=cfg.gaussian_std, event_dims=len(cfg.image_shape) if cfg.image_shape else 3)

    def param(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(raw)  # mean in (0, 1)

    def log_prob(self, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        sq = self._sum_event((x - param).square())  # (...)
        d = param.shape[-self.event_dims:].numel()  # values per image, C·H·W
        return -sq / (2 * self.std**2) - d * self.log_norm

    def mean(self, param: torch.Tensor) -> torch.Tensor:
        return param

    def pixel_std(self, param: torch.Tensor) -> torch.Tensor:
        return torch.full_like(param, self.std)


LIKELIHOODS: dict[str, type[Likelihood]] = {"bernoulli": Bernoulli, "gaussian": Gaussian}


def build_likelihood(cfg: ModelConfig) -> Likelihood:
    """The registered likelihood `cfg.likelihood` (see `LIKELIHOODS`)."""
    return LIKELIHOODS[cfg.likelihood].from_config(cfg)
