"""Shared tests over every registered architecture × likelihood, and reference-value checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vaelab.checkpoint import load_weights, save_weights
from vaelab.config import ModelConfig
from vaelab.likelihoods import GAUSSIAN_VARIANCES, LIKELIHOODS
from vaelab.models import ARCHITECTURES, VAE
from vaelab.models.conv import DECODER_STAGES
from vaelab.models.posterior import DiagonalGaussian
from vaelab.objectives import OBJECTIVES

SHAPES = [(1, 28, 28), (3, 8, 8), (1, 13, 17)]
# Every architecture, the conv one in each of its layouts: "conv:resize" = arch conv, conv_layout resize.
VARIANTS = sorted([a for a in ARCHITECTURES if a != "conv"] + [f"conv:{layout}" for layout in DECODER_STAGES])
# Every registered likelihood, the gaussian with each way of setting its std: "name" or "name:variance".
LIKELIHOOD_VARIANTS = sorted([name for name in LIKELIHOODS if name != "gaussian"]
                             + [f"gaussian:{variance}" for variance in GAUSSIAN_VARIANCES])


def make(variant: str, likelihood: str, shape=(1, 28, 28), latent_dim=3, conditional=False) -> VAE:
    torch.manual_seed(0)
    arch, _, layout = variant.partition(":")
    hidden = [16, 8] if arch == "mlp" else [4, 8]
    name, _, variance = likelihood.partition(":")
    cfg = ModelConfig(arch=arch, likelihood=name, gaussian_variance=variance or "fixed", latent_dim=latent_dim,
                      hidden=hidden, blocks=1, mixture_components=3, image_shape=list(shape),
                      conditional=conditional, num_classes=10 if conditional else 0,
                      **({"conv_layout": layout} if layout else {}))
    return VAE(cfg)


def test_every_likelihood_and_variance_is_covered():
    assert {v.partition(":")[0] for v in LIKELIHOOD_VARIANTS} == set(LIKELIHOODS)
    assert {"logistic", "logistic-mixture", "gaussian:learned", "gaussian:optimal"} <= set(LIKELIHOOD_VARIANTS)
    assert "resnet" in ARCHITECTURES


@pytest.mark.parametrize("arch", VARIANTS)
@pytest.mark.parametrize("likelihood", LIKELIHOOD_VARIANTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_shapes(arch, likelihood, shape):
    model = make(arch, likelihood, shape)
    x = torch.rand(5, *shape)
    q = model.encode(x)
    assert q.mean.shape == (5, 3) and q.log_var.shape == (5, 3)
    assert q.sample().shape == (5, 3) and q.sample(7).shape == (7, 5, 3)
    param = model.decode(q.mean)
    raw = (shape[0] * model.likelihood.param_channels, *shape[1:])  # P·C channels
    assert param.shape == (5, *raw)
    many = model.decode(q.sample(7))
    assert many.shape == (7, 5, *raw)  # K samples at once
    assert model.likelihood.log_prob(x, param).shape == (5,) and model.likelihood.log_prob(x, many).shape == (7, 5)
    out = model.reconstruct(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert model.sample(4).shape == (4, *shape)


@pytest.mark.parametrize("arch", VARIANTS)
@pytest.mark.parametrize("likelihood", LIKELIHOOD_VARIANTS)
def test_every_likelihood_trains_every_parameter_and_is_deterministic(arch, likelihood):
    model = make(arch, likelihood, (3, 9, 7))
    x = torch.randint(0, 256, (4, 3, 9, 7)) / 255.0  # 8-bit values
    torch.manual_seed(5)
    parts = OBJECTIVES["elbo"](model, x, None, 1.0, 1)
    assert torch.isfinite(parts.loss)
    parts.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    again = make(arch, likelihood, (3, 9, 7))  # the same seed builds the same weights and the same loss
    torch.manual_seed(5)
    assert OBJECTIVES["elbo"](again, x, None, 1.0, 1).loss.item() == parts.loss.item()


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 13, 17), (1, 5, 9)])
def test_resnet_comes_back_at_odd_sizes(shape):
    """Four stages halve 28 -> 14 -> 7 -> 4 (rounding up); the decoder restores exactly 4 -> 7 -> 14 -> 28."""
    from vaelab.models.conv import spatial_sizes

    cfg = ModelConfig(arch="resnet", hidden=[4, 4, 8, 8], blocks=2, latent_dim=5, image_shape=list(shape))
    model = VAE(cfg)
    assert spatial_sizes(28, 28, 3)[-1] == (4, 4)
    x = torch.rand(2, *shape)
    assert model.decode(model.encode(x).mean).shape == (2, *shape)
    blocks = [m for m in model.encoder.modules() if type(m).__name__ == "ResBlock"]
    assert len(blocks) == 2 * 4


@pytest.mark.parametrize("arch", VARIANTS)
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


@pytest.mark.parametrize("arch", VARIANTS)
@pytest.mark.parametrize("likelihood", LIKELIHOOD_VARIANTS)
def test_save_load_round_trip(tmp_path, arch, likelihood):
    model = make(arch, likelihood, conditional=True)
    with torch.no_grad():  # learned stds and the sigma-VAE's estimated std must travel with the weights
        for b in model.buffers():
            b.add_(0.25)
        for p in model.likelihood.parameters():
            p.add_(0.5)
    save_weights(model, tmp_path / "w.safetensors")
    other = make(arch, likelihood, conditional=True)
    for p in other.parameters():
        torch.nn.init.zeros_(p)
    load_weights(other, tmp_path / "w.safetensors")
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), name
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([3, 4])
    torch.testing.assert_close(other.encode(x, y).mean, model.encode(x, y).mean, rtol=0, atol=0)
    model.eval(), other.eval()
    z = torch.randn(2, 3)
    torch.testing.assert_close(other.likelihood.log_prob(x, other.decode(z, y)),
                               model.likelihood.log_prob(x, model.decode(z, y)), rtol=0, atol=0)


def test_conditional_model_requires_and_uses_labels():
    model = make("mlp", "bernoulli", conditional=True)
    z = torch.zeros(2, 3)
    with pytest.raises(Exception, match="conditional"):
        model.decode(z)
    a, b = model.decode(z, torch.tensor([1, 1])), model.decode(z, torch.tensor([2, 2]))
    assert not torch.allclose(a, b)
