"""The Probabilistic U-Net (Kohl et al. 2018): p(target x | input image y) as a conditional VAE.

- prior net p(z | y) and posterior net q(z | y, x): diagonal Gaussians over z (D = --latent-dim)
  from `GaussianEncoder`s (models/unet.py); the posterior sees the input and the target stacked;
- a U-Net on y whose last stages see z (`UNet`), giving the likelihood's parameters of p(x | z, y)
  (any registered likelihood: likelihoods.py);
- training maximises the ELBO  E_q[log p(x | z, y)] - β·KL(q(z | y, x) ‖ p(z | y)), the KL in
  closed form between the two diagonal Gaussians (`gaussian_kl`); at test time z ~ p(z | y).

The model offers the VAE's API (models/vae.py) with the input image as the condition `y` where a
conditional VAE takes the label (`conditional` is True): `encode(x, y)` -> q(z | y, x) (which
carries its prior p(z | y): its `kl()` is the KL to it), `decode(z, y)` -> the likelihood's
parameter, `elbo_terms`, `log_terms` and `log_weights` (log p(x | z, y) + log p(z | y) -
log q(z | y, x), so the IWAE bound of `vaelab eval` bounds log p(x | y)), and `translate(y, K)`:
the mean prediction, K samples and the per-pixel standard deviation.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from vaelab.config import ModelConfig
from vaelab.errors import ConfigError
from vaelab.likelihoods import Bernoulli, Gaussian, build_likelihood
from vaelab.models.posterior import DiagonalGaussian, build_posterior
from vaelab.models.unet import GaussianEncoder, UNet
from vaelab.models.vae import ElboTerms, LogTerms, resolve_hidden

# Likelihoods whose expected image is the sigmoid of the first C raw channels: the U-Net starts
# from its input for them (`UNet.start_from_input`).
SIGMOID_MEAN = (Bernoulli, Gaussian)


def gaussian_kl_per_dim(q: DiagonalGaussian, p: DiagonalGaussian) -> torch.Tensor:
    """KL(q ‖ p) per dimension between diagonal Gaussians, in closed form -> (B, D):
    ½ (log σ_p² − log σ_q² + (σ_q² + (μ_q − μ_p)²) / σ_p² − 1)."""
    return 0.5 * (p.log_var - q.log_var + (q.log_var.exp() + (q.mean - p.mean).square()) * torch.exp(-p.log_var) - 1.0)


class ConditionalPosterior(DiagonalGaussian):
    """q(z | y, x), a diagonal Gaussian that carries the conditional prior p(z | y) it is measured
    against: `kl()` / `kl_per_dim()` are KL(q ‖ p(z | y)) (a VAE posterior's are against N(0, I))."""

    def __init__(self, posterior: DiagonalGaussian, prior: DiagonalGaussian) -> None:
        super().__init__(posterior.mean, posterior.log_var)
        self.prior = prior

    def kl_per_dim(self) -> torch.Tensor:
        return gaussian_kl_per_dim(self, self.prior)

    def kl(self) -> torch.Tensor:
        return self.kl_per_dim().sum(-1)


class Translation(NamedTuple):
    """What `ProbabilisticUNet.translate` returns (images in [0, 1])."""

    mean: torch.Tensor  # (B, C, H, W): the mean over the samples, the prediction
    samples: torch.Tensor  # (K, B, C, H, W): the expected image E[x | z_k, y] for K draws z_k ~ p(z | y)
    std: torch.Tensor  # (B, C, H, W): the per-pixel standard deviation of the prediction


class ProbabilisticUNet(nn.Module):
    """Prior net + posterior net + U-Net + likelihood, built from a `ModelConfig` (task translate)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.image_shape is None:
            raise ConfigError("model config has no image_shape; it is set from the data when training starts")
        if len(cfg.image_shape) != 3:
            raise ConfigError("the Probabilistic U-Net translates 2-D images (C, H, W)")
        self.cfg = cfg
        channels = cfg.image_shape[0]
        self.image_shape = tuple(cfg.image_shape)  # the target's (C, H, W); any H, W work
        self.input_shape = (cfg.input_channels or channels, *self.image_shape[1:])  # the input's
        self.latent_dim = cfg.latent_dim
        self.num_classes = 0
        hidden = tuple(resolve_hidden(cfg))
        self.likelihood = build_likelihood(cfg)
        self.posterior_head = build_posterior(cfg)  # splits [mean | log_var]; prior and posterior alike
        stats = self.posterior_head.stats_dim
        c_in = self.input_shape[0]
        self.prior_net = GaussianEncoder(c_in, hidden, cfg.activation, stats)  # p(z | y)
        self.posterior_net = GaussianEncoder(c_in + channels, hidden, cfg.activation, stats)  # q(z | y, x)
        self.unet = UNet(c_in, hidden, cfg.activation, cfg.latent_dim, channels * self.likelihood.param_channels,
                         cfg.inject_stages)
        if isinstance(self.likelihood, SIGMOID_MEAN):  # their first C raw channels are logits of the image
            self.unet.start_from_input(channels)
        # Channels-last (N, H, W, C) feature maps: PyTorch's CPU convolutions (oneDNN) run these small-
        # channel layers 1.5-2x faster than in the default layout (measured for 8-64 channels at 7-28 px).
        self.to(memory_format=torch.channels_last)

    @property
    def conditional(self) -> bool:
        """Always: every method takes the input image as its condition y."""
        return True

    @property
    def device(self) -> torch.device:
        """The device the weights live on."""
        return next(self.parameters()).device

    def _input(self, y: Optional[torch.Tensor], batch: Optional[int] = None) -> torch.Tensor:
        """Check the input image batch y (B, C_in, H, W)."""
        if y is None or not torch.is_tensor(y) or not y.is_floating_point():
            raise ConfigError("this is an image-to-image model: pass the input images y, float (B, C, H, W) in [0, 1]")
        if y.dim() != 4 or y.shape[1] != self.input_shape[0]:
            raise ConfigError(f"input images must be (B, {self.input_shape[0]}, H, W), got {tuple(y.shape)}")
        if batch is not None and y.shape[0] != batch:
            raise ConfigError(f"{y.shape[0]} input images for {batch} targets")
        return y.contiguous(memory_format=torch.channels_last)

    # ---- the model's densities -----------------------------------------------------------------
    def prior_given(self, y: torch.Tensor) -> DiagonalGaussian:
        """p(z | y): input images (B, C_in, H, W) -> a diagonal Gaussian with mean, log_var (B, D)."""
        return self.posterior_head(self.prior_net(self._input(y)))

    def encode(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> ConditionalPosterior:
        """Targets x (B, C, H, W) and inputs y -> q(z | y, x), carrying p(z | y) (see `ConditionalPosterior`)."""
        y = self._input(y, x.shape[0])
        if x.shape[-2:] != y.shape[-2:]:
            raise ConfigError(f"targets {tuple(x.shape)} and inputs {tuple(y.shape)} differ in size")
        both = torch.cat([y, x], dim=1).contiguous(memory_format=torch.channels_last)  # (B, C_in + C, H, W)
        q = self.posterior_head(self.posterior_net(both))
        return ConditionalPosterior(q, self.prior_given(y))

    def decode(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z (B, D) or (K, B, D) and inputs y (B, ...) -> the likelihood's parameter (..., P·C, H, W).

        The U-Net's layers before z enters run once per input image, whatever K is."""
        y = self._input(y, z.shape[-2] if z.dim() > 1 else None)
        return self.likelihood.param(self.unet(y, z))

    def elbo_terms(self, x: torch.Tensor, y: Optional[torch.Tensor], posterior=None, num_samples: Optional[int] = None,
                   generator: Optional[torch.Generator] = None) -> ElboTerms:
        """-E_q[log p(x | z, y)] and KL(q(z | y, x) ‖ p(z | y)) per image, (B,) each; the KL in closed form."""
        if posterior is None:
            posterior = self.encode(x, y)
        z = posterior.sample(num_samples, generator)  # ([K,] B, D): z = σ·N + μ
        kl_per_dim = posterior.kl_per_dim()  # (B, D)
        recon = -self.likelihood.log_prob(x, self.decode(z, y))  # ([K,] B)
        if num_samples is not None:
            recon = recon.mean(0)
        return ElboTerms(recon, kl_per_dim.sum(-1), kl_per_dim)

    def log_terms(self, x: torch.Tensor, y: Optional[torch.Tensor], num_samples: int, posterior=None,
                  generator: Optional[torch.Generator] = None) -> LogTerms:
        """log p(x | z_k, y), log p(z_k | y) and log q(z_k | y, x) for K draws z_k ~ q, each (K, B)."""
        if posterior is None:
            posterior = self.encode(x, y)
        z, log_q = posterior.rsample_with_log_prob(num_samples, generator)  # (K, B, D), (K, B)
        return LogTerms(self.likelihood.log_prob(x, self.decode(z, y)), posterior.prior.log_prob(z), log_q)

    def log_weights(self, x: torch.Tensor, y: Optional[torch.Tensor], num_samples: int, posterior=None,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """log w_k = log p(x | z_k, y) + log p(z_k | y) - log q(z_k | y, x) -> (K, B)."""
        terms = self.log_terms(x, y, num_samples, posterior, generator)
        return terms.log_px_z + terms.log_pz - terms.log_qz

    def kl_is_closed_form(self, posterior) -> bool:
        """Always: both q(z | y, x) and p(z | y) are diagonal Gaussians."""
        return True

    def closed_form_kl(self, posterior) -> torch.Tensor:
        """KL(q(z | y, x) ‖ p(z | y)) per image (B,)."""
        return posterior.kl()

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None):
        """One training pass: (param, posterior, z) with z one reparameterised draw from q(z | y, x)."""
        posterior = self.encode(x, y)
        z = posterior.sample()
        return self.decode(z, y), posterior, z

    # ---- images --------------------------------------------------------------------------------
    def prior_codes(self, y: torch.Tensor, num_samples: int, generator: Optional[torch.Generator] = None,
                    temperature: float = 1.0) -> torch.Tensor:
        """K draws z_k = μ(y) + t·σ(y)·N from p(z | y) -> (K, B, D); the noise is drawn on the CPU
        from `generator` (the same draws on every device)."""
        prior = self.prior_given(y)
        noise = torch.randn((num_samples, *prior.mean.shape), generator=generator).to(prior.mean)
        return prior.mean + temperature * prior.std * noise

    @torch.inference_mode()
    def translate(self, x: torch.Tensor, num_samples: int = 8, generator: Optional[torch.Generator] = None,
                  temperature: float = 1.0) -> Translation:
        """Input images x (B, C_in, H, W) in [0, 1] -> `Translation(mean, samples, std)`.

        samples (K, B, C, H, W) are the expected images E[target | z_k, x] for K draws z_k ~ p(z | x);
        mean (B, C, H, W) is their average, the Monte Carlo estimate of E[target | x]; std is the
        predictive standard deviation per pixel by the law of total variance: the samples' spread
        (unbiased, K - 1 in the denominator; 0 for K = 1) plus, where the likelihood's own per-pixel
        std is fitted to the data (`likelihood.fitted_std`), its variance averaged over the samples.
        """
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
        z = self.prior_codes(x, num_samples, generator, temperature)  # (K, B, D)
        param = self.decode(z, x)  # (K, B, P·C, H, W)
        samples = self.likelihood.mean(param).clamp(0.0, 1.0)  # (K, B, C, H, W)
        mean = samples.mean(0)
        variance = samples.var(0, unbiased=True) if num_samples > 1 else torch.zeros_like(mean)
        if self.likelihood.fitted_std:
            pixel_std = self.likelihood.pixel_std(param)
            if pixel_std is not None:
                variance = variance + pixel_std.square().mean(0)
        return Translation(mean, samples, variance.sqrt())

    @torch.inference_mode()
    def sample(self, n: int, y: Optional[torch.Tensor] = None, temperature: float = 1.0,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n samples per input image y (B, ...) -> expected images (n, B, C, H, W) in [0, 1]."""
        return self.translate(self._input(y), n, generator, temperature).samples

    @torch.inference_mode()
    def reconstruct(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Decode the posterior mean of q(z | y, x) (the target seen) -> expected images (B, C, H, W)."""
        return self.likelihood.mean(self.decode(self.encode(x, y).mean, y))

    @torch.inference_mode()
    def decode_images(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z (B, D) and inputs y (B, ...) -> expected images (B, C, H, W) in [0, 1]."""
        return self.likelihood.mean(self.decode(z, y))
