"""The divergence guard, the log-variance clamp and gradient clipping.

A non-finite loss or gradient must stop training with exit code 3 and one line naming the epoch
and step and the last good checkpoint, which must be byte-for-byte what it was before. The clamp
must keep the posterior finite for any encoder output; `--grad-clip` must clip the global norm
exactly as an independent re-implementation of one training step does.
"""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch

import vaelab
from vaelab.checkpoint import CHECKPOINT_FILE, WEIGHTS_FILE, checkpoint_position, read_safetensors, save_checkpoint
from vaelab.cli import main
from vaelab.config import RunConfig
from vaelab.data import load_data
from vaelab.data.base import ImageData, Split
from vaelab.errors import DivergenceError
from vaelab.fused import FusedELBOStep
from vaelab.models import VAE
from vaelab.models.posterior import LOG_VAR_MAX, LOG_VAR_MIN, DiagonalGaussian
from vaelab.objectives import elbo_loss
from vaelab.training import train


def _cfg(data_dir, **train) -> RunConfig:
    cfg = RunConfig()
    cfg.data.dataset, cfg.data.data_dir = "mnist", str(data_dir)
    cfg.model.hidden = [32, 16]
    cfg.train.batch_size, cfg.train.epochs, cfg.train.seed = 16, 2, 4
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def test_cli_divergence_exit_code_message_and_checkpoint(tmp_path, capsys, fake_mnist):
    """A Gaussian std of 1e-30 makes the very first loss infinite (1/(2·std²) overflows float32)."""
    out = tmp_path / "run"
    code = main(["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--hidden", "32,16", "--seed", "4",
                 "--batch-size", "16", "--gaussian-std", "1e-30", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == DivergenceError.exit_code == 3
    assert len(err) == 1 and err[0].startswith("vaelab: error: training diverged")
    assert "epoch 1, step 1" in err[0] and f"last good checkpoint {out / CHECKPOINT_FILE}" in err[0]
    assert "start of training" in err[0]
    assert not (out / WEIGHTS_FILE).exists()
    # The checkpoint holds the initial weights: rebuild them independently from the seed.
    cfg = RunConfig.load(out / "config.json")
    random.seed(4)
    np.random.seed(4)
    torch.manual_seed(4)
    fresh = VAE(cfg.model).state_dict()
    saved, _ = read_safetensors(out / CHECKPOINT_FILE)
    for name, value in fresh.items():
        assert torch.equal(saved[f"model.{name}"], value), name


def test_nan_in_data_mid_run_leaves_last_checkpoint_byte_identical(tmp_path, fake_mnist):
    """NaN pixels arrive after epoch 1 (a corrupted data source): the epoch-1 checkpoint must survive as is."""
    cfg = _cfg(fake_mnist)
    clean = load_data(cfg.data)

    def as_float(split: Split) -> Split:  # same values as uint8, but able to hold NaN
        return Split(split.images.to(torch.float32), split.labels)

    data = ImageData(clean.name, as_float(clean.train), as_float(clean.val), as_float(clean.test), clean.class_names)

    def poison(row, model) -> None:
        if row["epoch"] == 1:
            data.train.images[:] = float("nan")

    run = tmp_path / "diverged"
    with pytest.raises(DivergenceError) as info:
        train(copy.deepcopy(cfg), run, progress=False, data=data, hook=poison)
    batches = math.ceil(len(clean.train) / cfg.train.batch_size)
    message = str(info.value)
    assert f"epoch 2, step {batches + 1}" in message and "end of epoch 1" in message and "\n" not in message
    assert not (run / WEIGHTS_FILE).exists()

    # Reference: the same run, clean and stopped after epoch 1, writes the same epoch-1 checkpoint.
    reference_cfg = copy.deepcopy(cfg)
    reference_cfg.train.epochs = 1
    reference = train(reference_cfg, tmp_path / "reference", progress=False)
    assert (run / CHECKPOINT_FILE).read_bytes() == (reference / CHECKPOINT_FILE).read_bytes()


@pytest.mark.parametrize("step", ["autograd", "fused"])
def test_nan_gradient_behind_a_finite_loss_names_its_step(tmp_path, fake_mnist, monkeypatch, step):
    """A gradient turns NaN while the loss is finite: the message names that step, not the next."""
    cfg = _cfg(fake_mnist)
    cfg.train.step = step
    poisoned = []
    likelihood = FusedELBOStep._likelihood

    def nan_likelihood_gradient(self, x, r):  # the fused step's d recon / d r, NaN once poisoned
        recon, grad = likelihood(self, x, r)
        return recon, grad.fill_(float("nan")) if poisoned else grad

    monkeypatch.setattr(FusedELBOStep, "_likelihood", nan_likelihood_gradient)

    def poison_gradients(row, model) -> None:
        if row["epoch"] == 1:  # from epoch 2's first step on, one weight's gradient is NaN
            weight = next(model.parameters())
            weight.register_hook(lambda grad: torch.full_like(grad, float("nan")))  # autograd
            poisoned.append(True)  # fused

    with pytest.raises(DivergenceError) as info:
        train(copy.deepcopy(cfg), tmp_path / "run", progress=False, hook=poison_gradients)
    batches = math.ceil(len(load_data(cfg.data).train) / cfg.train.batch_size)
    message = str(info.value)
    assert f"non-finite gradient at epoch 2, step {batches + 1};" in message, message
    assert "end of epoch 1" in message


def test_checkpoint_refuses_non_finite_weights_and_keeps_the_old_file(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    gen = torch.Generator().manual_seed(0)
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, model, optimizer, gen, {"epoch": 2, "batch": 5, "step": 19})
    before = path.read_bytes()
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(DivergenceError, match=r"non-finite values in model.weight at epoch 3, step 20.*step 19"):
        save_checkpoint(path, model, optimizer, gen, {"epoch": 2, "batch": 6, "step": 20})
    assert path.read_bytes() == before
    assert checkpoint_position(path)["step"] == 19


@pytest.mark.parametrize("log_var", [1e4, -1e4, float("inf"), -float("inf")])
def test_log_var_clamp_keeps_the_posterior_finite(log_var):
    mean = torch.tensor([[0.5, -1.0]])
    q = DiagonalGaussian(mean, torch.full((1, 2), log_var))
    clamped = min(max(log_var, LOG_VAR_MIN), LOG_VAR_MAX)
    assert torch.all(q.log_var == clamped)
    reference = torch.distributions.Normal(mean, torch.full((1, 2), math.exp(0.5 * clamped)))
    standard = torch.distributions.Normal(torch.zeros(1, 2), torch.ones(1, 2))
    expected_kl = torch.distributions.kl_divergence(reference, standard).sum(-1)
    assert torch.allclose(q.kl(), expected_kl, rtol=1e-5)
    z = q.sample(4)
    assert torch.isfinite(z).all() and torch.isfinite(q.log_prob(z)).all() and torch.isfinite(q.kl()).all()
    assert (q.std > 0).all() and torch.isfinite(q.std).all()


def _one_step_reference(cfg: RunConfig, clip: float) -> dict[str, torch.Tensor]:
    """An independent single Adam step on the whole training split, clipping by hand."""
    data = load_data(cfg.data)
    c, h, w = data.image_shape
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.image_shape, model_cfg.num_classes = [c, h, w], data.num_classes
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    model = VAE(model_cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.adam_betas),
                                 eps=cfg.train.adam_eps)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(cfg.train.seed))
    x = data.train.images[order].float() / 255.0
    elbo_loss(model, x, None, cfg.train.beta).loss.backward()
    grads = [p.grad for p in model.parameters()]
    norm = math.sqrt(sum(float(g.double().square().sum()) for g in grads))
    if clip:
        for g in grads:
            g.mul_(min(1.0, clip / (norm + 1e-6)))
    optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_grad_clip_matches_a_hand_clipped_step(tmp_path, fake_mnist):
    # One step per epoch (batch = the whole split); a large Adam eps makes the step depend on the
    # gradient's scale, so clipping visibly changes the result (with eps ~ 0 Adam's first step is
    # nearly scale-free).
    results = {}
    for clip in (0.0, 0.5, 1e30):
        cfg = _cfg(fake_mnist, batch_size=108, epochs=1, adam_eps=0.5, lr=0.01, grad_clip=clip)
        run = train(copy.deepcopy(cfg), tmp_path / f"clip{clip}", progress=False)
        results[clip] = vaelab.load(run).state_dict()
        expected = _one_step_reference(cfg, clip)
        for name, value in expected.items():
            assert torch.allclose(results[clip][name], value, rtol=1e-5, atol=1e-7), (clip, name)
    assert all(torch.equal(results[0.0][k], results[1e30][k]) for k in results[0.0])  # a huge clip never binds
    changed = max(float((results[0.0][k] - results[0.5][k]).abs().max()) for k in results[0.0])
    assert changed > 1e-4  # the 0.5 clip did bind
