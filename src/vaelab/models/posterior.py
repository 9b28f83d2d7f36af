"""The encoder's output: a diagonal Gaussian q(z|x) = N(mean, diag(exp(log_var)))."""

from __future__ import annotations

import math
from typing import Optional

import torch

# Keep exp(log_var) finite and non-zero in float32: a wild encoder output must not produce inf/NaN.
LOG_VAR_MIN, LOG_VAR_MAX = -30.0, 20.0


class DiagonalGaussian:
    """q(z|x) with `mean` and `log_var`, both (B, D)."""

    def __init__(self, mean: torch.Tensor, log_var: torch.Tensor) -> None:
        self.mean = mean
        self.log_var = log_var.clamp(LOG_VAR_MIN, LOG_VAR_MAX)

    @property
    def std(self) -> torch.Tensor:
        """sigma = exp(log_var / 2), (B, D)."""
        return torch.exp(0.5 * self.log_var)

    def sample(self, num_samples: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Reparameterised draw(s): (B, D), or (K, B, D) when `num_samples`=K is given."""
        shape = self.mean.shape if num_samples is None else (num_samples, *self.mean.shape)
        noise = torch.randn(shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        # The reparameterisation trick (Kingma & Welling 2013): h = sigma * N + mu, N ~ N(0, I).
        return self.std * noise + self.mean

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) summed over D; z (..., B, D) -> (..., B)."""
        return -0.5 * (((z - self.mean) ** 2) * torch.exp(-self.log_var) + self.log_var + math.log(2 * math.pi)).sum(-1)

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) in closed form, summed over D -> (B,)."""
        return 0.5 * (self.mean.square() + self.log_var.exp() - 1.0 - self.log_var).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dim."""
    return -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1)
