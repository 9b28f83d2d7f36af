"""Each research-model estimator against a reference.

- the MoG prior's log-density and moments against `torch.distributions.MixtureSameFamily`;
- the VampPrior against an explicit mixture of the encoder's posteriors at the pseudo-inputs;
- the IAF log-determinant against `torch.autograd.functional.jacobian` (log |det|), its
  autoregressive (triangular) structure, and log q of its draws;
- free bits against a hand computation (value and which dimensions get gradient);
- the hierarchical VAE against a linear-Gaussian two-layer model whose marginal log p(x) is
  closed-form: with the exact posterior every importance weight equals p(x), with a perturbed one
  L_K <= log p(x) and grows with K; and its per-layer KLs against the Monte Carlo total.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal

from vaelab.config import ModelConfig, RunConfig, fused_step_fits
from vaelab.errors import ConfigError
from vaelab.models import build_model
from vaelab.models.hierarchical import HierarchicalVAE, precision_weighted
from vaelab.models.iaf import IAFHead, made_masks
from vaelab.models.posterior import DiagonalGaussian
from vaelab.models.priors import MixtureOfGaussians, diagonal_mixture_log_prob
from vaelab.models.vae import ElboTerms
from vaelab.objectives import elbo_loss, free_bits_kl


def model_for(**changes):
    torch.manual_seed(0)
    fields = dict(latent_dim=3, hidden=[16], image_shape=[1, 6, 6], likelihood="bernoulli", prior_components=5,
                  ladder_hidden=[12], flow_hidden=12)
    fields.update(changes)
    cfg = ModelConfig(**fields)
    cfg.validate()
    return build_model(cfg)


# ---- the learned mixture prior ---------------------------------------------------------------------


def test_mog_log_density_matches_mixture_same_family():
    torch.manual_seed(1)
    prior = MixtureOfGaussians(4, 6)
    with torch.no_grad():
        prior.logits.normal_()
        prior.log_vars.uniform_(-2.0, 1.0)
    log_w, means, log_vars = prior.components()
    components = Independent(Normal(means, (0.5 * log_vars).exp()), 1)
    reference = MixtureSameFamily(Categorical(logits=prior.logits), components)
    z = torch.randn(7, 9, 4) * 2.5
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.logsumexp(log_w, 0), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_mog_samples_and_marginals_match_the_mixture():
    torch.manual_seed(2)
    prior = MixtureOfGaussians(3, 4)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5]))
        prior.means.mul_(3.0)
    log_w, means, log_vars = prior.components()
    components = Independent(Normal(means, (0.5 * log_vars).exp()), 1)
    reference = MixtureSameFamily(Categorical(logits=prior.logits), components)
    mean, std = prior.marginals()
    torch.testing.assert_close(mean, reference.mean.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std, reference.variance.detach().sqrt(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        z = prior.sample(40_000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), mean, atol=0.06, rtol=0)
    torch.testing.assert_close(z.std(0), std, rtol=0.03, atol=0)
    # Temperature 0 puts every draw on a component mean.
    cold = prior.sample(50, generator=torch.Generator().manual_seed(1), temperature=0.0).detach()
    assert torch.cdist(cold, means.detach()).min(1).values.max() < 1e-5


def test_diagonal_mixture_log_prob_handles_extreme_components():
    means = torch.tensor([[0.0, 0.0], [50.0, -50.0]])
    log_vars = torch.tensor([[-8.0, -8.0], [3.0, 3.0]])
    log_w = torch.log(torch.tensor([0.3, 0.7]))
    z = torch.tensor([[0.01, -0.02], [49.0, -51.0], [1e3, 1e3]])
    ref = MixtureSameFamily(Categorical(probs=log_w.exp()), Independent(Normal(means, (0.5 * log_vars).exp()), 1))
    torch.testing.assert_close(diagonal_mixture_log_prob(z, log_w, means, log_vars), ref.log_prob(z), rtol=1e-4,
                               atol=1e-3)


# ---- the VampPrior ---------------------------------------------------------------------------------


@pytest.mark.parametrize("posterior", ["diagonal", "iaf"])
def test_vamp_prior_is_the_mixture_of_the_encoders_posteriors_at_the_pseudo_inputs(posterior):
    model = model_for(prior="vamp", posterior=posterior)
    prior = model.prior
    u = prior.pseudo_inputs()
    assert u.shape == (5, 1, 6, 6) and u.min() >= 0 and u.max() <= 1
    z = torch.randn(4, 3, 3)
    # Explicitly: encode each pseudo-input on its own and average the K densities.
    densities = []
    for k in range(5):
        q = model.encode(u[k : k + 1])
        base_mean = getattr(q, "base_mean", q.mean)  # an IAF posterior's mixture uses its base Gaussian
        densities.append(DiagonalGaussian(base_mean, q.log_var).log_prob(z[..., None, :])[..., 0])
    reference = torch.logsumexp(torch.stack(densities), 0) - math.log(5)
    torch.testing.assert_close(prior.log_prob(z), reference, rtol=1e-5, atol=1e-4)
    # Its gradient reaches the pseudo-inputs and the encoder.
    prior.log_prob(z).sum().backward()
    assert prior.pseudo_weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_vamp_pseudo_inputs_start_as_in_the_paper():
    model = model_for(prior="vamp", prior_components=400, image_shape=[1, 10, 10])
    weight = model.prior.pseudo_weight.detach()
    assert abs(weight.mean().item() - 0.05) < 0.002 and abs(weight.std().item() - 0.01) < 0.001


def test_vamp_components_are_cached_only_without_gradients():
    model = model_for(prior="vamp")
    z = torch.randn(6, 3)
    with torch.no_grad():
        first = model.prior.log_prob(z)
        model.prior.log_prob(z)
        assert model.prior._cache is not None
        for p in model.encoder.parameters():
            p.add_(0.1)  # an optimiser step: the cache must not be reused
        changed = model.prior.log_prob(z)
    assert not torch.allclose(first, changed)
    explicit = model.prior.log_prob(z)  # with gradients: always recomputed
    torch.testing.assert_close(changed, explicit.detach())


def test_vamp_refuses_a_conditional_model():
    with pytest.raises(ConfigError, match="vamp"):
        ModelConfig(prior="vamp", conditional=True, num_classes=10).validate()


# ---- the IAF posterior -----------------------------------------------------------------------------


def test_made_masks_are_autoregressive():
    for d in (1, 2, 5):
        order = torch.arange(1, d + 1).flip(0)
        to_hidden, hidden_hidden, to_out = made_masks(order, 9)
        connectivity = (to_out @ hidden_hidden @ to_hidden) > 0  # output i <- input j through both hidden layers
        allowed = order[:, None] > order[None, :]
        assert not (connectivity & ~allowed).any()
        if d > 1:
            assert connectivity[allowed].all()  # and nothing allowed is cut off (hidden width 9 >= d - 1)


@pytest.mark.parametrize("latent_dim", [1, 4])
def test_iaf_log_determinant_matches_autograd_jacobian(latent_dim):
    torch.manual_seed(3)
    head = IAFHead(latent_dim, steps=3, hidden=10)
    with torch.no_grad():  # away from the near-identity start, so the test sees real dependencies
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    context = torch.randn(1, 10)
    z0 = torch.randn(1, latent_dim)

    def flow(z):
        return head.flow(z[None], context)[0][0]

    jac = torch.autograd.functional.jacobian(flow, z0[0])  # (D, D)
    sign, log_abs_det = torch.linalg.slogdet(jac.double())
    _, log_det = head.flow(z0, context)
    torch.testing.assert_close(log_det[0].double(), log_abs_det, rtol=1e-5, atol=1e-5)
    assert sign > 0
    # One step is triangular in its ordering (step 0: natural order -> lower triangular).
    step_jac = torch.autograd.functional.jacobian(lambda z: head.steps[0].transform(z[None], context)[0][0], z0[0])
    assert torch.allclose(torch.triu(step_jac, 1), torch.zeros(()), atol=0)


def test_iaf_log_q_is_base_density_minus_log_determinant():
    model = model_for(posterior="iaf", flow_steps=2, latent_dim=3)
    x = torch.rand(2, 1, 6, 6)
    q = model.encode(x)
    gen = torch.Generator().manual_seed(0)
    z, log_q = q.rsample_with_log_prob(4, generator=gen)
    eps = torch.randn((4, 2, 3), generator=torch.Generator().manual_seed(0))  # the same noise
    z0 = q.std * eps + q.base_mean
    base = Independent(Normal(q.base_mean, q.std), 1).log_prob(z0)
    for k in range(4):
        for b in range(2):
            def flow(v, context=q.context[b : b + 1]):
                return q.head.flow(v[None], context)[0][0]

            jac = torch.autograd.functional.jacobian(flow, z0[k, b].detach())
            expected = base[k, b] - torch.linalg.slogdet(jac)[1]
            torch.testing.assert_close(log_q[k, b], expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(z, q.head.flow(z0, q.context)[0])
    torch.testing.assert_close(q.mean, q.head.flow(q.base_mean, q.context)[0])  # the code: zero noise


def test_iaf_draws_all_noise_through_draw_noise():
    model = model_for(posterior="iaf")
    q = model.encode(torch.rand(3, 1, 6, 6))
    calls = []
    original = q.draw_noise

    def counted(shape, generator=None):
        calls.append(shape)
        return original(shape, generator)

    q.draw_noise = counted
    q.sample(5)
    q.rsample_with_log_prob(2)
    assert calls == [(5, 3, 3), (2, 3, 3)]


# ---- free bits -------------------------------------------------------------------------------------


def test_free_bits_against_a_hand_computation():
    kl_per_dim = torch.tensor([[0.1, 2.0, 0.5], [0.3, 1.0, 0.7]], requires_grad=True)  # batch means 0.2, 1.5, 0.6
    terms = ElboTerms(torch.zeros(2), kl_per_dim.sum(1), kl_per_dim)
    value = free_bits_kl(terms, (3,), 0.5)
    assert value.item() == pytest.approx(0.5 + 1.5 + 0.6)
    value.backward()
    # Below its floor a dimension gets no gradient; above it, d/dKL_bd = 1/B.
    torch.testing.assert_close(kl_per_dim.grad, torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]]))
    # Per layer (floors lambda * D_l) and for the whole code (lambda * D).
    layers = ElboTerms(torch.zeros(2), torch.tensor([3.0, 5.0]), None, torch.tensor([[1.0, 2.0], [1.0, 3.0]]))
    assert free_bits_kl(layers, (4, 2), 0.5).item() == pytest.approx(max(2.0, 1.0) + max(1.0, 2.5))
    whole = ElboTerms(torch.zeros(2), torch.tensor([1.0, 2.0]), None)
    assert free_bits_kl(whole, (4,), 0.5).item() == pytest.approx(2.0)
    assert free_bits_kl(whole, (2,), 0.5).item() == pytest.approx(1.5)


def test_elbo_loss_with_free_bits_uses_the_floored_kl():
    model = model_for(latent_dim=4)
    x = torch.rand(5, 1, 6, 6).bernoulli()
    torch.manual_seed(9)
    parts = elbo_loss(model, x, None, 0.7, free_bits=0.3)
    torch.manual_seed(9)
    terms = model.elbo_terms(x, None)
    floored = terms.kl_per_dim.mean(0).clamp_min(0.3).sum()
    torch.testing.assert_close(parts.loss, terms.recon.mean() + 0.7 * floored)
    torch.testing.assert_close(parts.kl, terms.kl.mean())  # the reported KL is the plain one
    torch.testing.assert_close(parts.extras["kl_free_bits"], floored)


def test_free_bits_needs_the_elbo_and_turns_the_fused_step_off():
    cfg = RunConfig()
    cfg.train.free_bits = 0.5
    assert not fused_step_fits(cfg)
    cfg.train.objective = "iwae"
    with pytest.raises(ConfigError, match="free-bits"):
        cfg.validate()
    for change in ({"prior": "mog"}, {"prior": "vamp"}, {"posterior": "iaf"}, {"latent_layers": 2}):
        other = RunConfig()
        for key, value in change.items():
            setattr(other.model, key, value)
        assert not fused_step_fits(other), change
    assert fused_step_fits(RunConfig())  # the default recipe keeps its fast path


def test_fused_step_refuses_every_research_model_even_under_a_plain_config():
    from vaelab.fused import supports

    plain = RunConfig()
    plain.model.image_shape = [1, 6, 6]
    assert supports(model_for(), plain, 1)
    for changes in ({"prior": "mog"}, {"prior": "vamp"}, {"posterior": "iaf"}, {"latent_layers": 2}):
        assert not supports(model_for(**changes), plain, 1), changes


# ---- the hierarchical VAE --------------------------------------------------------------------------

P, D1, D2 = 5, 3, 2
SIGMA, S1, C = 0.4, 0.7, 1.5  # likelihood std, std of p(z1|z2), scale of W = C [I; 0]


def linear_gaussian_hvae(exact: bool = True, shift: float = 0.0):
    """A two-layer HierarchicalVAE made linear-Gaussian, with log p(x) in closed form:

        z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, S1^2 I), x | z1 ~ N(W z1 + b, SIGMA^2 I),
        so x ~ N(W a + b, W (A A^T + S1^2 I) W^T + SIGMA^2 I).

    W = C [I; 0] and A with orthogonal columns make the exact posterior p(z2|x) p(z1|z2, x)
    representable by the ladder: the bottom-up term of z1 is the likelihood's own Gaussian in z1,
    and q(z2|x) is the exact (diagonal) p(z2|x). `shift` moves the bottom-up means off the truth.
    """
    torch.manual_seed(4)
    cfg = ModelConfig(latent_dim=2, hidden=[8], image_shape=[1, 1, P], likelihood="gaussian", gaussian_std=SIGMA,
                      latent_layers=2, layer_dims=[D1, D2], ladder_hidden=[6])
    model = build_model(cfg).double()
    a_mat = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)  # (D1, D2) orthogonal columns
    a_vec = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    w_mat = C * torch.eye(P, D1, dtype=torch.float64)
    b_vec = torch.linspace(-0.2, 0.2, P, dtype=torch.float64)
    down = torch.nn.Linear(D2, 2 * D1).double()
    with torch.no_grad():
        down.weight.zero_()
        down.weight[:D1] = a_mat
        down.bias[:D1] = a_vec
        down.bias[D1:] = math.log(S1**2)
    model.prior.down[0] = down
    model.decode = lambda z, y=None: (z[..., :D1] @ w_mat.T + b_vec).unflatten(-1, (1, 1, P))

    alpha2 = (a_mat**2).sum(0)  # (D2,) the squared column norms of A
    noise = C**2 * S1**2 + SIGMA**2

    def bottom_up(x, cond):
        r = x.flatten(1)[:, :D1] - b_vec[:D1]  # (B, D1)
        mean1, log_var1 = r / C, torch.full_like(r, math.log(SIGMA**2 / C**2))
        term_precision = C**2 * alpha2 / noise  # p(x | z2) as a Gaussian in z2
        term_mean = (r / C - a_vec) @ a_mat / alpha2
        precision = 1.0 + term_precision  # times the N(0, I) prior: the exact p(z2 | x)
        mean2 = term_mean * term_precision / precision
        log_var2 = (-torch.log(precision)).expand_as(mean2)
        if not exact:
            mean1, mean2 = mean1 + shift, mean2 - shift
        return [mean1, mean2], [log_var1, log_var2]

    model._bottom_up = bottom_up
    covariance = w_mat @ (a_mat @ a_mat.T + S1**2 * torch.eye(D1, dtype=torch.float64)) @ w_mat.T
    marginal = MultivariateNormal(w_mat @ a_vec + b_vec, covariance + SIGMA**2 * torch.eye(P, dtype=torch.float64))
    return model, marginal


def test_hierarchical_iwae_weights_equal_log_px_with_the_exact_posterior():
    model, marginal = linear_gaussian_hvae(exact=True)
    torch.manual_seed(6)
    x = marginal.sample((6,)).reshape(6, 1, 1, P)
    log_px = marginal.log_prob(x.flatten(1))  # (6,)
    log_w = model.log_weights(x, None, 50, generator=torch.Generator().manual_seed(0))  # (50, 6)
    torch.testing.assert_close(log_w, log_px.expand_as(log_w), rtol=0, atol=1e-9)
    # The ELBO with analytic per-layer KLs is log p(x) in expectation.
    terms = model.elbo_terms(x, None, num_samples=20_000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(-(terms.recon + terms.kl), log_px, rtol=0, atol=0.03)


def test_hierarchical_bound_is_below_log_px_and_tightens_with_k():
    model, marginal = linear_gaussian_hvae(exact=False, shift=0.6)
    torch.manual_seed(5)
    x = marginal.sample((20,)).reshape(20, 1, 1, P)
    log_px = marginal.log_prob(x.flatten(1)).mean()
    gen = torch.Generator().manual_seed(2)
    bounds = {}
    for k in (1, 10, 200):
        log_w = model.log_weights(x, None, 2000 // k * k, generator=gen).reshape(-1, k, 20)
        bounds[k] = (torch.logsumexp(log_w, 1) - math.log(k)).mean()
    assert bounds[1] < bounds[10] < bounds[200] < log_px, (bounds, log_px)
    assert log_px - bounds[200] < 0.3 * (log_px - bounds[1])  # most of the gap closes


def test_hierarchical_per_layer_kls_sum_to_the_monte_carlo_kl():
    """sum_l E[KL(q(z_l|z_{l+1},x) || p(z_l|z_{l+1}))] = E_q[log q(z|x) - log p(z)] (the chain rule of KL)."""
    for prior in ("normal", "mog"):
        model = model_for(latent_layers=3, layer_dims=[4, 3, 2], prior=prior)
        with torch.no_grad():
            for p in model.prior.down.parameters():
                p.mul_(3.0)  # conditionals that really depend on the layer above
            x = torch.rand(4, 1, 6, 6).bernoulli()
            q = model.encode(x)
            terms = model.elbo_terms(x, None, q, num_samples=40_000, generator=torch.Generator().manual_seed(0))
            logs = model.log_terms(x, None, 40_000, q, generator=torch.Generator().manual_seed(1))
            monte_carlo = (logs.log_qz - logs.log_pz).mean(0)
        torch.testing.assert_close(terms.kl, monte_carlo, rtol=0.02, atol=0.03)
        torch.testing.assert_close(terms.kl_per_layer.sum(-1), terms.kl)
        assert (terms.kl_per_layer > 0).all()
        assert (terms.kl_per_dim is None) == (prior == "mog")  # a mixture on top has no per-dim closed form


def test_precision_weighting_is_the_product_of_two_gaussians():
    mean_hat, log_var_hat = torch.tensor([1.0, -2.0]), torch.tensor([0.5, -1.0])
    mean_p, log_var_p = torch.tensor([0.0, 3.0]), torch.tensor([-0.3, 2.0])
    mean, log_var = precision_weighted(mean_hat, log_var_hat, mean_p, log_var_p)
    # N(z; m1, v1) N(z; m2, v2) is proportional to N(z; m, v): compare log-densities at several z.
    z = torch.linspace(-4, 4, 9)[:, None]
    product = (Normal(mean_hat, (0.5 * log_var_hat).exp()).log_prob(z)
               + Normal(mean_p, (0.5 * log_var_p).exp()).log_prob(z))
    combined = Normal(mean, (0.5 * log_var).exp()).log_prob(z)
    difference = product - combined  # constant in z
    torch.testing.assert_close(difference, difference[:1].expand_as(difference), rtol=0, atol=1e-5)


def test_hierarchical_posterior_draws_all_noise_in_one_call():
    model = model_for(latent_layers=2)
    assert isinstance(model, HierarchicalVAE)
    q = model.encode(torch.rand(3, 1, 6, 6))
    calls = []
    original = q.draw_noise
    q.draw_noise = lambda shape, generator=None: calls.append(shape) or original(shape, generator)
    model.elbo_terms(torch.rand(3, 1, 6, 6).bernoulli(), None, q)
    model.log_weights(torch.rand(3, 1, 6, 6).bernoulli(), None, 4, q)
    assert calls == [(3, 6), (4, 3, 6)]


def test_layer_dims_alone_set_the_number_of_layers():
    from vaelab.models import model_family

    cfg = ModelConfig(layer_dims=[4, 2])
    cfg.validate()
    assert cfg.stochastic_layers == 2 and cfg.layer_sizes() == [4, 2] and model_family(cfg) == "hierarchical"
    assert ModelConfig(latent_layers=3, latent_dim=5).layer_sizes() == [5, 5, 5]


def test_hierarchical_config_is_checked():
    for changes, message in (({"latent_layers": 2, "posterior": "iaf"}, "posterior diagonal"),
                             ({"layer_dims": [3]}, "2 or more stochastic layers"),
                             ({"latent_layers": 3, "layer_dims": [3, 2]}, "one size per stochastic layer"),
                             ({"latent_layers": 0}, "latent_layers"),
                             ({"ladder_hidden": []}, "ladder_hidden")):
        with pytest.raises(ConfigError, match=message):
            ModelConfig(**changes).validate()
