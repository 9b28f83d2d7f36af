"""The variational autoencoder: `encode` -> q(z|x), `decode` -> the likelihood's parameter.

Kingma & Welling 2013: the encoder outputs the mean and log-variance of a diagonal Gaussian
q(z|x); z = sigma * N + mu with N ~ N(0, I) (see `DiagonalGaussian.sample`); the decoder maps z
back to the parameter of p(x|z); training maximises E_q[log p(x|z)] - KL(q(z|x) || N(0, I)).
A conditional VAE (Sohn et al. 2015) feeds a one-hot label to both encoder and decoder.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.config import ModelConfig
from vaelab.errors import ConfigError
from vaelab.likelihoods import build_likelihood
from vaelab.models import ARCHITECTURES
from vaelab.models.posterior import DiagonalGaussian


def resolve_hidden(cfg: ModelConfig) -> list[int]:
    """The hidden sizes to build: the config's, or the architecture's default when empty."""
    return list(cfg.hidden) if cfg.hidden else list(ARCHITECTURES[cfg.arch].default_hidden)


class VAE(nn.Module):
    """Encoder + decoder + likelihood, built from a `ModelConfig`; see the module docstring."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.image_shape is None:
            raise ConfigError("model config has no image_shape; it is set from the data when training starts")
        self.cfg = cfg
        self.image_shape = tuple(cfg.image_shape)  # (C, H, W)
        self.latent_dim = cfg.latent_dim
        self.num_classes = cfg.num_classes if cfg.conditional else 0
        arch = ARCHITECTURES[cfg.arch]
        hidden = resolve_hidden(cfg)
        args = (self.image_shape, hidden, cfg.latent_dim, self.num_classes, cfg.activation)
        self.encoder = arch.encoder(*args)
        self.decoder = arch.decoder(*args)
        self.likelihood = build_likelihood(cfg.likelihood, cfg.gaussian_std)

    @property
    def conditional(self) -> bool:
        """Whether encoder and decoder take a label."""
        return self.num_classes > 0

    @property
    def device(self) -> torch.device:
        """The device the weights live on."""
        return next(self.parameters()).device

    def _cond(self, y: Optional[torch.Tensor], batch: int) -> Optional[torch.Tensor]:
        """One-hot (B, num_classes) for a conditional model; None otherwise."""
        if not self.conditional:
            return None
        if y is None:
            raise ConfigError("this is a conditional model: pass labels y (e.g. --label)")
        y = torch.as_tensor(y, device=self.device).long().reshape(-1)
        if y.numel() == 1 and batch > 1:
            y = y.expand(batch)
        if y.numel() and (y.min() < 0 or y.max() >= self.num_classes):
            raise ConfigError(f"label must be in 0..{self.num_classes - 1}")
        return F.one_hot(y, self.num_classes).to(torch.get_default_dtype())

    def encode(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> DiagonalGaussian:
        """x float (B, C, H, W) in [0, 1] -> q(z|x) with mean and log_var (B, D)."""
        stats = self.encoder(x, self._cond(y, x.shape[0]))  # (B, 2*D)
        mean, log_var = stats.chunk(2, dim=-1)
        return DiagonalGaussian(mean, log_var)

    def decode(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z (B, D) or (K, B, D) -> the likelihood's parameter (logits or mean), (..., C, H, W)."""
        cond = self._cond(y, z.shape[-2] if z.dim() > 1 else 1)
        if cond is not None and z.dim() == 3:
            cond = cond.expand(z.shape[0], *cond.shape)
        return self.likelihood.param(self.decoder(z, cond))

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None):
        """One pass: (param, posterior, z) with z one reparameterised sample per image."""
        posterior = self.encode(x, y)
        z = posterior.sample()
        return self.decode(z, y), posterior, z

    @torch.inference_mode()
    def sample(self, n: int, y: Optional[torch.Tensor] = None, temperature: float = 1.0,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Decode n draws from the prior N(0, t²I) -> expected images (n, C, H, W) in [0, 1]."""
        z = torch.randn(n, self.latent_dim, generator=generator).to(self.device) * temperature
        return self.likelihood.mean(self.decode(z, y))

    @torch.inference_mode()
    def reconstruct(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Decode the posterior mean of x -> expected images (B, C, H, W) in [0, 1]."""
        return self.likelihood.mean(self.decode(self.encode(x, y).mean, y))

    @torch.inference_mode()
    def decode_images(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z (B, D) -> expected images (B, C, H, W) in [0, 1]."""
        return self.likelihood.mean(self.decode(z, y))
