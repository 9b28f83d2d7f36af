"""The training loop: determinism, the fast path against a plain loop, schedules, speed switches.

References: a plain re-implementation of one epoch (textbook Adam, `elbo_loss`, batches gathered
by hand) for the fast path; closed-form values for the learning-rate schedule and KL warm-up.
"""

from __future__ import annotations

import copy
import json
import random
import warnings

import numpy as np
import pytest
import torch

import vaelab
from vaelab.config import RunConfig
from vaelab.data import load_data
from vaelab.models import VAE
from vaelab.objectives import elbo_loss
from vaelab.schedules import lr_multiplier
from vaelab.training import train


def _cfg(data_dir, **train_fields) -> RunConfig:
    cfg = RunConfig()
    cfg.data.dataset, cfg.data.data_dir = "mnist", str(data_dir)
    cfg.model.hidden, cfg.model.latent_dim, cfg.model.likelihood = [32], 3, "bernoulli"
    cfg.train.batch_size, cfg.train.epochs, cfg.train.seed = 16, 1, 5
    for key, value in train_fields.items():
        setattr(cfg.train, key, value)
    return cfg


def _weights(run) -> dict[str, torch.Tensor]:
    return vaelab.load(run).state_dict()


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, fake_mnist):
    runs = {name: train(_cfg(fake_mnist, seed=seed, epochs=2), tmp_path / name, progress=False)
            for name, seed in (("a", 5), ("b", 5), ("c", 6))}
    a, b, c = (_weights(runs[k]) for k in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert [r["train_loss"] for r in _metrics(runs["a"])] == [r["train_loss"] for r in _metrics(runs["b"])]


def _plain_epoch(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """One epoch written the plain way: textbook Adam (for-loop), per-batch fancy indexing."""
    data = load_data(cfg.data)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.image_shape, model_cfg.num_classes = list(data.image_shape), data.num_classes
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    model = VAE(model_cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, foreach=False)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(cfg.train.seed))
    for start in range(0, len(order), cfg.train.batch_size):
        x = data.train.images[order[start:start + cfg.train.batch_size]].float() / 255.0
        optimizer.zero_grad()
        elbo_loss(model, x, None, 1.0).loss.backward()
        optimizer.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_fast_loop_matches_a_plain_loop(tmp_path, fake_mnist):
    """Fused Adam, index_select batches, sums on the device: the same math as the plain loop."""
    cfg = _cfg(fake_mnist)
    fast = _weights(train(copy.deepcopy(cfg), tmp_path / "fast", progress=False))
    plain = _plain_epoch(cfg)
    for name, value in plain.items():
        torch.testing.assert_close(fast[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_lr_schedule_values_and_metrics(tmp_path, fake_mnist):
    schedule = [[1, 1.0], [2, 0.5], [1, 0.1]]
    assert [lr_multiplier(schedule, e) for e in range(6)] == [1.0, 0.5, 0.5, 0.1, 0.1, 0.1]
    assert lr_multiplier([], 3) == 1.0
    assert lr_multiplier([[1.5, 1.0], [1.5, 0.2]], 1) == 0.2  # epoch 1's midpoint (1.5) starts segment 2
    cfg = _cfg(fake_mnist, epochs=4, lr=2e-3, lr_schedule="piecewise", lr_segments=schedule)
    run = train(cfg, tmp_path / "run", progress=False)
    assert [r["lr"] for r in _metrics(run)] == pytest.approx([2e-3, 1e-3, 1e-3, 2e-4])


def test_kl_warmup_ramps_beta_linearly_per_step(tmp_path, fake_mnist):
    # 108 training images in batches of 16 -> 7 steps per epoch; warm-up over 2 epochs = 14 steps.
    run = train(_cfg(fake_mnist, epochs=3, kl_warmup_epochs=2.0, beta=2.0), tmp_path / "run", progress=False)
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [7, 14, 21]
    assert [r["beta"] for r in rows] == pytest.approx([2.0 * 7 / 14, 2.0, 2.0])


def test_kl_warmup_changes_training(tmp_path, fake_mnist):
    plain = _weights(train(_cfg(fake_mnist), tmp_path / "plain", progress=False))
    warm = _weights(train(_cfg(fake_mnist, kl_warmup_epochs=1.0), tmp_path / "warm", progress=False))
    assert any(not torch.equal(plain[k], warm[k]) for k in plain)


def test_bf16_autocast_path_trains_close_to_fp32(tmp_path, fake_mnist):
    fp32 = train(_cfg(fake_mnist, epochs=2), tmp_path / "fp32", progress=False)
    bf16 = train(_cfg(fake_mnist, epochs=2, precision="bf16"), tmp_path / "bf16", progress=False)
    w32, w16 = _weights(fp32), _weights(bf16)
    assert any(not torch.equal(w32[k], w16[k]) for k in w32)  # bf16 matmuls really ran
    assert all(w16[k].dtype == torch.float32 for k in w16)  # master weights stay fp32
    v32, v16 = _metrics(fp32)[-1]["val_loss"], _metrics(bf16)[-1]["val_loss"]
    assert np.isfinite(v16) and v16 == pytest.approx(v32, rel=0.05)


def test_compile_failure_falls_back_to_identical_eager_training(tmp_path, fake_mnist, monkeypatch):
    # A failed compile falls back to the eager autograd step (the fused step never compiles).
    eager = _weights(train(_cfg(fake_mnist, step="autograd"), tmp_path / "eager", progress=False))

    def broken_compile(module, *args, **kwargs):
        def fails(*a, **k):
            torch.randn(1000)  # consume RNG before failing, as a half-run compiled graph could
            raise RuntimeError("no C++ compiler here")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train(_cfg(fake_mnist, compile=True), tmp_path / "compiled", progress=False)
    assert any("torch.compile failed" in str(w.message) for w in caught)
    fallback = _weights(run)
    assert all(torch.equal(eager[k], fallback[k]) for k in eager)


def test_fused_and_autograd_steps_train_the_same_model(tmp_path, fake_mnist):
    """The default (fused) step and autograd compute the same gradients up to float rounding, so
    two epochs with the same seed end at the same weights and losses, to rounding."""
    fused = train(_cfg(fake_mnist, epochs=2, step="fused"), tmp_path / "fused", progress=False)
    auto = train(_cfg(fake_mnist, epochs=2, step="autograd"), tmp_path / "autograd", progress=False)
    wf, wa = _weights(fused), _weights(auto)
    assert any(not torch.equal(wf[k], wa[k]) for k in wf)  # two different code paths really ran
    for k in wf:
        torch.testing.assert_close(wf[k], wa[k], rtol=1e-3, atol=1e-4, msg=k)
    for rf, ra in zip(_metrics(fused), _metrics(auto)):
        assert rf["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-5)
        assert rf["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-4)


def test_flush_denormals_is_scoped_to_training():
    from vaelab.runtime import flush_denormals

    tiny = torch.tensor([1e-39])  # subnormal in float32
    with flush_denormals():
        assert (tiny * 1.0).item() == 0.0
    assert (tiny * 1.0).item() != 0.0


def test_extra_terms_of_an_objective_are_logged_per_epoch(tmp_path, fake_mnist, monkeypatch):
    """An objective's LossParts.extras reach metrics.jsonl as train_<name>: the image-weighted
    mean over the epoch, here of a copy of the KL term, so it must equal train_kl."""
    from vaelab import objectives

    def elbo_with_extra(model, x, y, beta, num_samples=1):
        parts = elbo_loss(model, x, y, beta, num_samples)
        return parts._replace(extras={"kl_copy": parts.kl, "twice_recon": 2 * parts.recon})

    monkeypatch.setitem(objectives.OBJECTIVES, "elbo", elbo_with_extra)
    run = train(_cfg(fake_mnist, epochs=2, step="autograd", batch_size=50), tmp_path / "run", progress=False)
    rows = _metrics(run)
    assert len(rows) == 2
    for row in rows:
        assert row["train_kl_copy"] == pytest.approx(row["train_kl"], rel=1e-12)
        assert row["train_twice_recon"] == pytest.approx(2 * row["train_recon"], rel=1e-12)
