"""The hierarchical VAE (`--latent-layers L`, L >= 2) with the top-down inference of the Ladder VAE.

Generative model (bottom layer z_1 next to the pixels, top layer z_L):

    p(x, z) = p(x | z_1) p(z_{L-1} | z_L) ... p(z_1 | z_2) p(z_L),

with p(z_L) any registered prior (normal, mog, vamp: `--prior`), each p(z_l | z_{l+1}) a
diagonal Gaussian from a deterministic MLP ("down" network), and p(x | z_1) the `--arch`
decoder and `--likelihood`.

Inference (Sønderby et al. 2016, "Ladder Variational Autoencoders", Sec. 2.2): a deterministic
bottom-up pass d_1 = act(enc(x)), d_{l+1} = up_l(d_l) gives each layer a Gaussian "likelihood
term" N(mu_hat_l, sigma_hat_l^2) = head_l(d_l); then a top-down pass samples
z_L ~ N(mu_hat_L, sigma_hat_L^2) and, for l = L-1 .. 1, combines the bottom-up term with the
generative conditional N(mu_p, sigma_p^2) = down_l(z_{l+1}) by precision weighting (their eqs. 17-18):

    sigma_q^2 = 1 / (sigma_hat^-2 + sigma_p^-2),   mu_q = (mu_hat sigma_hat^-2 + mu_p sigma_p^-2) sigma_q^2,

and draws z_l = mu_q + sigma_q * eps_l. The top-down networks are shared by the generative
model and the posterior, as in the paper. All noise of a draw comes from one `draw_noise` call.

A code is the concatenation [z_1 | z_2 | ... | z_L] (..., D) with D = sum of `layer_sizes`, so
everything that handles a VAE's codes handles these. Densities for the ELBO and the IWAE bound
(Burda et al. 2015) over all layers:

    log q(z|x) = sum_l log N(z_l; mu_q,l, sigma_q,l^2),   log p(z) = log p(z_L) + sum_{l<L} log p(z_l | z_{l+1}).

`elbo_terms` uses the KL of each layer in closed form given the sampled layer above,
KL(q(z_l | z_{l+1}, x) || p(z_l | z_{l+1})) (the top layer against N(0, I) in closed form, or by
Monte Carlo for a mixture prior); their sum is an unbiased estimate of KL(q(z|x) || p(z)), and
`kl_per_layer` reports each (logged as train_kl_layer<l> per epoch).
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import NamedTuple, Optional

import torch
from torch import nn

from vaelab.config import ModelConfig
from vaelab.errors import ConfigError
from vaelab.models import ARCHITECTURES
from vaelab.models.blocks import ACTIVATIONS
from vaelab.models.posterior import LOG_VAR_MAX, LOG_VAR_MIN, DiagonalGaussian
from vaelab.models.priors import Prior, build_prior
from vaelab.models.spec import NetSpec
from vaelab.models.vae import VAE, ElboTerms, LogTerms, gaussian_kl, resolve_hidden

LOG_2PI = math.log(2 * math.pi)


def _mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Dense layers between consecutive sizes, each followed by the activation."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


def _gaussian(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 2D) -> mean, clamped log-variance, each (..., D)."""
    mean, log_var = stats.chunk(2, dim=-1)
    return mean, log_var.clamp(LOG_VAR_MIN, LOG_VAR_MAX)


def _log_normal(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, exp(log_var)) summed over the last dim."""
    return -0.5 * ((z - mean).square() * torch.exp(-log_var) + log_var + LOG_2PI).sum(-1)


def precision_weighted(mean_hat: torch.Tensor, log_var_hat: torch.Tensor, mean_p: torch.Tensor,
                       log_var_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Ladder VAE's combination of a bottom-up term and the top-down prior (eqs. 17-18).

    Written with log-variances: log sigma_q^2 = -logaddexp(-lv_hat, -lv_p), and the mean weights
    sigma_q^2 / sigma_hat^2 = sigmoid(lv_p - lv_hat), sigma_q^2 / sigma_p^2 = sigmoid(lv_hat - lv_p).
    """
    log_var = -torch.logaddexp(-log_var_hat, -log_var_p)
    mean = mean_hat * torch.sigmoid(log_var_p - log_var_hat) + mean_p * torch.sigmoid(log_var_hat - log_var_p)
    return mean, log_var


class TopDownPass(NamedTuple):
    """One top-down pass, per layer (bottom first): draws z_l, posterior q_l and conditional prior p_l."""

    z: list[torch.Tensor]  # ([K,] B, D_l)
    eps: list[Optional[torch.Tensor]]  # the noise of each draw (None in the zero-noise pass)
    q_mean: list[torch.Tensor]
    q_log_var: list[torch.Tensor]
    p_mean: list[Optional[torch.Tensor]]  # p(z_l | z_{l+1}); None for the top layer (the prior module's)
    p_log_var: list[Optional[torch.Tensor]]


class HierarchicalPrior(Prior):
    """p(z) = p(z_L) prod_l p(z_l | z_{l+1}) over concatenated codes [z_1 | ... | z_L] (..., D)."""

    def __init__(self, layer_sizes: tuple[int, ...], top: Prior, down: nn.ModuleList) -> None:
        super().__init__(sum(layer_sizes))
        self.layer_sizes = tuple(layer_sizes)
        self.top = top  # p(z_L)
        self.down = down  # down[l]: z_{l+1} (..., D_{l+1}) -> stats of p(z_l | z_{l+1}) (..., 2 D_l)

    def split(self, z: torch.Tensor) -> list[torch.Tensor]:
        """(..., D) -> [z_1, ..., z_L]."""
        return list(z.split(self.layer_sizes, dim=-1))

    def conditional(self, layer: int, z_above: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(z_layer | z_{layer+1}) (0-based layer < L-1), each (..., D_layer)."""
        return _gaussian(self.down[layer](z_above))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        layers = self.split(z)
        total = self.top.log_prob(layers[-1])
        for layer in range(len(layers) - 1):
            total = total + _log_normal(layers[layer], *self.conditional(layer, layers[layer + 1]))
        return total

    def sample(self, n: int, generator: Optional[torch.Generator] = None, temperature: float = 1.0,
               device: Optional[torch.device] = None) -> torch.Tensor:
        """Ancestral draws: z_L from the top prior, then z_l = mu_p + t * sigma_p * N down to z_1 (n, D)."""
        top = self.top.sample(n, generator=generator, temperature=temperature, device=device)
        layers = [None] * (len(self.layer_sizes) - 1) + [top]
        return self._down_from(layers, len(self.layer_sizes) - 1, temperature, generator)

    def fill_below(self, z: torch.Tensor, layer: int, temperature: float = 0.0,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Keep layers >= `layer` of z (N, D); regenerate the ones below from p(z_l | z_{l+1})
        (their means at temperature 0, else draws with the std scaled by the temperature)."""
        layers: list[Optional[torch.Tensor]] = list(self.split(z))
        return self._down_from(layers, layer, temperature, generator)

    def _down_from(self, layers: list, layer: int, temperature: float,
                   generator: Optional[torch.Generator]) -> torch.Tensor:
        for below in range(layer - 1, -1, -1):
            mean, log_var = self.conditional(below, layers[below + 1])
            if temperature > 0:
                # Noise drawn on the CPU from a CPU generator (the same numbers on every device).
                noise = torch.randn(mean.shape, generator=generator).to(mean.device, mean.dtype)
                mean = mean + temperature * torch.exp(0.5 * log_var) * noise
            layers[below] = mean
        return torch.cat(layers, dim=-1)


class LadderPosterior:
    """q(z|x) of the hierarchical VAE: bottom-up terms (per layer (B, D_l)), sampled top-down."""

    closed_form_kl = False

    def __init__(self, up_mean: list[torch.Tensor], up_log_var: list[torch.Tensor], prior: HierarchicalPrior) -> None:
        self.up_mean, self.up_log_var = up_mean, up_log_var
        self.prior = prior
        self._centre: Optional[TopDownPass] = None

    # ---- the top-down pass --------------------------------------------------------------------
    def draw_noise(self, shape: tuple[int, ...], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """N(0, I) noise of `shape` ([K,] B, D) on the posterior's device."""
        like = self.up_mean[0]
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)

    def top_down(self, num_samples: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 noise: bool = True) -> TopDownPass:
        """A reparameterised top-down pass ([K,] B, D_l per layer); noise=False: the zero-noise pass
        (every layer at its posterior mean given the means above; no `num_samples` then)."""
        sizes = self.prior.layer_sizes
        batch = self.up_mean[0].shape[0]
        lead = () if num_samples is None else (num_samples,)
        eps_all = self.draw_noise((*lead, batch, sum(sizes)), generator).split(sizes, -1) if noise else None
        n = len(sizes)
        z: list = [None] * n
        eps: list = [None] * n
        q_mean: list = [None] * n
        q_log_var: list = [None] * n
        p_mean: list = [None] * n
        p_log_var: list = [None] * n
        for layer in range(n - 1, -1, -1):
            if layer == n - 1:  # the top: the bottom-up term alone
                mean, log_var = self.up_mean[layer], self.up_log_var[layer]
            else:
                p_mean[layer], p_log_var[layer] = self.prior.conditional(layer, z[layer + 1])
                mean, log_var = precision_weighted(self.up_mean[layer], self.up_log_var[layer],
                                                   p_mean[layer], p_log_var[layer])
            q_mean[layer], q_log_var[layer] = mean, log_var
            if eps_all is None:
                z[layer] = mean
            else:
                eps[layer] = eps_all[layer]
                z[layer] = torch.exp(0.5 * log_var) * eps[layer] + mean  # z = sigma * N + mu
        return TopDownPass(z, eps, q_mean, q_log_var, p_mean, p_log_var)

    @property
    def centre(self) -> TopDownPass:
        """The zero-noise top-down pass (every layer at its posterior mean given the means above)."""
        if self._centre is None:
            self._centre = self.top_down(noise=False)
        return self._centre

    # ---- the posterior API ----------------------------------------------------------------------
    @property
    def mean(self) -> torch.Tensor:
        """The code of x: the zero-noise pass [z_1 | ... | z_L], (B, D)."""
        return torch.cat(self.centre.z, dim=-1)

    @property
    def log_var(self) -> torch.Tensor:
        """log sigma_q^2 of every layer along the zero-noise pass, (B, D)."""
        return torch.cat(self.centre.q_log_var, dim=-1)

    def sample(self, num_samples: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Reparameterised draw(s): (B, D), or (K, B, D) when `num_samples`=K is given."""
        return torch.cat(self.top_down(num_samples, generator).z, dim=-1)

    def rsample_with_log_prob(self, num_samples: Optional[int] = None,
                              generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, log q(z|x)): z as `sample`, log q summed over every layer, (B,) or (K, B)."""
        draw = self.top_down(num_samples, generator)
        return torch.cat(draw.z, dim=-1), pass_log_q(draw)

    def layer_kl_per_dim(self, draw: TopDownPass, layer: int) -> torch.Tensor:
        """KL(q(z_l | z_{l+1}, x) || p(z_l | z_{l+1})) per dimension given the pass's z_{l+1}, ([K,] B, D_l)."""
        return gaussian_kl(draw.q_mean[layer], draw.q_log_var[layer], draw.p_mean[layer], draw.p_log_var[layer])


def pass_log_q(draw: TopDownPass) -> torch.Tensor:
    """log q(z|x) of a sampled pass: sum over layers of log N(z_l; mu_q, sigma_q^2), from the noise."""
    return sum(-0.5 * (e.square() + lv + LOG_2PI).sum(-1) for e, lv in zip(draw.eps, draw.q_log_var))


class HierarchicalVAE(VAE):
    """The hierarchical VAE: the VAE's API over concatenated codes of L stochastic layers.

    It shares the VAE's image-level methods (`sample`, `reconstruct`, `decode_images`, `forward`,
    `log_weights`, label handling) and brings its own networks, posterior and densities.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        nn.Module.__init__(self)  # the VAE's networks are not built: this family has its own
        self._init_common(cfg)
        sizes = tuple(cfg.layer_sizes())
        if len(sizes) < 2:
            raise ConfigError("the hierarchical VAE needs --latent-layers 2 or more")
        self._layer_sizes = sizes
        self.latent_dim = sum(sizes)
        ladder = list(cfg.ladder_hidden)
        width = ladder[-1]  # width of every bottom-up feature d_l
        arch = ARCHITECTURES[cfg.arch]
        spec = NetSpec(image_shape=self.image_shape, hidden=tuple(resolve_hidden(cfg)), latent_dim=sizes[0],
                       cond_dim=self.num_classes, activation=cfg.activation, encoder_out=width,
                       decoder_channels=self.image_shape[0] * self.likelihood.param_channels, config=cfg)
        self.encoder = arch.encoder(spec)  # x -> (B, W); d_1 = act(.)
        self.encoder_act = ACTIVATIONS[cfg.activation]()
        self.decoder = arch.decoder(spec)  # z_1 -> the likelihood's raw output
        # Bottom-up: d_{l+1} = up[l](d_l); q-terms: heads[l](d_l) -> [mu_hat | log sigma_hat^2] of z_l.
        self.up = nn.ModuleList(_mlp([width, *ladder], cfg.activation) for _ in sizes[1:])
        self.heads = nn.ModuleList(nn.Linear(width, 2 * d) for d in sizes)
        # Top-down: down[l]: z_{l+1} -> [mu_p | log sigma_p^2] of z_l.
        down = nn.ModuleList(
            nn.Sequential(_mlp([sizes[layer + 1], *reversed(ladder)], cfg.activation), nn.Linear(ladder[0], 2 * d))
            for layer, d in enumerate(sizes[:-1]))
        top_cfg = dataclasses.replace(cfg, latent_dim=sizes[-1], latent_layers=1, layer_dims=[])
        # Last: a VampPrior on the top layer encodes its pseudo-inputs with the bottom-up pass.
        top = build_prior(top_cfg, SimpleNamespace(encode=self.encode_top))
        self.prior = HierarchicalPrior(sizes, top, down)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return self._layer_sizes

    # ---- the densities ----------------------------------------------------------------------------
    def _bottom_up(self, x: torch.Tensor,
                   cond: Optional[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The bottom-up terms (mu_hat_l, log sigma_hat_l^2) of every layer, each (B, D_l)."""
        d = self.encoder_act(self.encoder(x, cond))  # (B, W)
        means, log_vars = [], []
        for layer in range(len(self._layer_sizes)):
            if layer > 0:
                d = self.up[layer - 1](d)
            mean, log_var = _gaussian(self.heads[layer](d))
            means.append(mean)
            log_vars.append(log_var)
        return means, log_vars

    def encode(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> LadderPosterior:
        """x float (B, C, *S) in [0, 1] -> q(z|x) over concatenated codes; `.mean`, `.log_var` (B, D)."""
        return self.encode_with_condition(x, self._cond(y, x.shape[0]))

    def encode_with_condition(self, x: torch.Tensor, cond: Optional[torch.Tensor]) -> LadderPosterior:
        """`encode` with the one-hot label (B, num_classes) already made (or None): what export traces."""
        means, log_vars = self._bottom_up(x, cond)
        return LadderPosterior(means, log_vars, self.prior)

    def encode_top(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> DiagonalGaussian:
        """q(z_L | x), the top layer's posterior (the bottom-up term alone): what a VampPrior mixes."""
        means, log_vars = self._bottom_up(x, self._cond(y, x.shape[0]))
        return DiagonalGaussian(means[-1], log_vars[-1])

    def decode(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Codes (B, D) or (K, B, D) -> the likelihood's parameter; p(x | z) depends on z_1 only."""
        return super().decode(z[..., : self._layer_sizes[0]], y)

    def kl_is_closed_form(self, posterior) -> bool:
        """The total KL has no closed form here (each layer's does, given the layer above)."""
        return False

    def closed_form_kl(self, posterior) -> Optional[torch.Tensor]:
        """None: the IWAE objective then reports the Monte Carlo KL of its draws."""
        return None

    def _layer_kls(self, posterior: LadderPosterior, draw: TopDownPass) -> tuple[list[torch.Tensor], bool]:
        """Each layer's KL ([K,] B) given the pass, and whether all are per-dimension closed forms
        (then the list holds ([K,] B, D_l) per-dimension KLs)."""
        top = len(self._layer_sizes) - 1
        per_dim = [posterior.layer_kl_per_dim(draw, layer) for layer in range(top)]
        if self.prior.top.standard_normal:
            mean, log_var = draw.q_mean[top], draw.q_log_var[top]
            kl_top = 0.5 * (mean.square() + torch.exp(log_var) - 1.0 - log_var)  # against N(0, I), (B, D_L)
            if kl_top.dim() < per_dim[0].dim():  # the top layer's KL needs no draw: broadcast over K
                kl_top = kl_top.expand_as(draw.z[top])
            return [*per_dim, kl_top], True
        log_q_top = -0.5 * (draw.eps[top].square() + draw.q_log_var[top] + LOG_2PI).sum(-1)
        kl_top = log_q_top - self.prior.top.log_prob(draw.z[top])  # Monte Carlo, ([K,] B)
        return [kl.sum(-1) for kl in per_dim] + [kl_top], False

    def elbo_terms(self, x: torch.Tensor, y: Optional[torch.Tensor], posterior=None, num_samples: Optional[int] = None,
                   generator: Optional[torch.Generator] = None) -> ElboTerms:
        """-E_q[log p(x|z_1)] and KL(q(z|x) || p(z)) per image, (B,) each, with the KL of every layer
        (`kl_per_layer` (B, L)) and, where every layer's is closed-form per dimension, `kl_per_dim` (B, D)."""
        if posterior is None:
            posterior = self.encode(x, y)
        draw = posterior.top_down(num_samples, generator)
        kls, per_dim = self._layer_kls(posterior, draw)
        recon = -self.likelihood.log_prob(x, self.decode(draw.z[0], y))  # ([K,] B)
        kl_per_dim = torch.cat(kls, dim=-1) if per_dim else None  # ([K,] B, D)
        kl_per_layer = torch.stack([kl.sum(-1) if per_dim else kl for kl in kls], dim=-1)  # ([K,] B, L)
        if num_samples is not None:
            recon, kl_per_layer = recon.mean(0), kl_per_layer.mean(0)
            kl_per_dim = None if kl_per_dim is None else kl_per_dim.mean(0)
        return ElboTerms(recon, kl_per_layer.sum(-1), kl_per_dim, kl_per_layer)

    def log_terms(self, x: torch.Tensor, y: Optional[torch.Tensor], num_samples: int, posterior=None,
                  generator: Optional[torch.Generator] = None) -> LogTerms:
        """log p(x|z_1), log p(z) and log q(z|x) over all layers for K draws, each (K, B)."""
        if posterior is None:
            posterior = self.encode(x, y)
        draw = posterior.top_down(num_samples, generator)
        top = len(self._layer_sizes) - 1
        log_pz = self.prior.top.log_prob(draw.z[top])
        for layer in range(top):
            log_pz = log_pz + _log_normal(draw.z[layer], draw.p_mean[layer], draw.p_log_var[layer])
        return LogTerms(self.likelihood.log_prob(x, self.decode(draw.z[0], y)), log_pz, pass_log_q(draw))

    # ---- the latent tools ---------------------------------------------------------------------------
    def fill_lower_layers(self, z: torch.Tensor, layer: int, temperature: float = 0.0,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.prior.fill_below(z, layer, temperature, generator)

    def dimension_kl(self, posterior: LadderPosterior) -> torch.Tensor:
        """Per-dimension KL along the zero-noise pass (B, D): each layer against p(z_l | z_{l+1}) at
        the means above; the top layer against the top prior's marginal moments."""
        draw = posterior.centre
        top = len(self._layer_sizes) - 1
        kls = [posterior.layer_kl_per_dim(draw, layer) for layer in range(top)]
        m, s = (t.to(draw.q_mean[top]) for t in self.prior.top.marginals())
        kls.append(gaussian_kl(draw.q_mean[top], draw.q_log_var[top], m, 2 * torch.log(s.clamp_min(1e-12))))
        return torch.cat(kls, dim=-1)
