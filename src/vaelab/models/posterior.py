"""Posteriors q(z|x): `POSTERIORS` maps `--posterior` to a head that turns the encoder's output
into a distribution object.

- diagonal: q(z|x) = N(mean, diag(exp(log_var))), the encoder's output split in two
  (Kingma & Welling 2013).
- iaf: that Gaussian followed by inverse autoregressive flow steps with a context vector from the
  encoder (Kingma et al. 2016); see models/iaf.py.

A head is an `nn.Module` of the VAE (a flow's parameters live in it). `head.stats_dim` is the
encoder output width it needs; `head(stats)` returns the posterior object, which has
- `mean`, `log_var` (B, D): the base Gaussian (the code the latent tools use is `mean`);
- `sample(K)` -> z (B, D) or (K, B, D), reparameterised;
- `rsample_with_log_prob(K)` -> (z, log q(z|x)), what the ELBO and the IWAE bound need for any
  posterior (a flow knows log q only of the points it drew);
- `closed_form_kl` and `kl()`: KL(q || N(0, I)) in closed form where it exists.
Noise is drawn by `draw_noise(shape, generator)`, one place that multi-process training replaces
to draw a single process's noise (see `vaelab.distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

if TYPE_CHECKING:
    from vaelab.config import ModelConfig

# Keep exp(log_var) finite and non-zero in float32: a wild encoder output must not produce inf/NaN.
LOG_VAR_MIN, LOG_VAR_MAX = -30.0, 20.0


def _randn(mean: torch.Tensor, shape: tuple[int, ...], generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=mean.device, dtype=mean.dtype)


class DiagonalGaussian:
    """q(z|x) with `mean` and `log_var`, both (B, D)."""

    closed_form_kl = True

    def __init__(self, mean: torch.Tensor, log_var: torch.Tensor) -> None:
        self.mean = mean
        self.log_var = log_var.clamp(LOG_VAR_MIN, LOG_VAR_MAX)

    @property
    def std(self) -> torch.Tensor:
        """sigma = exp(log_var / 2), (B, D)."""
        return torch.exp(0.5 * self.log_var)

    def draw_noise(self, shape: tuple[int, ...], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """N(0, I) noise of `shape` ([K,] B, D) on the posterior's device."""
        return _randn(self.mean, shape, generator)

    def sample(self, num_samples: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Reparameterised draw(s): (B, D), or (K, B, D) when `num_samples`=K is given."""
        shape = tuple(self.mean.shape) if num_samples is None else (num_samples, *self.mean.shape)
        noise = self.draw_noise(shape, generator)
        # The reparameterisation trick (Kingma & Welling 2013): h = sigma * N + mu, N ~ N(0, I).
        return self.std * noise + self.mean

    def rsample_with_log_prob(self, num_samples: Optional[int] = None,
                              generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, log q(z|x)): z as `sample`, log q summed over D, (B,) or (K, B)."""
        z = self.sample(num_samples, generator)
        return z, self.log_prob(z)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) summed over D; z (..., B, D) -> (..., B)."""
        return -0.5 * (((z - self.mean) ** 2) * torch.exp(-self.log_var) + self.log_var + math.log(2 * math.pi)).sum(-1)

    def kl_per_dim(self) -> torch.Tensor:
        """KL(q(z_d|x) || N(0, 1)) per dimension in closed form -> (B, D)."""
        return 0.5 * (self.mean.square() + self.log_var.exp() - 1.0 - self.log_var)

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) in closed form, summed over D -> (B,)."""
        return self.kl_per_dim().sum(-1)


class DiagonalHead(nn.Module):
    """Encoder output (B, 2D) = [mean | log_var] -> `DiagonalGaussian`; no parameters of its own."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.stats_dim = 2 * latent_dim

    def forward(self, stats: torch.Tensor) -> DiagonalGaussian:
        mean, log_var = stats.chunk(2, dim=-1)
        return DiagonalGaussian(mean, log_var)


def _iaf(cfg: ModelConfig) -> nn.Module:
    from vaelab.models.iaf import IAFHead  # iaf.py builds on this module

    return IAFHead(cfg.latent_dim, cfg.flow_steps, cfg.flow_hidden)


# name -> factory(model config) -> head module (see the module docstring).
POSTERIORS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "diagonal": lambda cfg: DiagonalHead(cfg.latent_dim),
    "iaf": _iaf,
}


def build_posterior(cfg: ModelConfig) -> nn.Module:
    """The registered posterior head `cfg.posterior` (see `POSTERIORS`)."""
    return POSTERIORS[cfg.posterior](cfg)

