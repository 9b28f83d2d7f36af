"""Decoder likelihoods p(x|z): `LIKELIHOODS` maps `--likelihood` to a class.

Each likelihood turns the decoder's raw output into its parameter (`param`), scores images under
it (`log_prob`, summed over pixels, in nats) and gives the image it expects (`mean`).
- bernoulli: param = logits; log p = -BCE-with-logits (the benchmark standard for MNIST).
- gaussian: param = mean in (0, 1) (a sigmoid of the raw output); fixed std `gaussian_std`.
  With std = 1/sqrt(2), -log p(x|z) = sum of squared errors + D/2·log(pi): the paper's MSE
  criterion plus a constant. It is a *density* on [0, 1] pixel values, not comparable with
  discrete-data likelihoods.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Likelihood:
    """Base class: p(x|z) given the decoder's raw output; see the module docstring."""

    name: str = ""
    discrete: bool = False

    def param(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw decoder output (B, C, H, W) -> the likelihood's parameter."""
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        """log p(x | param) summed over (C, H, W); broadcasts leading dims -> (...)."""
        raise NotImplementedError

    def mean(self, param: torch.Tensor) -> torch.Tensor:
        """Expected image in [0, 1]."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels; the parameter is the logits."""

    name = "bernoulli"
    discrete = True

    def __init__(self, **_: object) -> None:
        pass

    def param(self, raw: torch.Tensor) -> torch.Tensor:
        return raw  # logits

    def log_prob(self, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        if x.shape == param.shape:
            # Fused and numerically stable: no sigmoid followed by log.
            bce = F.binary_cross_entropy_with_logits(param, x, reduction="none")
            return -bce.flatten(-3).sum(-1)
        # K decodings per image (importance sampling): x (B, C, H, W), logits l (K, B, C, H, W).
        # log p = sum_d x_d·l_d - softplus(l_d); the first sum is a batched dot product, so x is
        # never expanded K times (half the memory traffic of BCE on an expanded x).
        logits = param.flatten(-3)  # (K, B, D)
        xl = torch.einsum("bd,kbd->kb", x.flatten(-3).to(logits.dtype), logits)
        return xl - F.softplus(logits).sum(-1)

    def mean(self, param: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(param)


class Gaussian(Likelihood):
    """Independent Gaussian pixels with a fixed std; the parameter is the mean in (0, 1)."""

    name = "gaussian"
    discrete = False

    def __init__(self, gaussian_std: float = 1 / math.sqrt(2), **_: object) -> None:
        self.std = float(gaussian_std)
        self.log_norm = 0.5 * math.log(2 * math.pi * self.std**2)  # per-pixel normaliser

    def param(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(raw)  # mean in (0, 1)

    def log_prob(self, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        sq = (x - param).square().flatten(-3).sum(-1)  # (...)
        d = param.shape[-3:].numel()  # pixels per image, C*H*W
        return -sq / (2 * self.std**2) - d * self.log_norm

    def mean(self, param: torch.Tensor) -> torch.Tensor:
        return param


LIKELIHOODS: dict[str, type[Likelihood]] = {"bernoulli": Bernoulli, "gaussian": Gaussian}


def build_likelihood(name: str, gaussian_std: float) -> Likelihood:
    """The registered likelihood `name` (see `LIKELIHOODS`)."""
    return LIKELIHOODS[name](gaussian_std=gaussian_std)
