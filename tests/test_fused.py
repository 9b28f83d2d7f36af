"""The hand-derived training step (vaelab.fused) against autograd on the same model and draws."""

from __future__ import annotations

import pytest
import torch

from vaelab.config import RunConfig
from vaelab.errors import ConfigError
from vaelab.fused import FusedELBOStep, make_fused_step, supports
from vaelab.models import VAE
from vaelab.objectives import elbo_loss


def _model(activation="relu", likelihood="bernoulli", hidden=(24, 12), conditional=False, arch="mlp", seed=0):
    cfg = RunConfig()
    cfg.model.arch, cfg.model.activation, cfg.model.likelihood = arch, activation, likelihood
    cfg.model.hidden, cfg.model.latent_dim, cfg.model.image_shape = list(hidden), 4, [1, 6, 5]
    cfg.model.conditional, cfg.model.num_classes = conditional, 3 if conditional else 0
    cfg.model.gaussian_std = 0.3
    torch.manual_seed(seed)
    return VAE(cfg.model), cfg


def _autograd(model, x, y, beta, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    parts = elbo_loss(model, x, y, beta)
    parts.loss.backward()
    return parts, {n: p.grad.clone() for n, p in model.named_parameters()}


def _fused(model, activation, x, y, beta, seed):
    torch.manual_seed(seed)
    parts = FusedELBOStep(model, activation)(x, y, beta, x.shape[0])
    return parts, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "elu"])
@pytest.mark.parametrize("conditional", [False, True])
def test_loss_and_every_gradient_match_autograd(likelihood, activation, conditional):
    model, _ = _model(activation, likelihood, conditional=conditional)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(9, 1, 6, 5, generator=gen)
    if likelihood == "bernoulli":
        x = torch.bernoulli(x, generator=gen)
    y = torch.randint(0, 3, (9,), generator=gen) if conditional else None
    ref_parts, ref = _autograd(model, x, y, 0.7, seed=3)
    parts, got = _fused(model, activation, x, y, 0.7, seed=3)
    for a, b in zip(parts[:3], ref_parts[:3]):  # loss, recon, kl
        assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert parts.extras == ref_parts.extras == {}
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_log_variance_clamp_stops_the_gradient_as_autograd_does():
    model, _ = _model()
    d = model.latent_dim
    with torch.no_grad():  # push two log-variance outputs far outside [-30, 20]
        model.encoder.head.bias[d] = 80.0
        model.encoder.head.bias[d + 1] = -90.0
    x = torch.rand(5, 1, 6, 5)
    _, ref = _autograd(model, x, None, 1.0, seed=4)
    _, got = _fused(model, "relu", x, None, 1.0, seed=4)
    assert ref["encoder.head.bias"][d] == 0 and ref["encoder.head.bias"][d + 1] == 0
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_gradients_are_overwritten_in_place_not_accumulated():
    model, _ = _model()
    step = FusedELBOStep(model, "relu")
    x = torch.rand(6, 1, 6, 5)
    torch.manual_seed(0)
    step(x, None, 1.0, 6)
    first = {n: (p.grad.data_ptr(), p.grad.clone()) for n, p in model.named_parameters()}
    torch.manual_seed(0)
    step(x, None, 1.0, 6)
    for n, p in model.named_parameters():
        assert p.grad.data_ptr() == first[n][0]  # the same buffer: no allocation per step
        assert torch.equal(p.grad, first[n][1])  # the same values: not summed with the last step


def test_where_the_fused_step_applies():
    mlp, cfg = _model()
    assert supports(mlp, cfg, world_size=1)
    assert not supports(mlp, cfg, world_size=2)  # DDP needs autograd's hooks
    gelu, gcfg = _model(activation="gelu")
    assert make_fused_step(gelu, gcfg, 1) is None  # auto: autograd trains it
    conv, ccfg = _model(arch="conv", hidden=(8, 16))
    assert make_fused_step(conv, ccfg, 1) is None
    cfg.train.objective = "iwae"
    assert make_fused_step(mlp, cfg, 1) is None
    cfg.train.objective, cfg.train.step = "elbo", "autograd"
    assert make_fused_step(mlp, cfg, 1) is None
    cfg.train.step = "fused"
    assert isinstance(make_fused_step(mlp, cfg, 1), FusedELBOStep)
    with pytest.raises(ConfigError, match="--step fused"):
        make_fused_step(mlp, cfg, 2)


@pytest.mark.parametrize("field,value", [("model.arch", "conv"), ("train.objective", "iwae"),
                                         ("model.activation", "gelu"), ("train.precision", "bf16"),
                                         ("train.compile", True)])
def test_config_refuses_step_fused_where_it_cannot_run(field, value):
    cfg = RunConfig()
    cfg.train.step = "fused"
    section, key = field.split(".")
    setattr(getattr(cfg, section), key, value)
    with pytest.raises(ConfigError, match="--step fused"):
        cfg.validate()


def test_step_fused_under_torchrun_is_refused_before_anything_is_written(tmp_path, fake_mnist, monkeypatch, capsys):
    from vaelab.cli import main

    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)  # what torchrun sets; the check comes before joining the group
    out = tmp_path / "run"
    code = main(["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--hidden", "16", "--latent-dim", "2",
                 "--batch-size", "16", "--step", "fused", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "--step fused trains in one process" in err and err.count("\n") == 0
    assert not out.exists()
