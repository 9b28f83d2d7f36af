"""Shared tests over every registered architecture × likelihood, and reference-value checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vaelab.checkpoint import load_weights, save_weights
from vaelab.config import ModelConfig
from vaelab.likelihoods import LIKELIHOODS
from vaelab.models import ARCHITECTURES, VAE
from vaelab.models.posterior import DiagonalGaussian
from vaelab.objectives import OBJECTIVES

SHAPES = [(1, 28, 28), (3, 8, 8), (1, 13, 17)]


def make(arch: str, likelihood: str, shape=(1, 28, 28), latent_dim=3, conditional=False) -> VAE:
    torch.manual_seed(0)
    hidden = [16, 8] if arch == "mlp" else [4, 8]
    cfg = ModelConfig(arch=arch, likelihood=likelihood, latent_dim=latent_dim, hidden=hidden,
                      image_shape=list(shape), conditional=conditional, num_classes=10 if conditional else 0)
    return VAE(cfg)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
@pytest.mark.parametrize("shape", SHAPES)
def test_shapes(arch, likelihood, shape):
    model = make(arch, likelihood, shape)
    x = torch.rand(5, *shape)
    q = model.encode(x)
    assert q.mean.shape == (5, 3) and q.log_var.shape == (5, 3)
    assert q.sample().shape == (5, 3) and q.sample(7).shape == (7, 5, 3)
    param = model.decode(q.mean)
    assert param.shape == (5, *shape)
    assert model.decode(q.sample(7)).shape == (7, 5, *shape)  # K samples at once
    out = model.reconstruct(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert model.sample(4).shape == (4, *shape)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_gradients_reach_every_parameter(arch, objective):
    model = make(arch, "bernoulli", conditional=True)
    x = torch.rand(6, 1, 28, 28)
    y = torch.arange(6)
    parts = OBJECTIVES[objective](model, x, y, 1.0, 3)
    parts.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_kl_matches_torch_distributions():
    torch.manual_seed(1)
    mean, log_var = torch.randn(8, 5), torch.randn(8, 5)
    q = DiagonalGaussian(mean, log_var)
    ref = kl_divergence(Independent(Normal(mean, (0.5 * log_var).exp()), 1),
                        Independent(Normal(torch.zeros(5), torch.ones(5)), 1))
    torch.testing.assert_close(q.kl(), ref)


def test_posterior_log_prob_and_sampling_match_normal():
    torch.manual_seed(2)
    mean, log_var = torch.randn(4, 3), torch.randn(4, 3)
    q = DiagonalGaussian(mean, log_var)
    z = q.sample(20000)  # (K, B, D)
    ref = Independent(Normal(mean, (0.5 * log_var).exp()), 1)
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z))
    torch.testing.assert_close(z.mean(0), mean, atol=0.05 * (0.5 * log_var).exp().max().item(), rtol=0)
    torch.testing.assert_close(z.std(0), q.std, rtol=0.03, atol=0)


def test_log_var_is_clamped_to_a_finite_range():
    q = DiagonalGaussian(torch.zeros(1, 2), torch.tensor([[1e4, -1e4]]))
    assert torch.isfinite(q.std).all() and (q.std > 0).all() and torch.isfinite(q.kl()).all()


def test_likelihoods_match_torch_distributions():
    torch.manual_seed(3)
    x = torch.rand(4, 1, 5, 5)
    logits = torch.randn(4, 1, 5, 5)
    bern = LIKELIHOODS["bernoulli"]()
    bits = torch.bernoulli(x)
    torch.testing.assert_close(bern.log_prob(bits, logits), Independent(Bernoulli(logits=logits), 3).log_prob(bits))
    # K decodings per image (the importance-sampling path that avoids expanding x).
    many = torch.randn(6, 4, 1, 5, 5) * 4
    torch.testing.assert_close(bern.log_prob(bits, many), Independent(Bernoulli(logits=many), 3).log_prob(bits))
    gauss = LIKELIHOODS["gaussian"](gaussian_std=0.3)
    mean = torch.rand(4, 1, 5, 5)
    ref = Independent(Normal(mean, torch.full_like(mean, 0.3)), 3).log_prob(x)
    torch.testing.assert_close(gauss.log_prob(x, mean), ref)


def test_default_gaussian_is_summed_squared_error_plus_constant():
    gauss = LIKELIHOODS["gaussian"]()  # std 1/sqrt(2)
    x, mean = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    sse = (x - mean).square().flatten(1).sum(1)
    torch.testing.assert_close(-gauss.log_prob(x, mean), sse + 16 * 0.5 * math.log(math.pi))


def test_reparameterisation_is_sigma_times_noise_plus_mean():
    q = DiagonalGaussian(torch.tensor([[1.0, -2.0]]), torch.log(torch.tensor([[4.0, 0.25]])))
    gen = torch.Generator().manual_seed(0)
    z = q.sample(generator=gen)
    noise = torch.randn((1, 2), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, torch.tensor([[2.0, 0.5]]) * noise + torch.tensor([[1.0, -2.0]]))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_save_load_round_trip(tmp_path, arch):
    model = make(arch, "gaussian", conditional=True)
    save_weights(model, tmp_path / "w.safetensors")
    other = make(arch, "gaussian", conditional=True)
    for p in other.parameters():
        torch.nn.init.zeros_(p)
    load_weights(other, tmp_path / "w.safetensors")
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([3, 4])
    torch.testing.assert_close(other.encode(x, y).mean, model.encode(x, y).mean, rtol=0, atol=0)


def test_conditional_model_requires_and_uses_labels():
    model = make("mlp", "bernoulli", conditional=True)
    z = torch.zeros(2, 3)
    with pytest.raises(Exception, match="conditional"):
        model.decode(z)
    a, b = model.decode(z, torch.tensor([1, 1])), model.decode(z, torch.tensor([2, 2]))
    assert not torch.allclose(a, b)


# ---- the translate family: the Probabilistic U-Net (models/punet.py) --------------------------

from vaelab.models import MODELS, build_model, family_of  # noqa: E402
from vaelab.models.punet import ProbabilisticUNet, gaussian_kl_per_dim  # noqa: E402

UNET_SHAPES = [(1, 28, 28), (3, 8, 8), (1, 13, 17)]


def make_punet(likelihood: str = "gaussian", shape=(1, 28, 28), latent_dim=3, inject_stages=1, hidden=(4, 8),
               input_channels=0) -> ProbabilisticUNet:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="unet", task="translate", likelihood=likelihood, latent_dim=latent_dim, hidden=list(hidden),
                      image_shape=list(shape), input_channels=input_channels, inject_stages=inject_stages)
    cfg.validate()
    return build_model(cfg)


def test_translate_family_is_built_from_the_config():
    model = make_punet()
    assert isinstance(model, MODELS["translate"]) and family_of(model) == "translate"
    assert family_of(make("mlp", "gaussian")) == "vae"


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
@pytest.mark.parametrize("shape", UNET_SHAPES)
@pytest.mark.parametrize("inject_stages", [1, 2])
def test_punet_shapes(likelihood, shape, inject_stages):
    model = make_punet(likelihood, shape, inject_stages=inject_stages)
    x, y = torch.rand(5, *shape), torch.rand(5, *shape)
    q = model.encode(x, y)
    assert q.mean.shape == (5, 3) and q.prior.mean.shape == (5, 3)
    param = model.decode(q.mean, y)
    assert param.shape == (5, shape[0] * model.likelihood.param_channels, *shape[1:])
    assert model.decode(q.sample(7), y).shape == (7, *param.shape)
    out = model.translate(y, num_samples=6)
    assert out.mean.shape == (5, *shape) and out.std.shape == (5, *shape) and out.samples.shape == (6, 5, *shape)
    assert out.mean.min() >= 0 and out.mean.max() <= 1
    terms = model.log_terms(x, y, 4)
    assert all(t.shape == (4, 5) for t in terms)


def test_punet_takes_other_input_channels_and_sizes():
    model = make_punet(shape=(1, 12, 12), input_channels=3, hidden=(4, 8, 8))
    y = torch.rand(2, 3, 12, 12)
    assert model.translate(y, 2).mean.shape == (2, 1, 12, 12)
    # Fully convolutional with global pooling in the prior net: any size works at test time too.
    assert model.translate(torch.rand(2, 3, 19, 23), 2).mean.shape == (2, 1, 19, 23)
    with pytest.raises(Exception, match="input images must be"):
        model.translate(torch.rand(2, 1, 12, 12), 2)
    with pytest.raises(Exception, match="image-to-image model"):
        model.decode(torch.zeros(2, 3))


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("inject_stages", [1, 3])
def test_punet_gradients_reach_every_parameter(objective, inject_stages):
    model = make_punet("bernoulli", hidden=(4, 8, 8), inject_stages=inject_stages)
    x, y = torch.rand(6, 1, 28, 28), torch.rand(6, 1, 28, 28)
    parts = OBJECTIVES[objective](model, x, y, 1.0, 3)
    parts.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_kl_between_diagonal_gaussians_matches_torch_distributions():
    torch.manual_seed(4)
    q = DiagonalGaussian(torch.randn(8, 5), torch.randn(8, 5))
    p = DiagonalGaussian(torch.randn(8, 5), torch.randn(8, 5))
    ref = kl_divergence(Normal(q.mean, q.std), Normal(p.mean, p.std))
    torch.testing.assert_close(gaussian_kl_per_dim(q, p), ref)
    model = make_punet()
    x, y = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    posterior = model.encode(x, y)
    prior = model.prior_given(y)
    want = kl_divergence(Independent(Normal(posterior.mean, posterior.std), 1), Independent(Normal(prior.mean,
                                                                                                  prior.std), 1))
    torch.testing.assert_close(model.elbo_terms(x, y, posterior).kl, want)
    torch.testing.assert_close(model.closed_form_kl(posterior), want)


def test_punet_log_weights_are_the_three_densities():
    model = make_punet("bernoulli")
    x, y = torch.bernoulli(torch.rand(3, 1, 28, 28)), torch.rand(3, 1, 28, 28)
    q = model.encode(x, y)
    gen = torch.Generator().manual_seed(0)
    log_w = model.log_weights(x, y, 5, q, generator=gen)
    z = q.sample(5, torch.Generator().manual_seed(0))  # the same draws
    logits = model.decode(z, y)
    ref = (Independent(Bernoulli(logits=logits), 3).log_prob(x)
           + Independent(Normal(q.prior.mean, q.prior.std), 1).log_prob(z)
           - Independent(Normal(q.mean, q.std), 1).log_prob(z))
    torch.testing.assert_close(log_w, ref, rtol=1e-5, atol=1e-4)


def test_decoding_k_codes_at_once_equals_one_at_a_time():
    """The U-Net's trunk runs once for K codes: the result must equal K separate decodings."""
    for inject_stages in (1, 2):
        model = make_punet(hidden=(4, 8), inject_stages=inject_stages)
        y, z = torch.rand(3, 1, 13, 17), torch.randn(4, 3, 3)
        together = model.decode(z, y)
        for k in range(4):
            torch.testing.assert_close(together[k], model.decode(z[k], y), rtol=1e-5, atol=1e-6)


def test_translate_samples_differ_and_std_is_their_spread():
    model = make_punet()
    with torch.no_grad():  # make z matter: a strong prior spread and a head that reads it
        model.prior_net.head.bias[3:].fill_(2.0)
    y = torch.rand(2, 1, 28, 28)
    out = model.translate(y, num_samples=5, generator=torch.Generator().manual_seed(1))
    assert (out.std > 0).all()
    assert not torch.allclose(out.samples[0], out.samples[1])
    torch.testing.assert_close(out.mean, out.samples.mean(0))
    torch.testing.assert_close(out.std, out.samples.std(0, unbiased=True))  # fixed-σ likelihood: spread only
    again = model.translate(y, num_samples=5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again.samples, out.samples)
    single = model.translate(y, num_samples=1)
    assert (single.std == 0).all()


def test_translate_adds_a_fitted_likelihood_std():
    model = make_punet()
    model.likelihood.fitted_std = True  # as a learned-σ likelihood declares it
    y = torch.rand(2, 1, 28, 28)
    out = model.translate(y, num_samples=4, generator=torch.Generator().manual_seed(2))
    spread = out.samples.std(0, unbiased=True)
    torch.testing.assert_close(out.std, (spread.square() + model.likelihood.std ** 2).sqrt())


def test_punet_save_load_round_trip(tmp_path):
    model = make_punet(inject_stages=2)
    save_weights(model, tmp_path / "w.safetensors")
    other = make_punet(inject_stages=2)
    for p in other.parameters():
        torch.nn.init.zeros_(p)
    load_weights(other, tmp_path / "w.safetensors")
    y = torch.rand(2, 1, 28, 28)
    gen = [torch.Generator().manual_seed(0) for _ in range(2)]
    torch.testing.assert_close(other.translate(y, 3, gen[0]).samples, model.translate(y, 3, gen[1]).samples,
                               rtol=0, atol=0)


@pytest.mark.parametrize("hidden, inject_stages, channels", [((4, 8), 1, 1), ((8, 16, 32), 3, 3), ((16,), 1, 1)])
def test_punet_parameter_estimate_bounds_the_real_model(hidden, inject_stages, channels):
    from vaelab.config import approx_parameters

    model = make_punet(shape=(channels, 28, 28), hidden=hidden, inject_stages=inject_stages)
    real = sum(p.numel() for p in model.parameters())
    assert real <= approx_parameters(model.cfg) <= 10 * real


def test_untrained_punet_predicts_its_input():
    """The last layer's input shortcut starts as an identity (residual learning)."""
    model = make_punet(hidden=(8, 16))
    y = torch.rand(3, 1, 28, 28).clamp(0.02, 0.98)
    assert float((model.translate(y, 2).mean - y).abs().max()) < 0.05
