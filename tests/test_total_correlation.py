"""beta-TCVAE: the minibatch-weighted estimator of q(z), the KL decomposition, the objective in training."""

from __future__ import annotations

import math

import pytest
import torch

from kill_resume import assert_same_run, killed_then_resumed, metrics
from vaelab.cli import main
from vaelab.config import DEFAULT_TC_WEIGHT, ModelConfig, RunConfig, fused_step_fits
from vaelab.distributed import DistContext
from vaelab.errors import ConfigError
from vaelab.fused import make_fused_step
from vaelab.models import VAE
from vaelab.objectives import OBJECTIVES, beta_tc_loss, make_objective
from vaelab.total_correlation import (
    aggregate_log_densities,
    gaussian_total_correlation,
    kl_decomposition,
    mws_log_weights,
    pairwise_log_density,
)


def _gaussian_posteriors(n: int, covariance: torch.Tensor, std: float, seed: int):
    """N posteriors N(mu_n, std² I) with mu_n ~ N(0, covariance - std² I): their mixture (the
    aggregate posterior) tends to N(0, covariance) as N grows. -> mean, log_var (N, D), z (N, D)."""
    gen = torch.Generator().manual_seed(seed)
    d = covariance.shape[0]
    spread = torch.linalg.cholesky(covariance - std ** 2 * torch.eye(d, dtype=torch.float64))
    mean = torch.randn(n, d, generator=gen, dtype=torch.float64) @ spread.T
    log_var = torch.full_like(mean, 2 * math.log(std))
    z = mean + std * torch.randn(n, d, generator=gen, dtype=torch.float64)  # z_n ~ q(z|n)
    return mean, log_var, z


def test_gaussian_total_correlation_reference():
    # Independent dimensions have none; two with correlation r have -1/2 log(1 - r²).
    assert gaussian_total_correlation(torch.diag(torch.tensor([1.0, 4.0, 9.0]))) == pytest.approx(0.0, abs=1e-12)
    cov = torch.tensor([[4.0, 0.6 * 2 * 3], [0.6 * 2 * 3, 9.0]], dtype=torch.float64)
    assert gaussian_total_correlation(cov) == pytest.approx(-0.5 * math.log(1 - 0.36))


def test_mws_total_correlation_matches_the_exact_tc_of_a_gaussian():
    """The estimated TC of an aggregate posterior that is (nearly) N(0, Sigma), from shuffled
    batches as training draws them, against -1/2 log det(correlation)."""
    cov = torch.tensor([[1.0, 0.6, 0.3], [0.6, 1.0, 0.5], [0.3, 0.5, 1.0]], dtype=torch.float64)
    exact = gaussian_total_correlation(cov)  # 0.367 nats
    n, batch = 10_000, 1_000
    mean, log_var, z = (t.float() for t in _gaussian_posteriors(n, cov, std=0.3, seed=0))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    estimates = []
    for lo in range(0, n, batch):
        rows = order[lo:lo + batch]
        log_qz, log_marginals = aggregate_log_densities(z[rows], mean[rows], log_var[rows], dataset_size=n)
        estimates.append((log_qz - log_marginals).mean())
    tc = float(torch.stack(estimates).mean())
    assert tc == pytest.approx(exact, abs=0.03)  # 0.359 here; the estimate of log q(z) is biased low by O(1/M)
    # Chen et al.'s printed weights (1/(NM) for every term) put the TC off by (D - 1) log N here.
    log_q = pairwise_log_density(z[order[:batch]], mean[order[:batch]], log_var[order[:batch]])
    chen = (torch.logsumexp(log_q.sum(-1), 1) - torch.logsumexp(log_q, 1).sum(-1)).mean() + 2 * math.log(n * batch)
    assert float(chen) > exact + 10


def test_mws_estimate_of_q_z_is_unbiased_over_random_batches():
    """For a fixed draw z_i ~ q(z|n_i), sum_j w_ij q(z_i|n_j) over batches holding n_i and M - 1
    others drawn without replacement averages to the exact q(z_i) = (1/N) sum_n q(z_i|n)."""
    n, batch, i = 40, 8, 3
    mean, log_var, z = _gaussian_posteriors(n, torch.eye(2, dtype=torch.float64) * 1.5, std=0.5, seed=2)
    log_q_all = pairwise_log_density(z[i:i + 1], mean, log_var).sum(-1)[0]  # (N,) log q(z_i | n)
    exact = float(log_q_all.exp().mean())
    weights = mws_log_weights(batch, n, torch.float64, torch.device("cpu"))[0].exp()  # row of image i first
    others = torch.tensor([j for j in range(n) if j != i])
    gen = torch.Generator().manual_seed(0)
    total, trials = 0.0, 20_000
    for _ in range(trials):
        rows = torch.cat([torch.tensor([i]), others[torch.randperm(n - 1, generator=gen)[:batch - 1]]])
        total += float((weights * log_q_all[rows].exp()).sum())
    assert total / trials == pytest.approx(exact, rel=0.02)
    # The weights sum to 1 (a weighted average of densities is a density).
    assert float(weights.sum()) == pytest.approx(1.0)


def test_the_three_terms_sum_to_the_monte_carlo_kl_and_mi_is_at_most_log_n():
    torch.manual_seed(0)
    mean, log_var = torch.randn(64, 5), torch.randn(64, 5) - 1
    z = mean + torch.exp(0.5 * log_var) * torch.randn(64, 5)
    log_q = -0.5 * ((z - mean) ** 2 / log_var.exp() + log_var + math.log(2 * math.pi)).sum(-1)
    log_p = -0.5 * (z ** 2 + math.log(2 * math.pi)).sum(-1)
    for n in (64, 1000, 737_280):
        parts = kl_decomposition(z, mean, log_var, log_q, log_p, dataset_size=n)
        torch.testing.assert_close(sum(parts), log_q - log_p, rtol=0, atol=1e-4)
        assert (parts.index_code_mi <= math.log(n) + 1e-4).all()  # log q(z|n) - log q(z) <= log N
    one = kl_decomposition(z[:1], mean[:1], log_var[:1], log_q[:1], log_p[:1], dataset_size=1000)
    assert float(one.index_code_mi) == pytest.approx(0.0, abs=1e-5)  # a batch of one: q(z) = q(z|x)
    assert float(one.total_correlation) == pytest.approx(0.0, abs=1e-5)


def _model() -> VAE:
    torch.manual_seed(0)
    return VAE(ModelConfig(hidden=[32], latent_dim=4, likelihood="bernoulli", image_shape=[1, 8, 8]))


def test_objective_decomposes_the_kl_of_its_own_draw_and_weighs_tc():
    model = _model()
    x = torch.rand(16, 1, 8, 8)
    torch.manual_seed(7)
    parts = beta_tc_loss(model, x, None, 1.0, tc_weight=4.0, dataset_size=1000)
    torch.manual_seed(7)  # the same draw again, through the model's API
    q = model.encode(x)
    z = q.sample()
    mc_kl = (q.log_prob(z) - model.prior.log_prob(z)).mean()
    recon = -model.likelihood.log_prob(x, model.decode(z)).mean()
    e = parts.extras
    assert set(e) == {"index_code_mi", "total_correlation", "dim_kl"}
    torch.testing.assert_close(e["index_code_mi"] + e["total_correlation"] + e["dim_kl"], mc_kl, rtol=0, atol=1e-4)
    torch.testing.assert_close(parts.recon, recon)
    torch.testing.assert_close(parts.loss, recon + e["index_code_mi"] + 4.0 * e["total_correlation"] + e["dim_kl"])
    torch.testing.assert_close(parts.kl, q.kl().mean())  # the reported KL is the closed form, as for elbo
    # The KL-warm-up weight scales all three terms.
    torch.manual_seed(7)
    half = beta_tc_loss(model, x, None, 0.5, tc_weight=4.0, dataset_size=1000)
    torch.testing.assert_close(half.loss, recon + 0.5 * (e["index_code_mi"] + 4.0 * e["total_correlation"]
                                                         + e["dim_kl"]))
    # With tc_weight 1 it is the negative ELBO, estimated on the same draw.
    torch.manual_seed(7)
    plain = beta_tc_loss(model, x, None, 1.0, tc_weight=1.0, dataset_size=1000)
    torch.testing.assert_close(plain.loss, recon + mc_kl, rtol=0, atol=1e-4)


def test_make_objective_binds_the_weight_and_the_dataset_size():
    cfg = RunConfig()
    assert make_objective(cfg.train, 500) is OBJECTIVES["elbo"]
    cfg.train.objective, cfg.train.tc_weight = "beta-tc", 3.0
    bound = make_objective(cfg.train, 500)
    assert bound.func is beta_tc_loss and bound.keywords == {"tc_weight": 3.0, "dataset_size": 500}


def test_config_rules_and_the_fused_step_is_not_chosen():
    cfg = RunConfig()
    cfg.train.objective = "beta-tc"
    cfg.model.image_shape = [1, 8, 8]
    cfg.validate()
    assert not fused_step_fits(cfg)
    assert make_fused_step(VAE(cfg.model), cfg, 1) is None
    with pytest.raises(ConfigError, match="--step fused needs"):
        RunConfig.from_dict({"train": {"objective": "beta-tc", "step": "fused"}})
    with pytest.raises(ConfigError, match="leave --beta at 1"):
        RunConfig.from_dict({"train": {"objective": "beta-tc", "beta": 4.0}})
    with pytest.raises(ConfigError, match="--tc-weight is for --objective beta-tc"):
        RunConfig.from_dict({"train": {"tc_weight": 2.0}})
    with pytest.raises(ConfigError, match="tc_weight must be in"):
        RunConfig.from_dict({"train": {"objective": "beta-tc", "tc_weight": -1.0}})
    assert RunConfig().train.tc_weight == DEFAULT_TC_WEIGHT


def test_beta_tc_is_refused_under_torchrun():
    from vaelab.training import _check_step

    cfg = RunConfig()
    cfg.train.objective = "beta-tc"
    _check_step(cfg, DistContext())
    with pytest.raises(ConfigError, match="trains in one process"):
        _check_step(cfg, DistContext(rank=0, world_size=2))


SHAPES_FLAGS = ["--dataset", "shapes", "--shapes-subsample", "240", "--objective", "beta-tc", "--tc-weight", "5",
                "--likelihood", "bernoulli", "--hidden", "16", "--latent-dim", "3", "--batch-size", "32",
                "--threads", "1", "--seed", "4"]


def test_training_logs_the_three_terms_with_n_from_the_training_split(tmp_path, monkeypatch):
    from vaelab import objectives

    seen = []

    def recording(*args, dataset_size=None, **kwargs):
        seen.append(dataset_size)
        return beta_tc_loss(*args, dataset_size=dataset_size, **kwargs)

    monkeypatch.setitem(objectives.OBJECTIVES, "beta-tc", recording)
    run = tmp_path / "run"
    assert main(["train", *SHAPES_FLAGS, "--epochs", "2", "--out", str(run), "--quiet"]) == 0
    assert set(seen) == {240 - 24 - 22}  # the training split: 240 - 10 % test - 10 % of the rest
    rows = metrics(run)
    assert len(rows) == 2
    for row in rows:
        terms = row["train_index_code_mi"] + row["train_total_correlation"] + row["train_dim_kl"]
        assert math.isfinite(terms) and row["train_index_code_mi"] >= 0
        assert row["train_index_code_mi"] <= math.log(194) + 1e-6


@pytest.mark.slow
def test_beta_tc_resumes_bit_identically_after_a_kill(tmp_path):
    flags = [*SHAPES_FLAGS, "--epochs", "2", "--checkpoint-every", "2"]
    reference, run, state = killed_then_resumed(tmp_path, flags, kill_at=3)  # step 0, 2, then killed writing 4
    assert (state["epoch"], state["batch"]) == (0, 2)
    assert_same_run(reference, run)  # weights, optimizer, RNG, and train_<term> of the resumed epoch
    assert "train_total_correlation" in metrics(run)[0]
