"""Priors p(z): `PRIORS` maps `--prior` to a module with `log_prob` and `sample`.

- normal: p(z) = N(0, I), the prior of Kingma & Welling 2013.
- mog: a learned mixture of K diagonal Gaussians, p(z) = sum_k pi_k N(z; m_k, diag(s_k^2)), with
  learned weights pi = softmax(w), means m_k and log-variances log s_k^2 (K = `--prior-components`).
  Means start at N(0, I) draws, variances at 1, weights uniform.
- vamp: the VampPrior (Tomczak & Welling 2018), p(z) = (1/K) sum_k q(z | u_k): a uniform mixture
  of the model's own posteriors at K learned pseudo-inputs u_k, encoded by the VAE's encoder.
  As in the paper, the pseudo-inputs are the output of a linear layer without bias on the K
  one-hot vectors followed by hardtanh(0, 1), i.e. u_k = clamp(W[k], 0, 1) with W (K, C, *S)
  initialised from N(0.05, 0.01²) (the paper's code: mean 0.05, std 0.01), so every u_k is a
  valid image in [0, 1]. With `--posterior iaf` the mixture uses the pseudo-inputs' base diagonal
  Gaussians (the flow's density at an arbitrary z needs its inverse, D sequential passes); it is
  still a normalised density, so every bound stays a bound.

Every prior is an `nn.Module` of the VAE (its parameters, if any, are saved with the weights),
built by `factory(cfg, vae)`. `log_prob(z)` takes z (..., D) and returns (...); `sample(n)`
returns (n, D). A prior whose KL from a diagonal Gaussian has a closed form says so with
`standard_normal = True`; the VAE then uses the closed form, otherwise a Monte Carlo estimate.
`marginals()` gives each dimension's marginal mean and standard deviation (the latent tools scale
traversals and grids by them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from vaelab.config import ModelConfig

LOG_2PI = math.log(2 * math.pi)
# The paper's pseudo-input initialisation: N(0.05, 0.01^2) per pixel (Tomczak & Welling 2018, code).
PSEUDO_INPUT_MEAN, PSEUDO_INPUT_STD = 0.05, 0.01


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dim."""
    return -0.5 * (z.square() + LOG_2PI).sum(-1)


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

    def marginals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each dimension's marginal mean and standard deviation under p(z), both (D,), on the CPU.

        The default estimates them from 20 000 seeded draws; priors with closed forms override it.
        """
        z = self.sample(20_000, generator=torch.Generator().manual_seed(0)).double().cpu()
        return z.mean(0).float(), z.std(0).float()


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

    def marginals(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(self.latent_dim), torch.ones(self.latent_dim)


def diagonal_mixture_log_prob(z: torch.Tensor, log_weights: torch.Tensor, means: torch.Tensor,
                              log_vars: torch.Tensor) -> torch.Tensor:
    """log sum_k w_k N(z; m_k, diag(exp(lv_k))) for z (..., D), log w (K,), m and lv (K, D) -> (...).

    Each component's log-density is expanded into matmuls so no (..., K, D) tensor is built:
    sum_d (z_d - m_kd)^2 / v_kd = z^2 @ (1/v_k) - 2 z @ (m_k / v_k) + sum_d m_kd^2 / v_kd.
    The expansion cancels large terms, so it runs in float32 at least, also under bf16 autocast.
    """
    dtype = torch.promote_types(z.dtype, torch.float32)
    with torch.autocast(device_type=z.device.type, enabled=False):
        return _mixture_log_prob(z.to(dtype), log_weights.to(dtype), means.to(dtype), log_vars.to(dtype))


def _mixture_log_prob(z: torch.Tensor, log_weights: torch.Tensor, means: torch.Tensor,
                      log_vars: torch.Tensor) -> torch.Tensor:
    inv_var = torch.exp(-log_vars)  # (K, D)
    # log w_k + log N(z; m_k, v_k) = [z^2 | z] @ [-v_k^-1 / 2 | m_k / v_k]^T + bias_k: one matmul.
    bias = log_weights - 0.5 * ((means.square() * inv_var + log_vars).sum(-1) + means.shape[-1] * LOG_2PI)  # (K,)
    weight = torch.cat([-0.5 * inv_var, means * inv_var], dim=1).T  # (2D, K)
    flat = z.reshape(-1, z.shape[-1])  # (N, D)
    log_joint = torch.addmm(bias, torch.cat([flat.square(), flat], dim=1), weight)  # (N, K)
    # log-sum-exp by hand: exp() of x in (-103, -87) returns a subnormal number, and on x86 CPUs
    # that is the slow path (10-20x, even with flush-to-zero); most of K components are that far
    # from z. Clamping x - max at -80 first keeps exp() fast and changes the sum (>= 1) by at
    # most K * e^-80 (< 1e-31 for K = 10^4).
    top = log_joint.max(dim=-1, keepdim=True).values.detach()  # (N, 1)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.exp((log_joint - top).clamp_min(-80.0)).sum(-1)  # (N,)
    return (top[:, 0] + torch.log(total)).reshape(z.shape[:-1])


class DiagonalMixturePrior(Prior):
    """A mixture of diagonal Gaussians; subclasses say where the components come from."""

    def components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log weights (K,), means (K, D), log-variances (K, D))."""
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return diagonal_mixture_log_prob(z, *self.components())

    def sample(self, n: int, generator: Optional[torch.Generator] = None, temperature: float = 1.0,
               device: Optional[torch.device] = None) -> torch.Tensor:
        """A component k ~ Categorical(w), then z = m_k + t * s_k * N: noise drawn on the CPU."""
        log_w, means, log_vars = self.components()
        k = torch.multinomial(log_w.detach().exp().float().cpu(), n, replacement=True, generator=generator)  # (n,)
        noise = torch.randn(n, self.latent_dim, generator=generator)  # (n, D)
        k, noise = k.to(means.device), noise.to(means.device, means.dtype)
        z = means[k] + temperature * torch.exp(0.5 * log_vars[k]) * noise
        return z.to(device) if device is not None else z

    @torch.no_grad()
    def marginals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixture's exact per-dimension moments: mean = sum_k w_k m_k, and by the law of total
        variance var = sum_k w_k (s_k^2 + m_k^2) - mean^2."""
        log_w, means, log_vars = (t.double().cpu() for t in self.components())
        w = log_w.exp()[:, None]  # (K, 1)
        mean = (w * means).sum(0)
        var = (w * (log_vars.exp() + means.square())).sum(0) - mean.square()
        return mean.float(), var.clamp_min(0).sqrt().float()


class MixtureOfGaussians(DiagonalMixturePrior):
    """The learned mixture `mog`: K diagonal Gaussians with learned weights, means and variances."""

    def __init__(self, latent_dim: int, num_components: int) -> None:
        super().__init__(latent_dim)
        self.logits = nn.Parameter(torch.zeros(num_components))  # (K,) uniform weights at the start
        self.means = nn.Parameter(torch.randn(num_components, latent_dim))  # (K, D) from N(0, I)
        self.log_vars = nn.Parameter(torch.zeros(num_components, latent_dim))  # (K, D) unit variances

    def components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from vaelab.models.posterior import LOG_VAR_MAX, LOG_VAR_MIN

        return F.log_softmax(self.logits, 0), self.means, self.log_vars.clamp(LOG_VAR_MIN, LOG_VAR_MAX)


class VampPrior(DiagonalMixturePrior):
    """p(z) = (1/K) sum_k q(z | u_k) with learned pseudo-inputs u_k (Tomczak & Welling 2018).

    `encode` is the model's encoder-to-posterior function (x (K, C, *S) -> a posterior with `mean`
    and `log_var` (K, D)); it is held as a plain callable, not a sub-module, so the encoder's
    weights are not registered twice.
    """

    def __init__(self, latent_dim: int, num_components: int, image_shape: tuple[int, ...],
                 encode: Callable[[torch.Tensor], object]) -> None:
        super().__init__(latent_dim)
        # The paper's linear layer on one-hot inputs is its weight matrix: one row per pseudo-input.
        self.pseudo_weight = nn.Parameter(
            torch.randn(num_components, *image_shape) * PSEUDO_INPUT_STD + PSEUDO_INPUT_MEAN)  # (K, C, *S)
        self._encode = encode
        self._cache: Optional[tuple] = None  # (weights key, components) when computed without gradients

    def pseudo_inputs(self) -> torch.Tensor:
        """u = hardtanh(W, 0, 1): the K pseudo-inputs as images in [0, 1], (K, C, *S)."""
        return F.hardtanh(self.pseudo_weight, 0.0, 1.0)

    def components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Without gradients (evaluation, sampling) the K encoded pseudo-inputs are kept until a
        # weight changes: L_5000 over a test set asks for them once per chunk of draws.
        key = None if torch.is_grad_enabled() else self._weights_key()
        if key is not None and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        q = self._encode(self.pseudo_inputs())
        mean, log_var = getattr(q, "base_mean", q.mean), q.log_var  # (K, D) each
        k = mean.shape[0]
        log_w = torch.full((k,), -math.log(k), dtype=mean.dtype, device=mean.device)  # uniform
        self._cache = None if key is None else (key, (log_w, mean, log_var))
        return log_w, mean, log_var

    def _weights_key(self) -> tuple:
        """Identity, version, device and dtype of every weight the components depend on."""
        owner = getattr(self._encode, "__self__", None)
        tensors = list(owner.parameters()) if isinstance(owner, nn.Module) else list(self.parameters())
        return tuple((id(t), t._version, t.device, t.dtype) for t in tensors)


def _vamp(cfg: ModelConfig, vae: nn.Module) -> VampPrior:
    image_shape = tuple(cfg.image_shape or ())
    return VampPrior(cfg.latent_dim, cfg.prior_components, image_shape, vae.encode)


# name -> factory(model config, the VAE being built) -> Prior. The VAE is passed for priors that
# depend on its networks (a VampPrior encodes learned pseudo-inputs with the VAE's encoder).
PRIORS: dict[str, Callable[[ModelConfig, nn.Module], Prior]] = {
    "normal": lambda cfg, vae: StandardNormal(cfg.latent_dim),
    "mog": lambda cfg, vae: MixtureOfGaussians(cfg.latent_dim, cfg.prior_components),
    "vamp": _vamp,
}


def build_prior(cfg: ModelConfig, vae: nn.Module) -> Prior:
    """The registered prior `cfg.prior` (see `PRIORS`)."""
    return PRIORS[cfg.prior](cfg, vae)
