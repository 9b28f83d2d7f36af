"""Training objectives and the importance weights they share.

- `elbo`: the evidence lower bound (Kingma & Welling 2013),
  ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || N(0, I)), one reparameterised sample per image; the
  KL term is closed-form and weighted by beta (beta-VAE, Higgins et al. 2017).
- `iwae`: the importance-weighted bound (Burda et al. 2015),
  L_K(x) = log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x); L_1 = ELBO, L_K increases with K.

`OBJECTIVES` maps `--objective` to a function returning `LossParts` (per-image means, in nats).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Optional

import torch

from vaelab.models.posterior import DiagonalGaussian, standard_normal_log_prob

if TYPE_CHECKING:
    from vaelab.models import VAE


class LossParts(NamedTuple):
    """What every objective returns: the loss to minimise and its named parts."""

    loss: torch.Tensor  # scalar to minimise (batch mean)
    recon: torch.Tensor  # scalar: mean over the batch of -log p(x|z)
    kl: torch.Tensor  # scalar: mean over the batch of KL(q(z|x) || p(z))


def elbo_loss(model: VAE, x: torch.Tensor, y: Optional[torch.Tensor], beta: float, num_samples: int = 1) -> LossParts:
    """Negative ELBO with a beta-weighted KL. x (B, C, H, W) -> scalars."""
    posterior = model.encode(x, y)
    z = posterior.sample()  # (B, D): h = sigma * N + mu
    recon = -model.likelihood.log_prob(x, model.decode(z, y))  # (B,)
    kl = posterior.kl()  # (B,)
    recon, kl = recon.mean(), kl.mean()
    return LossParts(recon + beta * kl, recon, kl)


def log_importance_weights(model: VAE, x: torch.Tensor, y: Optional[torch.Tensor], num_samples: int,
                           posterior: Optional[DiagonalGaussian] = None,
                           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for K draws z_k ~ q(z|x) -> (K, B)."""
    if posterior is None:
        posterior = model.encode(x, y)
    z = posterior.sample(num_samples, generator=generator)  # (K, B, D)
    log_px_z = model.likelihood.log_prob(x, model.decode(z, y))  # (K, B)
    return log_px_z + standard_normal_log_prob(z) - posterior.log_prob(z)


def iwae_loss(model: VAE, x: torch.Tensor, y: Optional[torch.Tensor], beta: float, num_samples: int = 1) -> LossParts:
    """Negative IWAE bound -L_K (beta is ignored: the bound has no separate KL weight).

    The reported parts are those of the ELBO on the same draws, for comparison with `elbo`.
    """
    posterior = model.encode(x, y)
    log_w = log_importance_weights(model, x, y, num_samples, posterior)  # (K, B)
    bound = torch.logsumexp(log_w, dim=0) - math.log(num_samples)  # (B,)
    kl = posterior.kl().mean()
    recon = (-log_w.mean(0)).mean() - kl  # -E[log p(x|z)] on the same draws, approximately
    return LossParts(-bound.mean(), recon.detach(), kl.detach())


OBJECTIVES: dict[str, Callable[..., LossParts]] = {"elbo": elbo_loss, "iwae": iwae_loss}
