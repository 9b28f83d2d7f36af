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
    name = "bernoulli"
    discrete = True

    def __init__(self, **_: object) -> None:
        pass

    def param(self, raw: torch.Tensor) -> torch.Tensor:
        return raw  # logits

    def log_prob(self, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        x = x.expand_as(param) if x.shape != param.shape else x
        # Fused and numerically stable: no sigmoid followed by log.
        bce = F.binary_cross_entropy_with_logits(param, x, reduction="none")
        return -bce.flatten(-3).sum(-1)

    def mean(self, param: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(param)


class Gaussian(Likelihood):
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
    return LIKELIHOODS[name](gaussian_std=gaussian_std)
