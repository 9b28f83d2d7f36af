"""Decoder likelihoods p(x|z): `LIKELIHOODS` maps `--likelihood` to a class.

Each likelihood is an `nn.Module` of the VAE (a learned std, or the sigma-VAE's estimated std,
is saved with the weights). It says how many raw decoder channels it needs per image channel
(`param_channels`), turns the decoder's raw output into its parameter (`param`), scores images
under it (`log_prob`, summed over every pixel/voxel and channel, in nats) and gives the image it
expects (`mean`).

- bernoulli: param = logits; log p = -BCE-with-logits (the benchmark standard for binarised MNIST).
- gaussian: param = mean in (0, 1) (a sigmoid of the raw output). The std depends on
  `gaussian_variance` (`GAUSSIAN_VARIANCES`):
  - fixed: `gaussian_std`. With std = 1/sqrt(2), -log p(x|z) = sum of squared errors + D/2·log(pi):
    the paper's MSE criterion plus a constant.
  - learned: one std per image channel, a parameter trained with the network (started at
    `gaussian_std`).
  - optimal: the sigma-VAE (Rybkin et al. 2021). In training, sigma_c² is set in closed form to
    the batch's mean squared error in channel c (the maximum-likelihood std), so the loss is
    D/2·log MSE + KL up to constants. The squared errors of each training epoch are summed in
    buffers; at the epoch's end (`end_epoch`) sigma_c² becomes their mean: the std estimated over
    the training split, saved with the weights and used in evaluation, so that evaluation scores
    a proper density with a fixed std.
  Every Gaussian is a *density* on [0, 1] pixel values; `vaelab eval` turns it into bits/dim of
  the 8-bit data through the uniform-dequantization bound (see vaelab.evaluate).
- logistic: the discretized logistic of Salimans et al. 2017 (PixelCNN++), one per pixel and
  channel: the 8-bit value k/255 gets the logistic's probability mass over its bin
  [k/255 - 1/510, k/255 + 1/510], the two edge bins open to -inf and +inf, so the 256 values'
  probabilities sum to 1 and log p is an exact discrete log-likelihood. param = [mean | log scale].
- logistic-mixture: a mixture of `mixture_components` such discretized logistics per pixel, with
  PixelCNN++'s linear dependence between colour channels in each component (the mean of G moves
  with the value of R, the mean of B with R and G), so colour images are not modelled as three
  independent channels.

Numerics of the discretized logistic: with u = (x - mu + 1/510)/s and l = (x - mu - 1/510)/s,
the bin's mass is sigmoid(u) - sigmoid(l) = sigmoid(u)·sigmoid(-l)·(1 - exp(l - u)), so
log P = logsigmoid(u) + logsigmoid(-l) + log(-expm1(-(u - l))), with logsigmoid(t) = -softplus(-t).
Every term is finite and exact in float32 however far the value lies in a tail: where
PixelCNN++'s sigmoid difference underflows and it falls back to the density at the bin's centre,
this form needs no fallback. The edge bins are logsigmoid(u) and logsigmoid(-l).

Shapes: an image is (C, *S) with S = (H, W), or (D, H, W) for volumes; `event_dims` = 1 + len(S)
trailing dims are summed. `x` is (B, C, *S); the parameter is (B, P·C, *S) or, for K decodings
per image, (K, B, P·C, *S), with P = `param_channels`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from vaelab.config import ModelConfig

MIN_STD = 1e-3  # floor of a learned or estimated Gaussian std (a quarter of one grey level of 1/255)
BIN = 1.0 / 255.0  # width of one 8-bit value's bin on [0, 1] pixels
# Log-scale range of a discretized logistic: s from 3.4e-4 (a twelfth of a bin: the value's own
# bin gets > 99% of the mass) to e^7 (flat over [0, 1]); the clamp keeps exp(-log s) finite.
LOG_SCALE_MIN, LOG_SCALE_MAX = -8.0, 7.0


class Likelihood(nn.Module):
    """Base class: p(x|z) given the decoder's raw output; see the module docstring."""

    name: str = ""
    discrete: bool = False  # log_prob is a log-probability of the 8-bit/binary data (not a density)
    # Values of a pixel the probabilities are over: 2 (binary data only), 256 (8-bit data), or 0 for
    # a density on [0, 1]. `vaelab eval` uses it to say what bits/dim means for the run.
    levels: int = 0
    param_channels: int = 1  # raw decoder channels per image channel
    # Whether `pixel_std` is fitted to the data (a learned σ, the σ-VAE's, a decoder-predicted
    # scale) rather than set by hand: only then is it part of a model's predictive uncertainty
    # (the Probabilistic U-Net's `translate` std adds it to the spread of its samples).
    fitted_std: bool = False

    def __init__(self, event_dims: int = 3) -> None:
        super().__init__()
        self.event_dims = event_dims

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> Likelihood:
        """Build from a model config (its image shape fixes `event_dims`)."""
        return cls(event_dims=_event_dims(cfg))

    def param(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw decoder output (..., P·C, *S) -> the likelihood's parameter."""
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        """log p(x | param) summed over the event dims; broadcasts leading dims -> (...)."""
        raise NotImplementedError

    def mean(self, param: torch.Tensor) -> torch.Tensor:
        """Expected image (..., C, *S) in [0, 1]."""
        raise NotImplementedError

    def pixel_std(self, param: torch.Tensor) -> Optional[torch.Tensor]:
        """The decoder's own per-pixel standard deviation (..., C, *S), where it has one; else None."""
        return None

    def _sum_event(self, values: torch.Tensor) -> torch.Tensor:
        """Sum the trailing event dims: (..., C, *S) -> (...)."""
        return values.flatten(-self.event_dims).sum(-1)

    def _channel_axis(self, param: torch.Tensor) -> int:
        """Index of the channel dim of a (..., P·C, *S) tensor."""
        return param.dim() - self.event_dims


def _event_dims(cfg: ModelConfig) -> int:
    return len(cfg.image_shape) if cfg.image_shape else 3


def _channels(cfg: ModelConfig) -> int:
    return int(cfg.image_shape[0]) if cfg.image_shape else 1


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels; the parameter is the logits."""

    name = "bernoulli"
    discrete = True
    levels = 2

    def param(self, raw: torch.Tensor) -> torch.Tensor:
        return raw  # logits

    def log_prob(self, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        if x.shape == param.shape:
            # Fused and numerically stable: no sigmoid followed by log.
            return -self._sum_event(F.binary_cross_entropy_with_logits(param, x, reduction="none"))
        # K decodings per image (importance sampling): x (B, *E), logits l (K, B, *E). log p =
        # sum_d x_d·l_d - softplus(l_d); the first sum is a batched dot product, so x is never
        # expanded K times (half the memory traffic of BCE on an expanded x).
        logits = param.flatten(-self.event_dims)  # (K, B, P)
        xl = torch.einsum("bd,kbd->kb", x.flatten(-self.event_dims).to(logits.dtype), logits)
        return xl - F.softplus(logits).sum(-1)

    def mean(self, param: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(param)


# ---- Gaussian ------------------------------------------------------------------------------------

class Gaussian(Likelihood):
    """Independent Gaussian pixels with a fixed std; the parameter is the mean in (0, 1).

    `Gaussian.from_config` builds the class `GAUSSIAN_VARIANCES[cfg.gaussian_variance]`.
    """

    name = "gaussian"
    discrete = False
    variance_kind = "fixed"  # the GAUSSIAN_VARIANCES key

    def __init__(self, gaussian_std: float = 1 / math.sqrt(2), event_dims: int = 3) -> None:
        super().__init__(event_dims)
        self.std = float(gaussian_std)
        self.log_norm = 0.5 * math.log(2 * math.pi * self.std**2)  # per-pixel normaliser

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> Gaussian:
        kind = GAUSSIAN_VARIANCES[cfg.gaussian_variance]
        return kind.build(cfg)

    @classmethod
    def build(cls, cfg: ModelConfig) -> Gaussian:
        """This class for `cfg` (fixed std = cfg.gaussian_std)."""
        return cls(gaussian_std=cfg.gaussian_std, event_dims=_event_dims(cfg))

    def param(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(raw)  # mean in (0, 1)

    def log_prob(self, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        sq = self._sum_event((x - param).square())  # (...)
        d = param.shape[-self.event_dims:].numel()  # values per image, C·H·W
        return -sq / (2 * self.std**2) - d * self.log_norm

    def mean(self, param: torch.Tensor) -> torch.Tensor:
        return param

    def pixel_std(self, param: torch.Tensor) -> torch.Tensor:
        return torch.full_like(param, self.std)


class _ChannelVarianceGaussian(Gaussian):
    """A Gaussian whose variance is one value per image channel, sigma_c² (C,), or one value for
    every channel when `per_channel` is False (the variant benchmarks/gaussian_std.py compares)."""

    def __init__(self, gaussian_std: float = 1 / math.sqrt(2), channels: int = 1, event_dims: int = 3,
                 per_channel: bool = True) -> None:
        super().__init__(gaussian_std, event_dims)
        self.channels = channels
        self.per_channel = per_channel
        self.groups = channels if per_channel else 1  # how many variances

    @classmethod
    def build(cls, cfg: ModelConfig) -> Gaussian:
        return cls(gaussian_std=cfg.gaussian_std, channels=_channels(cfg), event_dims=_event_dims(cfg))

    def channel_variance(self) -> torch.Tensor:
        """sigma² per group (C,) or (1,), as used by `log_prob` outside training."""
        raise NotImplementedError

    def _group_squares(self, x: torch.Tensor, param: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Squared errors summed over each group's values -> ((..., groups), values per group and image)."""
        sq = (x - param).square().flatten(-(self.event_dims - 1)).sum(-1)  # (..., C)
        pixels = param.shape[-(self.event_dims - 1):].numel()
        if not self.per_channel:
            return sq.sum(-1, keepdim=True), pixels * sq.shape[-1]
        return sq, pixels

    def _log_prob_with(self, sq: torch.Tensor, variance: torch.Tensor, values: int) -> torch.Tensor:
        """sq (..., G) summed squared errors, variance (G,), values per group -> log p (...)."""
        return -(sq / (2 * variance)).sum(-1) - values * (0.5 * torch.log(2 * math.pi * variance)).sum(-1)

    def log_prob(self, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        sq, values = self._group_squares(x, param)
        return self._log_prob_with(sq, self.channel_variance(), values)

    def pixel_std(self, param: torch.Tensor) -> torch.Tensor:
        std = self.channel_variance().detach().sqrt().to(param.dtype)
        return std.reshape(-1, *[1] * (self.event_dims - 1)).expand_as(param)


class LearnedGaussian(_ChannelVarianceGaussian):
    """The std of each channel is a parameter (`log_std`, (C,)) trained with the network."""

    variance_kind = "learned"

    def __init__(self, gaussian_std: float = 1 / math.sqrt(2), channels: int = 1, event_dims: int = 3,
                 per_channel: bool = True) -> None:
        super().__init__(gaussian_std, channels, event_dims, per_channel)
        self.log_std = nn.Parameter(torch.full((self.groups,), math.log(gaussian_std)))

    def channel_variance(self) -> torch.Tensor:
        return torch.exp(2 * self.log_std.clamp(min=math.log(MIN_STD)))


class OptimalGaussian(_ChannelVarianceGaussian):
    """The sigma-VAE (Rybkin et al. 2021): sigma_c² = the mean squared error, in closed form.

    Training mode: sigma_c² is the batch's MSE in channel c (over every image, draw and pixel of
    the batch), not detached: at that value d(-log p)/d(sigma) = 0, so the gradient is that of
    D/2·log MSE either way. The batch's squared errors are added to the buffers `sq_sum` (C,) and
    `count`; `end_epoch` (called by the training loop after each epoch's last batch) sets the
    buffer `variance` (C,) to their mean and starts the next epoch's sums. Evaluation mode uses
    `variance`: the std estimated over the epoch's pass through the training split, saved in
    model.safetensors and in every checkpoint (the sums too, so a resumed epoch continues them
    exactly). Before the first epoch ends, `variance` is gaussian_std².
    """

    variance_kind = "optimal"

    def __init__(self, gaussian_std: float = 1 / math.sqrt(2), channels: int = 1, event_dims: int = 3,
                 per_channel: bool = True) -> None:
        super().__init__(gaussian_std, channels, event_dims, per_channel)
        self.register_buffer("variance", torch.full((self.groups,), float(gaussian_std) ** 2))
        self.register_buffer("sq_sum", torch.zeros(self.groups, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def channel_variance(self) -> torch.Tensor:
        return self.variance

    def log_prob(self, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().log_prob(x, param)
        sq, values = self._group_squares(x, param)  # (..., G), values per group and image
        per_group = sq.reshape(-1, sq.shape[-1]).sum(0)  # (G,) over every image and draw of the batch
        batch_values = sq.numel() // sq.shape[-1] * values  # values per group in the batch
        mse = (per_group / batch_values).clamp(min=MIN_STD**2)  # sigma² in closed form
        with torch.no_grad():
            self.sq_sum += per_group.detach().double()
            self.count += batch_values
        return self._log_prob_with(sq, mse, values)

    @torch.no_grad()
    def end_epoch(self) -> None:
        """sigma² = the mean squared error over the epoch's training batches; restart the sums."""
        if float(self.count) > 0:
            self.variance.copy_((self.sq_sum / self.count).clamp(min=MIN_STD**2).to(self.variance.dtype))
        self.sq_sum.zero_()
        self.count.zero_()


# `--gaussian-variance` -> the Gaussian class that sets the std that way.
GAUSSIAN_VARIANCES: dict[str, type[Gaussian]] = {
    "fixed": Gaussian, "learned": LearnedGaussian, "optimal": OptimalGaussian,
}


# ---- discretized logistic --------------------------------------------------------------------

def _log_sigmoid(t: torch.Tensor) -> torch.Tensor:
    """log sigmoid(t) = -softplus(-t), stable for any t (F.logsigmoid is the same function, but
    thousands of times slower on small CPU tensors in PyTorch 2.13: it allocates a buffer per call)."""
    return -F.softplus(-t)


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of 8-bit values x = k/255 under logistics (mean, exp(log_scale)), elementwise.

    The logistic's mass over x's bin [x - 1/510, x + 1/510]; the bins of 0 and 1 are open to -inf
    and +inf (Salimans et al. 2017). Exact and finite for any inputs (see the module docstring).
    """
    inv_scale = torch.exp(-log_scale)
    centred = x - mean
    upper = inv_scale * (centred + BIN / 2)  # (x + half a bin - mean) / s
    lower = inv_scale * (centred - BIN / 2)
    # log(sigmoid(u) - sigmoid(l)) = logsigmoid(u) + logsigmoid(-l) + log(1 - exp(-(u - l))), u - l = BIN / s
    interior = _log_sigmoid(upper) + _log_sigmoid(-lower) + torch.log(-torch.expm1(-BIN * inv_scale))
    # Every branch is finite everywhere, so where() passes finite gradients.
    return torch.where(x < BIN / 2, _log_sigmoid(upper), torch.where(x > 1 - BIN / 2, _log_sigmoid(-lower), interior))


def clamped_logistic_mean(mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """E[clamp(X, 0, 1)] for X ~ logistic(mean, s): s·(softplus(mean/s) - softplus((mean - 1)/s)).

    The midpoint rule of this integral over the 255 bins is the discretized logistic's own mean,
    so the two differ by less than half a grey level.
    """
    s = torch.exp(log_scale)
    return (s * (F.softplus(mean / s) - F.softplus((mean - 1) / s))).clamp(0, 1)


class DiscretizedLogistic(Likelihood):
    """One discretized logistic per pixel and channel; param = [mean | log scale], (..., 2C, *S)."""

    name = "logistic"
    discrete = True
    levels = 256
    param_channels = 2

    def _split(self, param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return param.chunk(2, dim=self._channel_axis(param))

    def param(self, raw: torch.Tensor) -> torch.Tensor:
        mean, log_scale = self._split(raw)
        # mean: unbounded around mid-grey (the open edge bins take values beyond [0, 1])
        return torch.cat([mean + 0.5, log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)], dim=self._channel_axis(raw))

    def log_prob(self, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        mean, log_scale = self._split(param)
        return self._sum_event(discretized_logistic_log_prob(x, mean, log_scale))

    def mean(self, param: torch.Tensor) -> torch.Tensor:
        return clamped_logistic_mean(*self._split(param))

    def pixel_std(self, param: torch.Tensor) -> torch.Tensor:
        _, log_scale = self._split(param)
        return torch.exp(log_scale) * (math.pi / math.sqrt(3))  # the logistic's std (before discretization)


class DiscretizedLogisticMixture(Likelihood):
    """A mixture of K discretized logistics per pixel (Salimans et al. 2017, PixelCNN++).

    Raw decoder output (..., P·C, *S) seen as (..., P, C, *S) with P = K means, K log scales,
    [K colour coefficients,] K mixture-logit parts, each (K, C): the mixture logits are the sum of
    the C parts (K per pixel). Colour images (C = 3) couple the channels within each component as
    PixelCNN++ does: mean_G += a·x_R, mean_B += b·x_R + c·x_G with (a, b, c) = tanh of the
    component's three coefficients, so P = 4K; grey images have no coefficients, P = 3K.
    """

    name = "logistic-mixture"
    discrete = True
    levels = 256

    def __init__(self, components: int = 10, channels: int = 1, event_dims: int = 3) -> None:
        super().__init__(event_dims)
        self.components = components
        self.channels = channels
        self.coupled = channels == 3  # PixelCNN++'s linear dependence between R, G and B
        self.param_channels = (4 if self.coupled else 3) * components

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> DiscretizedLogisticMixture:
        return cls(components=cfg.mixture_components, channels=_channels(cfg), event_dims=_event_dims(cfg))

    def _parts(self, param: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(..., P·C, *S) -> means, log scales[, coefficients], logit parts, each (..., K, C, *S)."""
        axis = self._channel_axis(param)
        return param.unflatten(axis, (-1, self.channels)).split(self.components, dim=axis)

    def param(self, raw: torch.Tensor) -> torch.Tensor:
        parts = list(self._parts(raw))
        parts[0] = parts[0] + 0.5  # means around mid-grey
        parts[1] = parts[1].clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)
        if self.coupled:
            parts[2] = torch.tanh(parts[2])  # colour coefficients in (-1, 1)
        axis = self._channel_axis(raw)
        return torch.cat(parts, dim=axis).flatten(axis, axis + 1)

    def _coupled_means(self, means: torch.Tensor, coeffs: torch.Tensor, red: torch.Tensor,
                       green: torch.Tensor, axis: int) -> torch.Tensor:
        """Component means (..., K, 3, *S) with G shifted by a·red and B by b·red + c·green."""
        m_r, m_g, m_b = means.unbind(axis + 1)
        a, b, c = coeffs.unbind(axis + 1)
        return torch.stack(torch.broadcast_tensors(m_r, m_g + a * red, m_b + b * red + c * green), dim=axis + 1)

    def _log_weights(self, param: torch.Tensor) -> torch.Tensor:
        axis = self._channel_axis(param)
        logits = self._parts(param)[-1].sum(axis + 1)  # (..., K, *S)
        return torch.log_softmax(logits, dim=axis)

    def log_prob(self, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        axis = self._channel_axis(param)
        parts = self._parts(param)
        means, log_scale = parts[0], parts[1]
        x = x.unsqueeze(-self.event_dims - 1)  # (B, 1, C, *S): broadcast over the K components
        if self.coupled:
            red, green = x.select(-self.event_dims, 0), x.select(-self.event_dims, 1)
            means = self._coupled_means(means, parts[2], red, green, axis)
        per_value = discretized_logistic_log_prob(x, means, log_scale)  # (..., K, C, *S)
        per_component = per_value.sum(axis + 1) + self._log_weights(param)  # (..., K, *S)
        return torch.logsumexp(per_component, dim=axis).flatten(axis).sum(-1)

    def mean(self, param: torch.Tensor) -> torch.Tensor:
        """Sum over components of weight × each channel's clamped-logistic mean (colour: the
        coefficients act on the component's own expected R, then its expected G)."""
        axis = self._channel_axis(param)
        parts = self._parts(param)
        means, log_scale = parts[0], parts[1]
        if self.coupled:
            (m_r, m_g, m_b), (s_r, s_g, s_b) = means.unbind(axis + 1), log_scale.unbind(axis + 1)
            a, b, c = parts[2].unbind(axis + 1)
            red = clamped_logistic_mean(m_r, s_r)
            green = clamped_logistic_mean(m_g + a * red, s_g)
            blue = clamped_logistic_mean(m_b + b * red + c * green, s_b)
            per_component = torch.stack([red, green, blue], dim=axis + 1)  # (..., K, 3, *S)
        else:
            per_component = clamped_logistic_mean(means, log_scale)  # (..., K, C, *S)
        weights = self._log_weights(param).exp().unsqueeze(axis + 1)  # (..., K, 1, *S)
        return (weights * per_component).sum(axis).clamp(0, 1)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "logistic": DiscretizedLogistic,
    "logistic-mixture": DiscretizedLogisticMixture,
}


def build_likelihood(cfg: ModelConfig) -> Likelihood:
    """The registered likelihood `cfg.likelihood` (see `LIKELIHOODS`)."""
    return LIKELIHOODS[cfg.likelihood].from_config(cfg)
