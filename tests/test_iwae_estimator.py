"""The importance-weighted bound L_K against ground truth, and the IWAE training objective.

Ground truth: a linear-Gaussian VAE (probabilistic PCA, Tipping & Bishop 1999),
p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I), so log p(x) = log N(x; b, WWᵀ + σ²I) in closed form and
the exact posterior is N(M⁻¹Wᵀ(x − b), σ²M⁻¹) with M = WᵀW + σ²I. It is scored through the very
functions `vaelab eval` uses (`log_importance_weights`, `iwae_bound`) with vaelab's Gaussian
likelihood and DiagonalGaussian posterior.
"""

from __future__ import annotations

import math

import pytest
import torch

from vaelab.config import ModelConfig
from vaelab.evaluate import iwae_bound, log_mean_exp_chunks
from vaelab.likelihoods import Gaussian
from vaelab.models import VAE
from vaelab.models.posterior import DiagonalGaussian
from vaelab.models.priors import StandardNormal
from vaelab.objectives import elbo_loss, iwae_loss, log_importance_weights


class LinearGaussianVAE:
    """pPCA as a vaelab-compatible model: encode -> DiagonalGaussian, decode -> Gaussian mean.

    The encoder uses the exact posterior mean and marginal variances but no correlations; it
    equals the exact posterior when WᵀW is diagonal.
    """

    conditional = False

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, sigma: float) -> None:
        self.weight, self.bias, self.sigma = weight, bias, sigma  # (P, D), (P,)
        pixels, latent = weight.shape
        self.image_shape = (1, 1, pixels)
        self.latent_dim = latent
        self.likelihood = Gaussian(gaussian_std=sigma)
        self.prior = StandardNormal(latent)
        m = weight.T @ weight + sigma**2 * torch.eye(latent, dtype=weight.dtype)  # (D, D)
        self.posterior_map = torch.linalg.solve(m, weight.T)  # (D, P): M⁻¹Wᵀ
        covariance = sigma**2 * torch.linalg.inv(m)  # exact posterior covariance (D, D)
        self.q_log_var = torch.log(torch.diagonal(covariance))  # (D,): the exact marginal variances

    def encode(self, x: torch.Tensor, y=None) -> DiagonalGaussian:
        flat = x.flatten(1)  # (B, P)
        mean = (flat - self.bias) @ self.posterior_map.T  # (B, D)
        return DiagonalGaussian(mean, self.q_log_var.expand_as(mean))

    def decode(self, z: torch.Tensor, y=None) -> torch.Tensor:
        return (z @ self.weight.T + self.bias).unflatten(-1, self.image_shape)  # (..., 1, 1, P)

    # The combination of prior, posterior and likelihood is vaelab's own (what `vaelab eval` runs).
    log_terms = VAE.log_terms
    log_weights = VAE.log_weights
    elbo_terms = VAE.elbo_terms
    kl_is_closed_form = VAE.kl_is_closed_form
    closed_form_kl = VAE.closed_form_kl

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.weight @ self.weight.T + self.sigma**2 * torch.eye(self.weight.shape[0], dtype=x.dtype)
        return torch.distributions.MultivariateNormal(self.bias, cov).log_prob(x.flatten(1))  # (B,)

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """ELBO in closed form: E_q[log p(x|z)] − KL(q || N(0, I)) -> (B,)."""
        q = self.encode(x)
        flat = x.flatten(1)
        pixels = flat.shape[1]
        var = q.log_var.exp()  # (B, D)
        residual = (flat - q.mean @ self.weight.T - self.bias).square().sum(1)
        trace = (var * self.weight.square().sum(0)).sum(1)  # tr(W diag(v) Wᵀ)
        expected_log_lik = -0.5 * pixels * math.log(2 * math.pi * self.sigma**2) - (residual + trace) / (
            2 * self.sigma**2)
        return expected_log_lik - q.kl()

    def sample_data(self, n: int, gen: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.latent_dim, generator=gen, dtype=self.weight.dtype)
        noise = torch.randn(n, self.weight.shape[0], generator=gen, dtype=self.weight.dtype)
        return (z @ self.weight.T + self.bias + self.sigma * noise).unflatten(-1, self.image_shape)


def _ppca(orthogonal: bool, seed: int = 0) -> LinearGaussianVAE:
    gen = torch.Generator().manual_seed(seed)
    pixels, latent = 6, 2
    weight = torch.randn(pixels, latent, generator=gen, dtype=torch.float64)
    if orthogonal:
        q, _ = torch.linalg.qr(weight)
        weight = q * torch.tensor([2.0, 0.7], dtype=torch.float64)  # orthogonal columns, unequal norms
    else:
        weight[:, 1] = 0.9 * weight[:, 0] + 0.45 * weight[:, 1]  # strongly correlated posterior
    bias = torch.randn(pixels, generator=gen, dtype=torch.float64)
    return LinearGaussianVAE(weight, bias, sigma=0.5)


def test_exact_posterior_gives_log_px_for_every_k():
    # With WᵀW diagonal the diagonal q is the exact posterior, so every weight equals p(x).
    model = _ppca(orthogonal=True)
    gen = torch.Generator().manual_seed(1)
    x = model.sample_data(50, gen)
    truth = model.log_marginal(x)
    for k in (1, 7, 64):
        bound = iwae_bound(model, x, None, k, generator=gen, chunk_size=5)
        torch.testing.assert_close(bound, truth, rtol=0, atol=1e-8)
    torch.testing.assert_close(model.elbo(x), truth, rtol=0, atol=1e-8)


def test_bound_approaches_log_px_from_below_as_k_grows():
    model = _ppca(orthogonal=False)
    gen = torch.Generator().manual_seed(2)
    x = model.sample_data(200, gen)
    log_px = model.log_marginal(x).mean().item()
    bounds = {k: iwae_bound(model, x, None, k, generator=gen).mean().item() for k in (1, 10, 100, 2000)}
    gap = {k: log_px - v for k, v in bounds.items()}
    assert gap[1] > 0.05, "the mean-field posterior must leave a real gap for this test to mean anything"
    # L_1 <= L_10 <= L_100 <= L_2000 <= log p(x), on average over 200 images
    values = [bounds[k] for k in sorted(bounds)]
    assert all(a < b for a, b in zip(values, values[1:])), bounds
    assert bounds[2000] <= log_px + 1e-3
    assert gap[2000] < 0.05 * gap[1], gap  # the bound closes in on the truth


def test_l1_equals_the_closed_form_elbo_in_expectation():
    model = _ppca(orthogonal=False, seed=3)
    gen = torch.Generator().manual_seed(4)
    x = model.sample_data(20, gen)
    log_w = log_importance_weights(model, x, None, 20000, generator=gen)  # (K, B): K draws of L_1
    estimate = log_w.mean(0)
    std_error = log_w.std(0) / math.sqrt(log_w.shape[0])
    z_scores = (estimate - model.elbo(x)) / std_error
    assert z_scores.abs().max() < 5, z_scores
    assert (model.elbo(x) < model.log_marginal(x)).all()


def test_chunked_log_mean_exp_matches_one_logsumexp():
    gen = torch.Generator().manual_seed(5)
    weights = torch.randn(1000, 8, generator=gen) * 30 - 500  # far from 0: needs the max-shift
    weights[3, 2] = 1e4  # one dominant weight
    chunks = torch.split(weights, [1, 333, 7, 659])
    expected = torch.logsumexp(weights, 0) - math.log(1000)
    torch.testing.assert_close(log_mean_exp_chunks(iter(chunks), 1000), expected)


def _small_vae(latent_dim: int = 4) -> VAE:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="mlp", hidden=[32], latent_dim=latent_dim, likelihood="bernoulli",
                      activation="tanh", image_shape=[1, 8, 8])
    return VAE(cfg)


def test_iwae_objective_is_tighter_than_elbo_on_average_and_trains():
    model = _small_vae()
    gen = torch.Generator().manual_seed(6)
    x = torch.bernoulli(torch.rand(32, 1, 8, 8, generator=gen), generator=gen)
    torch.manual_seed(7)
    repeats = 40
    with torch.no_grad():
        l1 = torch.stack([-iwae_loss(model, x, None, 1.0, 1).loss for _ in range(repeats)])
        l50 = torch.stack([-iwae_loss(model, x, None, 1.0, 50).loss for _ in range(repeats)])
        elbo = torch.stack([-elbo_loss(model, x, None, 1.0).loss for _ in range(repeats)])
    assert l50.mean() > l1.mean() + 3 * (l1.std() + l50.std()) / math.sqrt(repeats)
    # L_1 and the ELBO (closed-form KL) estimate the same quantity
    assert abs(l1.mean() - elbo.mean()) < 4 * math.hypot(l1.std(), elbo.std()) / math.sqrt(repeats)

    # Gradients reach every parameter and a few Adam steps raise the bound.
    parts = iwae_loss(model, x, None, 1.0, 10)
    parts.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = -parts.loss.item()
    for _ in range(30):
        loss = iwae_loss(model, x, None, 1.0, 10).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = -iwae_loss(model, x, None, 1.0, 10).loss.item()
    assert after > before + 1.0, (before, after)


@pytest.mark.parametrize("preset, objective, k", [("iwae-paper-vae", "elbo", 1), ("iwae-paper-iwae", "iwae", 50)])
def test_iwae_paper_presets(preset, objective, k):
    from vaelab.cli.options import build_config
    from vaelab.presets import IWAE_PAPER_EPOCHS

    cfg = build_config(preset, None, {})
    assert (cfg.train.objective, cfg.train.iw_samples_train) == (objective, k)
    assert cfg.model.hidden == [200, 200] and cfg.model.latent_dim == 50 and cfg.model.activation == "tanh"
    assert cfg.data.binarize == "dynamic" and cfg.model.likelihood == "bernoulli"
    assert (cfg.train.batch_size, cfg.train.adam_eps, cfg.train.adam_betas) == (20, 1e-4, [0.9, 0.999])
    assert IWAE_PAPER_EPOCHS == 3280 == sum(length for length, _ in cfg.train.lr_segments)
    for i, (length, mult) in enumerate(cfg.train.lr_segments):
        assert length == 3**i and mult == pytest.approx(10 ** (-i / 7))
    short = build_config(preset, None, {"train.epochs": 328})  # --epochs scales every segment
    assert [s[0] for s in short.train.lr_segments] == pytest.approx([3**i / 10 for i in range(8)])
