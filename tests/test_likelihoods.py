"""The likelihoods against references: the discretized logistic (and its mixture) against numerical
integration of the logistic density over each 8-bit bin, the sigma-VAE's std against its closed
form, learned and estimated stds saved with the weights, and every gradient against finite
differences (torch.autograd.gradcheck in float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from torch.distributions import Normal

from vaelab.config import ModelConfig
from vaelab.likelihoods import (
    BIN,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    LearnedGaussian,
    OptimalGaussian,
    clamped_logistic_mean,
    discretized_logistic_log_prob,
)

VALUES = torch.arange(256, dtype=torch.float64) / 255  # every 8-bit value k/255


def logistic_density(t: float, mean: float, scale: float) -> float:
    z = (t - mean) / scale
    return math.exp(-abs(z)) / (scale * (1 + math.exp(-abs(z))) ** 2)  # symmetric form: no overflow


def integrated_bins(mean: float, scale: float) -> np.ndarray:
    """P(k) for k = 0..255 by adaptive quadrature of the logistic density over each bin; the two
    edge bins extend 60 scales beyond the logistic's centre (the rest is below e^-60)."""
    lows = [k / 255 - BIN / 2 for k in range(256)]
    highs = [k / 255 + BIN / 2 for k in range(256)]
    lows[0] = min(lows[0], mean) - 60 * scale
    highs[255] = max(highs[255], mean) + 60 * scale
    out = []
    for lo, hi in zip(lows, highs):
        # points: the density's peak, where quadrature needs most care when it lies in the bin
        points = [mean] if lo < mean < hi else None
        value, _ = integrate.quad(logistic_density, lo, hi, args=(mean, scale), epsabs=0, epsrel=1e-11,
                                  limit=200, points=points)
        out.append(value)
    return np.array(out)


LOGISTIC_CASES = [(0.3, 0.05), (0.5, 0.004), (0.0, 0.01), (1.0, 0.2), (0.77, 1.3), (-0.4, 0.1), (1.3, 0.02),
                  (0.5, 5e-4)]


@pytest.mark.parametrize("mean, scale", LOGISTIC_CASES)
def test_discretized_logistic_matches_numerical_integration(mean, scale):
    reference = integrated_bins(mean, scale)
    for dtype in (torch.float64, torch.float32):
        log_p = discretized_logistic_log_prob(VALUES.to(dtype), torch.tensor(mean, dtype=dtype),
                                              torch.tensor(math.log(scale), dtype=dtype)).double()
        assert torch.isfinite(log_p).all()
        tol = 1e-9 if dtype == torch.float64 else 2e-4
        shown = reference > 1e-280  # quadrature's float64 range; our log-probabilities go further
        np.testing.assert_allclose(log_p.numpy()[shown], np.log(reference[shown]), rtol=tol, atol=tol)
        # The 256 probabilities sum to 1 (float32: up to the rounding of k/255 itself, ~3e-8, times the
        # density, at most 1/(4s) = 500 here).
        assert abs(float(torch.logsumexp(log_p, 0))) < (1e-12 if dtype == torch.float64 else 5e-5)


def test_far_tails_stay_finite_and_exact_where_the_sigmoid_difference_underflows():
    # 0.5 ± 0.1 is 200 scales from the mean: sigmoid(u) - sigmoid(l) is 0 in float32 (and e^-200 ≈ 1e-87
    # in float64), the log-space form is exact: log P = -(x - mean)/s + log(1 - e^(-BIN/s)) + O(e^-200).
    x = torch.tensor([0.2, 0.8], dtype=torch.float32)
    mean, log_scale = torch.tensor(0.5), torch.tensor(math.log(5e-4))
    log_p = discretized_logistic_log_prob(x, mean, log_scale)
    s = 5e-4
    for value, got in zip((0.2, 0.8), log_p.tolist()):
        distance = abs(value - 0.5) - BIN / 2  # to the bin's near edge
        expected = -distance / s + math.log(-math.expm1(-BIN / s))
        assert got == pytest.approx(expected, rel=1e-5)
    assert (torch.sigmoid((x - mean + BIN / 2) / s) - torch.sigmoid((x - mean - BIN / 2) / s) == 0).all()


@pytest.mark.parametrize("mean, scale", [(0.3, 0.05), (0.0, 0.01), (1.2, 0.3), (0.5, 0.002)])
def test_clamped_mean_is_the_discretized_mean_within_half_a_grey_level(mean, scale):
    probs = integrated_bins(mean, scale)
    exact = float((probs * VALUES.numpy()).sum())
    approx = float(clamped_logistic_mean(torch.tensor(mean, dtype=torch.float64),
                                         torch.tensor(math.log(scale), dtype=torch.float64)))
    assert abs(approx - exact) < BIN / 2


def _logistic_param(mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """The logistic likelihood's parameter layout [mean | log scale] along the channel dim."""
    return torch.cat([mean, log_scale], dim=-3)


def test_logistic_module_sums_pixel_log_probabilities():
    lik = DiscretizedLogistic()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 5, 6), generator=gen) / 255
    mean, log_scale = torch.rand(4, 3, 5, 6, generator=gen), torch.rand(4, 3, 5, 6, generator=gen) * 3 - 6
    per_value = discretized_logistic_log_prob(x, mean, log_scale)
    torch.testing.assert_close(lik.log_prob(x, _logistic_param(mean, log_scale)), per_value.flatten(1).sum(1))
    raw = torch.randn(2, 6, 5, 6, generator=gen)
    param = lik.param(raw)  # mean = raw + 0.5, log scale clamped
    torch.testing.assert_close(param[:, :3], raw[:, :3] + 0.5)
    assert lik.mean(param).shape == (2, 3, 5, 6)


def _mixture_reference(values: np.ndarray, weights: np.ndarray, means: np.ndarray, scales: np.ndarray,
                       coeffs: np.ndarray | None) -> float:
    """P(values) of one pixel, by numerical integration: sum_k w_k prod_c P(value_c; mean'_kc, s_kc),
    with PixelCNN++'s mean'_G = mean_G + a x_R, mean'_B = mean_B + b x_R + c x_G for colour."""
    total = 0.0
    for k in range(len(weights)):
        shifted = means[k].copy()
        if coeffs is not None:
            a, b, c = coeffs[k]
            shifted[1] += a * values[0]
            shifted[2] += b * values[0] + c * values[1]
        p = weights[k]
        for ch, v in enumerate(values):
            p *= integrated_bins(shifted[ch], scales[k, ch])[int(round(v * 255))]
        total += p
    return total


def _random_mixture(channels: int, k_components: int = 3, seed: int = 1):
    """A mixture likelihood and one pixel's parameter (log scales in [log 0.01, log 0.2]), float64,
    with the parameter's parts as numpy: weights (K,), means and scales (K, C), coefficients (K, 3) or None."""
    lik = DiscretizedLogisticMixture(components=k_components, channels=channels)
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(1, lik.param_channels * channels, 1, 1, generator=gen, dtype=torch.float64)
    raw[:, k_components * channels : 2 * k_components * channels] = torch.log(
        torch.empty(k_components * channels, 1, 1, dtype=torch.float64).uniform_(0.01, 0.2, generator=gen))
    param = lik.param(raw)
    parts = [p[0, :, :, 0, 0].numpy() for p in lik._parts(param)]  # each (K, C)
    logits = parts[-1].sum(1)
    weights = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    return lik, param, weights, parts[0], np.exp(parts[1]), parts[2] if channels == 3 else None


@pytest.mark.parametrize("channels", [1, 3])
def test_mixture_matches_numerical_integration(channels):
    lik, param, weights, means, scales, coeffs = _random_mixture(channels)
    gen = torch.Generator().manual_seed(11)
    for _ in range(4):
        values = torch.randint(0, 256, (channels,), generator=gen).double() / 255
        got = float(lik.log_prob(values.reshape(1, channels, 1, 1), param))
        expected = _mixture_reference(values.numpy(), weights, means, scales, coeffs)
        assert got == pytest.approx(math.log(expected), abs=1e-7)
    if channels == 1:  # the 256 values' probabilities sum to 1
        assert abs(float(torch.logsumexp(lik.log_prob(VALUES.reshape(256, 1, 1, 1), param), 0))) < 1e-10


def _colour_slice(lik, param, red: float) -> torch.Tensor:
    """log of sum over all 256² (G, B) values of P(red, G, B)."""
    g, b = torch.meshgrid(VALUES, VALUES, indexing="ij")
    x = torch.stack([torch.full_like(g, red), g, b], -1).reshape(-1, 3, 1, 1)  # (65536, 3, 1, 1)
    return torch.logsumexp(lik.log_prob(x, param), 0)


def test_colour_mixture_conditionals_are_normalised():
    """Summed over G and B, P(r, G, B) is the red marginal sum_k w_k P_k(r): the colour-coupled
    conditionals P(G | r) and P(B | r, G) of every component sum to 1."""
    lik, param, weights, means, scales, _ = _random_mixture(3)
    for k_red in (0, 77, 255):
        red_marginal = sum(w * integrated_bins(means[k, 0], scales[k, 0])[k_red] for k, w in enumerate(weights))
        assert float(_colour_slice(lik, param, k_red / 255)) == pytest.approx(math.log(red_marginal), abs=1e-8)


@pytest.mark.slow
def test_colour_mixture_sums_to_one_over_all_256_cubed_values():
    lik, param, *_ = _random_mixture(3, k_components=2)
    total = torch.logsumexp(torch.stack([_colour_slice(lik, param, float(r)) for r in VALUES]), 0)
    assert abs(float(total)) < 1e-10


def test_mixture_of_one_grey_component_is_the_logistic():
    gen = torch.Generator().manual_seed(2)
    raw = torch.randn(3, 3, 4, 4, generator=gen)  # [mean | log scale | logit] for K = 1, C = 1
    x = torch.randint(0, 256, (3, 1, 4, 4), generator=gen) / 255
    mixture = DiscretizedLogisticMixture(components=1, channels=1)
    single = DiscretizedLogistic()
    torch.testing.assert_close(mixture.log_prob(x, mixture.param(raw)), single.log_prob(x, single.param(raw[:, :2])))
    torch.testing.assert_close(mixture.mean(mixture.param(raw)), single.mean(single.param(raw[:, :2])))


# ---- Gaussian stds ------------------------------------------------------------------------------


def test_sigma_vae_uses_the_closed_form_mse_in_training():
    lik = OptimalGaussian(channels=3).train()
    gen = torch.Generator().manual_seed(3)
    x, mean = torch.rand(6, 3, 5, 4, generator=gen), torch.rand(6, 3, 5, 4, generator=gen)
    mse = (x - mean).square().transpose(0, 1).reshape(3, -1).mean(1)  # per channel, over the whole batch
    reference = Normal(mean, mse.sqrt().reshape(3, 1, 1)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(x, mean), reference)
    # The batch mean is (D/2)(1 + log 2 pi) + (D/C)/2 · sum_c log MSE_c: the loss D/2·log MSE + constants.
    d = 3 * 5 * 4
    closed = -(d / 2) * (1 + math.log(2 * math.pi)) - (d / 3) / 2 * torch.log(mse).sum()
    torch.testing.assert_close(lik.log_prob(x, mean).mean(), closed)
    # sigma² = MSE is the maximum-likelihood std: the derivative by sigma vanishes there.
    sigma = mse.sqrt().clone().requires_grad_(True)
    Normal(mean, sigma.reshape(3, 1, 1)).log_prob(x).sum().backward()
    torch.testing.assert_close(sigma.grad, torch.zeros(3), atol=1e-3, rtol=0)


def test_sigma_vae_std_is_estimated_over_the_epoch_and_used_in_evaluation():
    lik = OptimalGaussian(gaussian_std=0.5, channels=1).train()
    gen = torch.Generator().manual_seed(4)
    batches = [(torch.rand(n, 1, 4, 4, generator=gen), torch.rand(n, 1, 4, 4, generator=gen)) for n in (5, 3, 7)]
    lik.eval()
    x0, m0 = batches[0]
    before = Normal(m0, 0.5).log_prob(x0).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(x0, m0), before)  # before the first epoch ends: gaussian_std
    lik.train()
    for x, m in batches:
        lik.log_prob(x, m)
    lik.end_epoch()
    sse = sum(float((x - m).square().sum()) for x, m in batches)
    values = sum(x.numel() for x, _ in batches)
    assert float(lik.variance) == pytest.approx(sse / values, rel=1e-6)
    assert float(lik.count) == 0 and float(lik.sq_sum) == 0  # the next epoch starts its own sums
    lik.eval()
    std = math.sqrt(sse / values)
    torch.testing.assert_close(lik.log_prob(x0, m0), Normal(m0, std).log_prob(x0).flatten(1).sum(1))
    torch.testing.assert_close(lik.pixel_std(m0), torch.full_like(m0, std))


def test_sigma_vae_std_is_in_the_weights_file(tmp_path):
    from vaelab.checkpoint import load_weights, save_weights
    from vaelab.models import VAE

    cfg = ModelConfig(arch="mlp", hidden=[8], latent_dim=2, likelihood="gaussian", gaussian_variance="optimal",
                      image_shape=[3, 4, 4])
    model = VAE(cfg)
    with torch.no_grad():
        model.likelihood.variance.copy_(torch.tensor([0.01, 0.02, 0.03]))
    save_weights(model, tmp_path / "model.safetensors")
    other = VAE(cfg)
    load_weights(other, tmp_path / "model.safetensors")
    assert torch.equal(other.likelihood.variance, torch.tensor([0.01, 0.02, 0.03]))


def test_learned_std_is_a_parameter_per_channel_started_at_gaussian_std():
    lik = LearnedGaussian(gaussian_std=0.2, channels=3)
    assert [n for n, _ in lik.named_parameters()] == ["log_std"]
    torch.testing.assert_close(lik.log_std.exp(), torch.full((3,), 0.2))
    gen = torch.Generator().manual_seed(5)
    x, mean = torch.rand(2, 3, 4, 4, generator=gen), torch.rand(2, 3, 4, 4, generator=gen)
    with torch.no_grad():
        lik.log_std.copy_(torch.log(torch.tensor([0.1, 0.3, 0.05])))
    std = torch.tensor([0.1, 0.3, 0.05]).reshape(3, 1, 1)
    torch.testing.assert_close(lik.log_prob(x, mean), Normal(mean, std).log_prob(x).flatten(1).sum(1))


# ---- gradients against finite differences -------------------------------------------------------


def test_discretized_logistic_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(6)
    x = torch.tensor([0.0, 1 / 255, 0.5, 254 / 255, 1.0, 0.3], dtype=torch.float64)  # edge and interior bins
    mean = (torch.rand(6, generator=gen, dtype=torch.float64) * 1.2 - 0.1).requires_grad_(True)
    log_scale = (torch.rand(6, generator=gen, dtype=torch.float64) * 4 - 6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m, s: discretized_logistic_log_prob(x, m, s), (mean, log_scale))


@pytest.mark.parametrize("channels", [1, 3])
def test_mixture_gradients_match_finite_differences(channels):
    lik = DiscretizedLogisticMixture(components=2, channels=channels)
    gen = torch.Generator().manual_seed(7)
    x = torch.randint(0, 256, (2, channels, 2, 2), generator=gen).double() / 255
    raw = torch.randn(2, lik.param_channels * channels, 2, 2, generator=gen, dtype=torch.float64) * 0.5
    raw.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: lik.log_prob(x, lik.param(r)), (raw,))
    assert torch.autograd.gradcheck(lambda r: lik.mean(lik.param(r)), (raw,))


def test_logistic_gradients_match_finite_differences():
    lik = DiscretizedLogistic()
    gen = torch.Generator().manual_seed(8)
    x = torch.randint(0, 256, (2, 3, 2, 3), generator=gen).double() / 255
    raw = (torch.randn(2, 6, 2, 3, generator=gen, dtype=torch.float64) * 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: lik.log_prob(x, lik.param(r)), (raw,))


@pytest.mark.parametrize("cls", [LearnedGaussian, OptimalGaussian])
def test_gaussian_std_gradients_match_finite_differences(cls):
    lik = cls(gaussian_std=0.3, channels=3).double().train()
    gen = torch.Generator().manual_seed(9)
    x = torch.rand(3, 3, 2, 2, generator=gen, dtype=torch.float64)
    mean = torch.rand(3, 3, 2, 2, generator=gen, dtype=torch.float64).requires_grad_(True)
    inputs = (mean, lik.log_std) if cls is LearnedGaussian else (mean,)
    assert torch.autograd.gradcheck(lambda m, *_: lik.log_prob(x, m), inputs)


def test_one_std_for_every_channel_is_the_shared_closed_form():
    """per_channel=False (benchmarks/gaussian_std.py's comparison): one sigma² = the MSE over all channels."""
    gen = torch.Generator().manual_seed(10)
    x, mean = torch.rand(4, 3, 5, 5, generator=gen), torch.rand(4, 3, 5, 5, generator=gen)
    shared = OptimalGaussian(channels=3, per_channel=False).train()
    mse = (x - mean).square().mean()
    torch.testing.assert_close(shared.log_prob(x, mean), Normal(mean, mse.sqrt()).log_prob(x).flatten(1).sum(1))
    learned = LearnedGaussian(gaussian_std=0.2, channels=3, per_channel=False)
    assert learned.log_std.shape == (1,)
    torch.testing.assert_close(learned.log_prob(x, mean), Normal(mean, 0.2).log_prob(x).flatten(1).sum(1))
