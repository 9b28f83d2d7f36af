"""The variational autoencoder: `encode` -> q(z|x), `decode` -> the likelihood's parameter.

Kingma & Welling 2013: the encoder outputs the parameters of q(z|x) (for the default diagonal
Gaussian, its mean and log-variance); z = sigma * N + mu with N ~ N(0, I) (see
`DiagonalGaussian.sample`); the decoder maps z back to the parameter of p(x|z); training
maximises E_q[log p(x|z)] - KL(q(z|x) || p(z)). A conditional VAE (Sohn et al. 2015) feeds a
one-hot label to both encoder and decoder.

The three densities are components (the one place they live): `self.prior` p(z)
(models/priors.py), the posterior head that turns the encoder's output into q(z|x)
(models/posterior.py), and `self.likelihood` p(x|z) (likelihoods.py). `elbo_terms` and
`log_weights` combine them for any choice, so the ELBO, the IWAE bound and `vaelab eval` work
unchanged for every prior x posterior x likelihood: the KL is in closed form where it exists
(a diagonal Gaussian against N(0, I)), by Monte Carlo on the same draws where not.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.config import ModelConfig
from vaelab.errors import ConfigError
from vaelab.likelihoods import build_likelihood
from vaelab.models import ARCHITECTURES
from vaelab.models.posterior import build_posterior
from vaelab.models.priors import build_prior
from vaelab.models.spec import NetSpec


def gaussian_kl(mean_q: torch.Tensor, log_var_q: torch.Tensor, mean_p: torch.Tensor,
                log_var_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_q, exp(log_var_q)) || N(mean_p, exp(log_var_p))) per dimension (broadcasting)."""
    return 0.5 * (log_var_p - log_var_q + (torch.exp(log_var_q) + (mean_q - mean_p).square()) * torch.exp(-log_var_p)
                  - 1.0)


def resolve_hidden(cfg: ModelConfig) -> list[int]:
    """The hidden sizes to build: the config's, or the architecture's default when empty."""
    from vaelab.models import default_hidden

    return list(cfg.hidden) if cfg.hidden else list(default_hidden(cfg.arch))


class ElboTerms(NamedTuple):
    """Per-image parts of the negative ELBO, each (B,): recon = -E_q[log p(x|z)], kl = KL(q || p)."""

    recon: torch.Tensor
    kl: torch.Tensor
    kl_per_dim: Optional[torch.Tensor]  # (B, D) where the KL is closed-form per dimension, else None
    # (B, L): the KL of each stochastic layer of a hierarchical model (their sum is `kl`); None for one layer.
    kl_per_layer: Optional[torch.Tensor] = None


class LogTerms(NamedTuple):
    """The three log-densities at K posterior draws, each (K, B)."""

    log_px_z: torch.Tensor  # log p(x | z_k)
    log_pz: torch.Tensor  # log p(z_k)
    log_qz: torch.Tensor  # log q(z_k | x)


class VAE(nn.Module):
    """Encoder + decoder + prior + posterior + likelihood, built from a `ModelConfig`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self._init_common(cfg)
        arch = ARCHITECTURES[cfg.arch]
        self.posterior_head = build_posterior(cfg)
        spec = NetSpec(image_shape=self.image_shape, hidden=tuple(resolve_hidden(cfg)), latent_dim=cfg.latent_dim,
                       cond_dim=self.num_classes, activation=cfg.activation,
                       encoder_out=self.posterior_head.stats_dim,
                       decoder_channels=self.image_shape[0] * self.likelihood.param_channels, config=cfg)
        self.encoder = arch.encoder(spec)
        self.decoder = arch.decoder(spec)
        self.prior = build_prior(cfg, self)  # last: a prior may use the encoder (VampPrior)

    def _init_common(self, cfg: ModelConfig) -> None:
        """What every model family shares: checks of the image shape, sizes, the likelihood."""
        if cfg.image_shape is None:
            raise ConfigError("model config has no image_shape; it is set from the data when training starts")
        if cfg.arch not in ARCHITECTURES:
            raise ConfigError(f"--arch {cfg.arch} is not a VAE architecture (it is for --task translate)")
        arch = ARCHITECTURES[cfg.arch]
        if len(cfg.image_shape) - 1 not in arch.spatial_dims:
            kind = "volumes (C, D, H, W)" if len(cfg.image_shape) == 4 else "images (C, H, W)"
            raise ConfigError(f"--arch {cfg.arch} does not handle {kind}; choose an architecture for them")
        self.cfg = cfg
        self.image_shape = tuple(cfg.image_shape)  # (C, H, W) or (C, D, H, W)
        self.latent_dim = cfg.latent_dim
        self.num_classes = cfg.num_classes if cfg.conditional else 0
        self.likelihood = build_likelihood(cfg)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Sizes of the stochastic layers, bottom first; a code (..., D) is their concatenation."""
        return (self.latent_dim,)

    def fill_lower_layers(self, z: torch.Tensor, layer: int, temperature: float = 0.0,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Codes (N, D) with the layers below `layer` (0-based) regenerated from the prior given the
        layers above; one stochastic layer has nothing below it, so z is returned as it is."""
        return z

    def dimension_kl(self, posterior) -> torch.Tensor:
        """Each image's KL per latent dimension (B, D), what the latent tools rank dimensions by:
        KL(N(mean_d, var_d) || N(m_d, s_d^2)) against the prior's marginal moments m, s (exact for
        the normal prior; a moment-matched Gaussian for a mixture prior)."""
        m, s = (t.to(posterior.mean) for t in self.prior.marginals())
        return gaussian_kl(posterior.mean, posterior.log_var, m, 2 * torch.log(s.clamp_min(1e-12)))

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

    # ---- the model's densities -----------------------------------------------------------------
    def encode(self, x: torch.Tensor, y: Optional[torch.Tensor] = None):
        """x float (B, C, *S) in [0, 1] -> q(z|x): `.mean`, `.log_var` (B, D), `.sample()`, ..."""
        return self.encode_with_condition(x, self._cond(y, x.shape[0]))

    def encode_with_condition(self, x: torch.Tensor, cond: Optional[torch.Tensor]):
        """`encode` with the one-hot label (B, num_classes) already made (or None): what export traces."""
        stats = self.encoder(x, cond)  # (B, encoder_out)
        return self.posterior_head(stats)

    def decode(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z (B, D) or (K, B, D) -> the likelihood's parameter (logits, mean, ...), (..., P·C, *S)."""
        cond = self._cond(y, z.shape[-2] if z.dim() > 1 else 1)
        if cond is not None and z.dim() == 3:
            cond = cond.expand(z.shape[0], *cond.shape)
        return self.likelihood.param(self.decoder(z, cond))

    def elbo_terms(self, x: torch.Tensor, y: Optional[torch.Tensor], posterior=None, num_samples: Optional[int] = None,
                   generator: Optional[torch.Generator] = None) -> ElboTerms:
        """-E_q[log p(x|z)] and KL(q(z|x) || p(z)) per image, (B,) each.

        One reparameterised draw per image (`num_samples` None), or the mean over K draws. The
        KL is closed-form for a diagonal Gaussian against N(0, I), else log q(z|x) - log p(z) on
        the same draws (an unbiased estimate).
        """
        if posterior is None:
            posterior = self.encode(x, y)
        if self.kl_is_closed_form(posterior):
            z = posterior.sample(num_samples, generator)  # ([K,] B, D): h = sigma * N + mu
            kl_per_dim = posterior.kl_per_dim()  # (B, D)
            kl = kl_per_dim.sum(-1)  # (B,)
        else:
            z, log_q = posterior.rsample_with_log_prob(num_samples, generator)  # ([K,] B, D), ([K,] B)
            kl_per_dim, kl = None, log_q - self.prior.log_prob(z)  # ([K,] B)
        recon = -self.likelihood.log_prob(x, self.decode(z, y))  # ([K,] B)
        if num_samples is not None:
            recon = recon.mean(0)
            kl = kl.mean(0) if kl.dim() > 1 else kl
        return ElboTerms(recon, kl, kl_per_dim)

    def log_terms(self, x: torch.Tensor, y: Optional[torch.Tensor], num_samples: int, posterior=None,
                  generator: Optional[torch.Generator] = None) -> LogTerms:
        """log p(x|z_k), log p(z_k) and log q(z_k|x) for K draws z_k ~ q(z|x), each (K, B)."""
        if posterior is None:
            posterior = self.encode(x, y)
        z, log_q = posterior.rsample_with_log_prob(num_samples, generator)  # (K, B, D), (K, B)
        return LogTerms(self.likelihood.log_prob(x, self.decode(z, y)), self.prior.log_prob(z), log_q)

    def log_weights(self, x: torch.Tensor, y: Optional[torch.Tensor], num_samples: int, posterior=None,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for K draws z_k ~ q(z|x) -> (K, B)."""
        terms = self.log_terms(x, y, num_samples, posterior, generator)
        return terms.log_px_z + terms.log_pz - terms.log_qz

    def kl_is_closed_form(self, posterior) -> bool:
        """Whether KL(q(z|x) || p(z)) has a closed form here (a diagonal Gaussian against N(0, I))."""
        return getattr(posterior, "closed_form_kl", False) and self.prior.standard_normal

    def closed_form_kl(self, posterior) -> Optional[torch.Tensor]:
        """KL(q(z|x) || p(z)) per image (B,) where it has a closed form, else None."""
        return posterior.kl() if self.kl_is_closed_form(posterior) else None

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None):
        """One pass: (param, posterior, z) with z one reparameterised sample per image."""
        posterior = self.encode(x, y)
        z = posterior.sample()
        return self.decode(z, y), posterior, z

    # ---- images ------------------------------------------------------------------------------
    @torch.inference_mode()
    def sample(self, n: int, y: Optional[torch.Tensor] = None, temperature: float = 1.0,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Decode n draws from the prior (N(0, t²I) for the normal prior) -> expected images (n, C, *S) in [0, 1]."""
        z = self.prior.sample(n, generator=generator, temperature=temperature, device=self.device)
        return self.likelihood.mean(self.decode(z, y))

    @torch.inference_mode()
    def reconstruct(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Decode the posterior mean of x -> expected images (B, C, *S) in [0, 1]."""
        return self.likelihood.mean(self.decode(self.encode(x, y).mean, y))

    @torch.inference_mode()
    def decode_images(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z (B, D) -> expected images (B, C, *S) in [0, 1]."""
        return self.likelihood.mean(self.decode(z, y))
