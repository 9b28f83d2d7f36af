"""Shared tests over every registered architecture × likelihood and every prior × posterior × number of
stochastic layers (the model families of `MODELS`), and reference-value checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vaelab.checkpoint import load_weights, save_weights
from vaelab.config import ModelConfig
from vaelab.errors import ConfigError
from vaelab.likelihoods import GAUSSIAN_VARIANCES, LIKELIHOODS
from vaelab.models import ARCHITECTURES, MODELS, POSTERIORS, PRIORS, VAE, build_model, model_family
from vaelab.models.conv import DECODER_STAGES
from vaelab.models.posterior import DiagonalGaussian
from vaelab.objectives import OBJECTIVES

SHAPES = [(1, 28, 28), (3, 8, 8), (1, 13, 17)]
# Every architecture, the conv one in each of its layouts: "conv:resize" = arch conv, conv_layout resize.
VARIANTS = sorted([a for a in ARCHITECTURES if a != "conv"] + [f"conv:{layout}" for layout in DECODER_STAGES])
# Every registered likelihood, the gaussian with each way of setting its std: "name" or "name:variance".
LIKELIHOOD_VARIANTS = sorted([name for name in LIKELIHOODS if name != "gaussian"]
                             + [f"gaussian:{variance}" for variance in GAUSSIAN_VARIANCES])


# Every registered prior x posterior with one stochastic layer, and every prior on top of the
# hierarchical VAE (which brings its own top-down posterior): (prior, posterior, layers).
COMPONENTS = ([(prior, posterior, 1) for prior in sorted(PRIORS) for posterior in sorted(POSTERIORS)]
            + [(prior, "diagonal", 2) for prior in sorted(PRIORS)])
COMPONENT_IDS = [f"{p}-{q}-{n}layer" for p, q, n in COMPONENTS]

# The volume (C, D, H, W) each test's image shape stands for, for an architecture of volumes only
# (conv3d): small, with odd sizes where the image has them, so the exact-size decoding is checked.
VOLUME_FOR = {(1, 28, 28): (1, 8, 8, 8), (1, 12, 12): (1, 6, 6, 6), (3, 8, 8): (3, 4, 4, 4),
              (1, 13, 17): (1, 5, 9, 7), (3, 9, 7): (3, 5, 9, 7)}


def fit(variant: str, shape) -> tuple[int, ...]:
    """`shape` (C, H, W) as the architecture of `variant` takes it: itself, or its VOLUME_FOR volume."""
    arch = variant.partition(":")[0]
    shape = tuple(shape)
    return shape if len(shape) - 1 in ARCHITECTURES[arch].spatial_dims else VOLUME_FOR.get(shape, shape)


def make(variant: str, likelihood: str, shape=(1, 28, 28), latent_dim=3, conditional=False, prior="normal",
         posterior="diagonal", layers=1, seed=0) -> VAE:
    """A small model: `variant` is an architecture ("conv:resize" = arch conv, layout resize),
    `likelihood` a likelihood ("gaussian:learned" = gaussian with a learned std)."""
    torch.manual_seed(seed)
    arch, _, layout = variant.partition(":")
    hidden = [16, 8] if arch == "mlp" else [4, 8]
    name, _, variance = likelihood.partition(":")
    cfg = ModelConfig(arch=arch, likelihood=name, gaussian_variance=variance or "fixed", latent_dim=latent_dim,
                      hidden=hidden, blocks=1, mixture_components=3, image_shape=list(fit(variant, shape)),
                      conditional=conditional, num_classes=10 if conditional else 0,
                      prior=prior, prior_components=4, posterior=posterior, flow_steps=2, flow_hidden=12,
                      latent_layers=layers, ladder_hidden=[10], **({"conv_layout": layout} if layout else {}))
    cfg.validate()
    return build_model(cfg)


def test_every_variant_builds_its_family():
    assert set(MODELS) >= {"vae", "hierarchical"}
    for prior, posterior, layers in COMPONENTS:
        model = make("mlp", "bernoulli", (1, 8, 8), prior=prior, posterior=posterior, layers=layers)
        family = model_family(model.cfg)
        assert family == ("vae" if layers == 1 else "hierarchical") and type(model) is MODELS[family]
        assert model.latent_dim == 3 * layers and sum(model.layer_sizes) == model.latent_dim


@pytest.mark.parametrize("arch", VARIANTS)
@pytest.mark.parametrize("variant", COMPONENTS, ids=COMPONENT_IDS)
def test_component_shapes(arch, variant):
    prior, posterior, layers = variant
    model = make(arch, "bernoulli", (1, 12, 12), prior=prior, posterior=posterior, layers=layers)
    d = model.latent_dim
    x = torch.rand(5, *model.image_shape).bernoulli()
    q = model.encode(x)
    assert q.mean.shape == (5, d) and q.log_var.shape == (5, d)
    assert q.sample().shape == (5, d) and q.sample(7).shape == (7, 5, d)
    z, log_q = q.rsample_with_log_prob(7)
    assert z.shape == (7, 5, d) and log_q.shape == (7, 5) and torch.isfinite(log_q).all()
    assert model.prior.log_prob(z).shape == (7, 5) and model.prior.sample(4).shape == (4, d)
    terms = model.elbo_terms(x, None, q)
    assert terms.recon.shape == terms.kl.shape == (5,)
    assert terms.kl_per_layer is None if layers == 1 else terms.kl_per_layer.shape == (5, layers)
    logs = model.log_terms(x, None, 6, q)
    assert all(t.shape == (6, 5) for t in logs)
    assert model.log_weights(x, None, 6, q).shape == (6, 5)
    assert model.decode(q.sample(3)).shape == (3, 5, *model.image_shape)
    assert model.sample(4).shape == (4, *model.image_shape) and model.reconstruct(x).shape == x.shape
    assert model.dimension_kl(q).shape == (5, d)


@pytest.mark.parametrize("arch", VARIANTS)
@pytest.mark.parametrize("variant", COMPONENTS, ids=COMPONENT_IDS)
def test_component_save_load_round_trip(tmp_path, arch, variant):
    prior, posterior, layers = variant
    model = make(arch, "bernoulli", (1, 12, 12), prior=prior, posterior=posterior, layers=layers)
    save_weights(model, tmp_path / "w.safetensors")
    other = make(arch, "bernoulli", (1, 12, 12), prior=prior, posterior=posterior, layers=layers, seed=1)
    x = torch.rand(4, *model.image_shape).bernoulli()

    def weights(m):
        return m.log_weights(x, None, 5, generator=torch.Generator().manual_seed(3))

    assert not torch.equal(weights(model), weights(other))
    load_weights(other, tmp_path / "w.safetensors")
    assert torch.equal(weights(model), weights(other))  # encoder, flow, ladder, prior and decoder all loaded
    z = torch.randn(6, model.latent_dim)
    assert torch.equal(model.prior.log_prob(z), other.prior.log_prob(z))


@pytest.mark.parametrize("arch", VARIANTS)
@pytest.mark.parametrize("variant", COMPONENTS, ids=COMPONENT_IDS)
def test_component_determinism(arch, variant):
    prior, posterior, layers = variant
    a, b, c = (make(arch, "bernoulli", (1, 12, 12), prior=prior, posterior=posterior, layers=layers, seed=s)
               for s in (0, 0, 1))
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)  # same seed: same weights
    assert any(not torch.equal(state_a[k], state_c[k]) for k in state_a)
    x = torch.rand(4, *a.image_shape).bernoulli()
    draws = [a.log_weights(x, None, 5, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    samples = [a.prior.sample(3, generator=torch.Generator().manual_seed(s)) for s in (2, 2)]
    assert torch.equal(*samples)


@pytest.mark.parametrize("arch", VARIANTS)
@pytest.mark.parametrize("variant", COMPONENTS, ids=COMPONENT_IDS)
def test_iwae_bound_is_above_the_elbo_and_grows_with_k(arch, variant):
    """E[L_1] = ELBO <= E[L_10] <= E[L_100] (Burda et al. 2015, Theorem 1), from independent draws.

    Every decoder weight is scaled up so that p(x|z) depends strongly on z: the true posterior is
    then far from the untrained q and the bound's gaps are many standard errors wide.
    """
    prior, posterior, layers = variant
    model = make(arch, "bernoulli", (1, 12, 12), prior=prior, posterior=posterior, layers=layers)
    with torch.no_grad():
        for module in model.decoder.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.weight.mul_(3.0)
            elif isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
                module.weight.mul_(4.0)  # 27-voxel kernels average more inputs: a larger scale for the same effect
        x = torch.rand(8, *model.image_shape, generator=torch.Generator().manual_seed(5)).bernoulli()
        q = model.encode(x)
        gen = torch.Generator().manual_seed(11)
        terms = model.elbo_terms(x, None, q, num_samples=1000, generator=gen)
        elbo = -(terms.recon + terms.kl).mean()
        bounds, errors = {}, {}
        for k in (1, 10, 100):  # 1000 fresh weights per K, in groups of K: 1000 / K estimates of L_K
            log_w = model.log_weights(x, None, 1000, q, gen).reshape(1000 // k, k, -1)
            per_group = (torch.logsumexp(log_w, dim=1) - math.log(k)).mean(-1)  # (groups,) image means
            bounds[k], errors[k] = per_group.mean(), per_group.std() / math.sqrt(per_group.numel())
    assert abs(bounds[1] - elbo) < 4 * errors[1] + 1e-4 * abs(elbo), (bounds[1], elbo)  # L_1 estimates the ELBO
    assert bounds[10] > elbo + 3 * errors[10], (bounds, elbo)
    assert bounds[100] > bounds[10] + 3 * (errors[100] + errors[10]), bounds


def test_every_likelihood_and_variance_is_covered():
    assert {v.partition(":")[0] for v in LIKELIHOOD_VARIANTS} == set(LIKELIHOODS)
    assert {"logistic", "logistic-mixture", "gaussian:learned", "gaussian:optimal"} <= set(LIKELIHOOD_VARIANTS)
    assert "resnet" in ARCHITECTURES and "conv3d" in ARCHITECTURES


@pytest.mark.parametrize("arch", VARIANTS)
@pytest.mark.parametrize("likelihood", LIKELIHOOD_VARIANTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_shapes(arch, likelihood, shape):
    model = make(arch, likelihood, shape)
    shape = model.image_shape  # (C, D, H, W) for an architecture of volumes
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
    x = torch.randint(0, 256, (4, *model.image_shape)) / 255.0  # 8-bit values
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


@pytest.mark.parametrize("shape", [(1, 8, 8, 8), (1, 5, 9, 7), (1, 1, 4, 3), (3, 4, 5, 6)])
def test_conv3d_comes_back_at_the_exact_volume_size(shape):
    """Three stride-2 stages halve 9 -> 5 -> 3 -> 2 per axis (rounding up); the transposed convs restore
    exactly 2 -> 3 -> 5 -> 9, so odd volumes need no cropping; the layers are 3-D convolutions."""
    from vaelab.models.conv3d import volume_sizes

    assert volume_sizes((5, 9, 7), 3) == [(5, 9, 7), (3, 5, 4), (2, 3, 2), (1, 2, 1)]
    model = VAE(ModelConfig(arch="conv3d", hidden=[4, 8, 8], latent_dim=5, image_shape=list(shape),
                            likelihood="logistic"))
    x = torch.rand(2, *shape)
    assert model.decode(model.encode(x).mean).shape == (2, 2 * shape[0], *shape[1:])
    assert model.reconstruct(x).shape == x.shape and model.sample(3).shape == (3, *shape)
    kinds = {type(m) for m in model.modules()}
    assert {torch.nn.Conv3d, torch.nn.ConvTranspose3d} <= kinds and torch.nn.Conv2d not in kinds


@pytest.mark.parametrize("likelihood", LIKELIHOOD_VARIANTS)
def test_mlp_takes_volumes_too(likelihood):
    """The mlp flattens (C, D, H, W) like (C, H, W): every likelihood trains it on volumes."""
    model = make("mlp", likelihood, (1, 5, 9, 7))
    x = torch.randint(0, 256, (3, 1, 5, 9, 7)) / 255.0
    parts = OBJECTIVES["elbo"](model, x, None, 1.0, 1)
    parts.loss.backward()
    assert torch.isfinite(parts.loss) and all(p.grad is not None for p in model.parameters())
    assert model.reconstruct(x).shape == x.shape and model.sample(2).shape == (2, 1, 5, 9, 7)


def test_config_knows_which_architectures_take_volumes():
    """config.ARCH_DIMENSIONS (checked without torch) says what ARCHITECTURES' spatial_dims say."""
    from vaelab.config import ARCH_DIMENSIONS

    assert {a: ARCH_DIMENSIONS[a] for a in ARCHITECTURES} == {a: arch.spatial_dims for a, arch in ARCHITECTURES.items()}
    for arch, shape in (("conv", [1, 8, 8, 8]), ("resnet", [1, 8, 8, 8]), ("conv3d", [1, 8, 8])):
        with pytest.raises(ConfigError, match=f"--arch {arch} does not handle"):
            VAE(ModelConfig(arch=arch, image_shape=shape))


@pytest.mark.parametrize("arch", VARIANTS)
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("variant", COMPONENTS, ids=COMPONENT_IDS)
def test_gradients_reach_every_parameter(arch, objective, variant):
    prior, posterior, layers = variant
    conditional = prior != "vamp"  # the VampPrior's pseudo-inputs carry no label
    model = make(arch, "bernoulli", conditional=conditional, prior=prior, posterior=posterior, layers=layers)
    x = torch.rand(6, *model.image_shape)
    y = torch.arange(6) if conditional else None
    if objective == "beta-tc" and variant != ("normal", "diagonal", 1):
        # beta-TC splits a closed-form per-dimension KL: refused (RunConfig refuses it too)
        with pytest.raises(ConfigError, match="beta-tc needs a diagonal Gaussian posterior and the N"):
            OBJECTIVES[objective](model, x, y, 1.0, 3)
        return
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
    x, y = torch.rand(2, *model.image_shape), torch.tensor([3, 4])
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


# ---- the translate family: the Probabilistic U-Net (models/punet.py) --------------------------

from vaelab.models import family_of  # noqa: E402
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
    if objective == "beta-tc":  # needs the fixed N(0, I) prior; the U-Net's prior is a network of its input
        with pytest.raises(ConfigError, match="beta-tc needs"):
            OBJECTIVES[objective](model, x, y, 1.0, 3)
        return
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
