"""Priors p(z): `PRIORS` maps `--prior` to a module with `log_prob` and `sample`.

- normal: p(z) = N(0, I), the prior of Kingma & Welling 2013.

Every prior is an `nn.Module` of the VAE (its parameters, if any, are saved with the weights),
built by `factory(cfg, vae)`. `log_prob(z)` takes z (..., D) and returns (...); `sample(n)`
returns (n, D). A prior whose KL from a diagonal Gaussian has a closed form says so with
`standard_normal = True`; the VAE then uses the closed form, otherwise a Monte Carlo estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

if TYPE_CHECKING:
    from vaelab.config import ModelConfig


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dim."""
    return -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1)


class Prior(nn.Module):
    """Base class: a density over the latent code; see the module docstring."""

    standard_normal = False  # KL(q || p) in closed form for a diagonal Gaussian q

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) summed over D: z (..., D) -> (...)."""
        raise NotImplementedError

    def sample(self, n: int, generator: Optional[torch.Generator] = None, temperature: float = 1.0,
               device: Optional[torch.device] = None) -> torch.Tensor:
        """n draws (n, D) on `device`; `temperature` t < 1 draws nearer the prior's modes."""
        raise NotImplementedError


class StandardNormal(Prior):
    """p(z) = N(0, I); temperature t samples N(0, t²I)."""

    standard_normal = True

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return standard_normal_log_prob(z)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, temperature: float = 1.0,
               device: Optional[torch.device] = None) -> torch.Tensor:
        # Drawn on the CPU from a CPU generator (the same numbers on every device), then moved.
        z = torch.randn(n, self.latent_dim, generator=generator)
        return (z.to(device) if device is not None else z) * temperature


# name -> factory(model config, the VAE being built) -> Prior. The VAE is passed for priors that
# depend on its networks (a VampPrior encodes learned pseudo-inputs with the VAE's encoder).
PRIORS: dict[str, Callable[[ModelConfig, nn.Module], Prior]] = {
    "normal": lambda cfg, vae: StandardNormal(cfg.latent_dim),
}


def build_prior(cfg: ModelConfig, vae: nn.Module) -> Prior:
    """The registered prior `cfg.prior` (see `PRIORS`)."""
    return PRIORS[cfg.prior](cfg, vae)
