"""The inverse autoregressive flow posterior `--posterior iaf` (Kingma et al. 2016).

The encoder outputs [mu_0 | log sigma_0^2 | h] (B, 2D + H): a diagonal Gaussian and a context
vector h. A draw starts as z_0 = sigma_0 * eps + mu_0 (eps ~ N(0, I), through `draw_noise`) and
goes through T steps (`--flow-steps`), each an autoregressive network (a MADE, Germain et al.
2015, with h as an extra unmasked input) giving [m_t, s_t] = AR_t(z_{t-1}, h), then the
numerically stable update of the paper (its Algorithm 1):

    sigma_t = sigmoid(s_t),   z_t = sigma_t * z_{t-1} + (1 - sigma_t) * m_t.

Output d of AR_t depends on inputs before d in the step's ordering only, so dz_t/dz_{t-1} is
triangular with diagonal sigma_t and log |det| = sum_d log sigma_t,d. The ordering is reversed
from one step to the next (the paper reverses z between steps), so every dimension can depend on
every other after two steps. The density of the final draw is

    log q(z_T | x) = log N(z_0; mu_0, sigma_0^2) - sum_t sum_d log sigma_t,d,

known exactly for the points the flow drew (its inverse at an arbitrary z would take D
sequential passes; nothing here needs it). The s output's bias starts at +1 (sigma ~ 0.73), so
each step starts close to a scaled identity, as the paper recommends ("s sufficiently positive").

Each MADE has two masked hidden layers of width H (`--flow-hidden`, default max(4·D, 64)) with
ELU activations; H is also the width of h. `mean`, the code the latent tools use, is the flow's
image of the base mean (the draw at zero noise); `base_mean` and `log_var` are the base Gaussian's.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.models.posterior import LOG_VAR_MAX, LOG_VAR_MIN

S_BIAS_INIT = 1.0  # sigma = sigmoid(1) = 0.73 at the start


def default_flow_hidden(latent_dim: int) -> int:
    """The MADE width and context size used when `--flow-hidden` is 0."""
    return max(4 * latent_dim, 64)


def made_masks(order: torch.Tensor, hidden: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MADE masks for inputs with degrees `order` (D,) (a permutation of 1..D) and two hidden layers.

    Hidden unit k gets degree m_k = 1 + k mod (D - 1) (0 when D = 1: it then sees only the
    context); a hidden unit sees inputs of degree <= its own, the outputs of degree d see hidden
    units of degree < d. Returns (input -> hidden (H, D), hidden -> hidden (H, H), hidden -> out (D, H)).
    """
    d = order.numel()
    degrees = torch.arange(hidden) % max(d - 1, 1) + 1 if d > 1 else torch.zeros(hidden, dtype=torch.long)
    to_hidden = (degrees[:, None] >= order[None, :]).float()
    hidden_hidden = (degrees[:, None] >= degrees[None, :]).float()
    to_out = (order[:, None] > degrees[None, :]).float()
    return to_hidden, hidden_hidden, to_out


class MaskedLinear(nn.Linear):
    """A dense layer whose weight is multiplied by a fixed 0/1 mask (out, in)."""

    def __init__(self, n_in: int, n_out: int, mask: torch.Tensor) -> None:
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask, persistent=False)  # rebuilt from the config, not saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class IAFStep(nn.Module):
    """One autoregressive network: (z (..., D), h (..., H)) -> (m, s), each (..., D)."""

    def __init__(self, latent_dim: int, hidden: int, reverse: bool) -> None:
        super().__init__()
        order = torch.arange(1, latent_dim + 1)
        order = order.flip(0) if reverse else order
        to_hidden, hidden_hidden, to_out = made_masks(order, hidden)
        self.inp = MaskedLinear(latent_dim, hidden, to_hidden)
        self.context = nn.Linear(hidden, hidden, bias=False)  # h enters unmasked
        self.hidden = MaskedLinear(hidden, hidden, hidden_hidden)
        self.out = MaskedLinear(hidden, 2 * latent_dim, torch.cat([to_out, to_out]))  # [m | s]
        with torch.no_grad():
            self.out.bias[latent_dim:] = S_BIAS_INIT

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = F.elu(self.inp(z) + self.context(h))  # (..., H)
        a = F.elu(self.hidden(a))
        m, s = self.out(a).chunk(2, dim=-1)
        return m, s

    def transform(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_{t-1} (..., D) -> (z_t (..., D), log |det dz_t/dz_{t-1}| (...))."""
        m, s = self(z, h)
        log_sigma = F.logsigmoid(s)
        sigma = torch.exp(log_sigma)
        return sigma * z + (1.0 - sigma) * m, log_sigma.sum(-1)


class IAFHead(nn.Module):
    """Encoder output (B, 2D + H) = [mu_0 | log sigma_0^2 | h] -> `IAFPosterior`."""

    def __init__(self, latent_dim: int, steps: int, hidden: int = 0) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.context_dim = hidden or default_flow_hidden(latent_dim)
        self.stats_dim = 2 * latent_dim + self.context_dim
        self.steps = nn.ModuleList(IAFStep(latent_dim, self.context_dim, reverse=t % 2 == 1) for t in range(steps))

    def flow(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_0 (..., D), context h (B, H) broadcast over leading dims -> (z_T, sum of log-determinants (...))."""
        log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for step in self.steps:
            z, step_log_det = step.transform(z, h)
            log_det = log_det + step_log_det
        return z, log_det

    def forward(self, stats: torch.Tensor) -> IAFPosterior:
        d = self.latent_dim
        return IAFPosterior(stats[:, :d], stats[:, d : 2 * d], stats[:, 2 * d :], self)


class IAFPosterior:
    """q(z|x): a diagonal Gaussian (`base_mean`, `log_var` (B, D)) pushed through the head's IAF steps."""

    closed_form_kl = False

    def __init__(self, mean: torch.Tensor, log_var: torch.Tensor, context: torch.Tensor, head: IAFHead) -> None:
        self.base_mean = mean
        self.log_var = log_var.clamp(LOG_VAR_MIN, LOG_VAR_MAX)
        self.context = context  # (B, H)
        self.head = head
        self._mean: Optional[torch.Tensor] = None

    @property
    def std(self) -> torch.Tensor:
        """The base Gaussian's sigma_0, (B, D)."""
        return torch.exp(0.5 * self.log_var)

    @property
    def mean(self) -> torch.Tensor:
        """The code of x: the flow's image of the base mean (the draw at zero noise), (B, D)."""
        if self._mean is None:
            self._mean = self.head.flow(self.base_mean, self.context)[0]
        return self._mean

    def draw_noise(self, shape: tuple[int, ...], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """N(0, I) noise of `shape` ([K,] B, D) on the posterior's device."""
        return torch.randn(shape, generator=generator, device=self.base_mean.device, dtype=self.base_mean.dtype)

    def rsample_with_log_prob(self, num_samples: Optional[int] = None,
                              generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_T, log q(z_T|x)): z_T (B, D) or (K, B, D); log q summed over D, (B,) or (K, B)."""
        shape = tuple(self.base_mean.shape) if num_samples is None else (num_samples, *self.base_mean.shape)
        eps = self.draw_noise(shape, generator)
        z0 = self.std * eps + self.base_mean  # the reparameterised base draw
        log_q0 = -0.5 * (eps.square() + self.log_var + math.log(2 * math.pi)).sum(-1)
        z, log_det = self.head.flow(z0, self.context)
        return z, log_q0 - log_det

    def sample(self, num_samples: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Reparameterised draw(s) z_T: (B, D), or (K, B, D) when `num_samples`=K is given."""
        return self.rsample_with_log_prob(num_samples, generator)[0]
