"""`--ema-decay D`: the moving average of the weights, its place in the run folder and the checkpoint.

The reference is the average written out by hand over three steps,
theta_ema = D^3 theta_0 + D^2 (1-D) theta_1 + D (1-D) theta_2 + (1-D) theta_3, in float64, with
theta_k the raw weights after step k (read from the checkpoints of runs of 1, 2 and 3 one-step
epochs, which take the same steps).
"""

from __future__ import annotations

import pytest
import torch

import vaelab
from kill_resume import assert_same_run, killed_then_resumed, metrics
from vaelab.checkpoint import CHECKPOINT_FILE, WEIGHTS_FILE, read_safetensors
from vaelab.config import RunConfig
from vaelab.data import load_data
from vaelab.ema import ParameterEMA
from vaelab.evaluate import elbo_on_split
from vaelab.models import VAE
from vaelab.runtime import seed_everything
from vaelab.training import train

DECAY = 0.9  # far from 1, so that every step's weight in the average is large


def _hand_average(weights: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """theta_0 .. theta_3 -> D^3 theta_0 + D^2 (1-D) theta_1 + D (1-D) theta_2 + (1-D) theta_3 (float64)."""
    w0, w1, w2, w3 = ({k: v.double() for k, v in w.items()} for w in weights)
    d = decay
    return {k: d**3 * w0[k] + d**2 * (1 - d) * w1[k] + d * (1 - d) * w2[k] + (1 - d) * w3[k] for k in w0}


def test_parameter_ema_is_the_hand_computed_average_over_three_steps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    ema = ParameterEMA(model, DECAY)
    seen = [{k: v.detach().clone() for k, v in model.state_dict().items()}]
    for _ in range(3):  # three "optimiser steps": any new weights
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    want = _hand_average(seen, DECAY)
    for name, value in ema.model.state_dict().items():
        torch.testing.assert_close(value.double(), want[name], rtol=1e-6, atol=1e-7, msg=name)
        assert not torch.equal(value, seen[-1][name])  # not just the last weights
    assert all(not p.requires_grad for p in ema.model.parameters())


def _cfg(data_dir, epochs: int) -> RunConfig:
    cfg = RunConfig()
    cfg.data.dataset, cfg.data.data_dir = "mnist", str(data_dir)
    cfg.model.hidden, cfg.model.latent_dim, cfg.model.likelihood = [32], 3, "bernoulli"
    # the whole training split (108 images) in one batch: one step per epoch
    cfg.train.batch_size, cfg.train.epochs, cfg.train.seed, cfg.train.lr = 108, epochs, 5, 0.05
    cfg.train.ema_decay = DECAY
    return cfg


def test_training_with_ema_saves_the_average_and_validates_it(tmp_path, fake_mnist):
    runs = [train(_cfg(fake_mnist, epochs), tmp_path / f"e{epochs}", progress=False) for epochs in (1, 2, 3)]
    cfg = RunConfig.load(runs[-1] / "config.json")
    assert cfg.weights == "ema" and cfg.train.ema_decay == DECAY  # config.json says what the weights are
    seed_everything(5)
    initial = VAE(cfg.model).state_dict()
    raw = [{k[6:]: v for k, v in read_safetensors(run / CHECKPOINT_FILE)[0].items() if k.startswith("model.")}
           for run in runs]
    want = _hand_average([initial, *raw], DECAY)
    saved, _ = read_safetensors(runs[-1] / WEIGHTS_FILE)
    for name, value in saved.items():
        torch.testing.assert_close(value.double(), want[name], rtol=1e-6, atol=1e-7, msg=name)
        assert not torch.equal(value, raw[-1][name])  # the raw weights stay in the checkpoint only
    checkpoint, _ = read_safetensors(runs[-1] / CHECKPOINT_FILE)
    assert all(torch.equal(checkpoint[f"extra.ema.{k}"], v) for k, v in saved.items())
    # Validation (every epoch) and everything that loads the run use the average.
    model = vaelab.load(runs[-1])
    data = load_data(cfg.data)
    assert metrics(runs[-1])[-1]["val_loss"] == elbo_on_split(model, data.val)["loss"]


def test_without_ema_nothing_changes(tmp_path, fake_mnist):
    cfg = _cfg(fake_mnist, 1)
    cfg.train.ema_decay = 0.0
    run = train(cfg, tmp_path / "run", progress=False)
    assert RunConfig.load(run / "config.json").weights == "raw"
    checkpoint, _ = read_safetensors(run / CHECKPOINT_FILE)
    assert not any(k.startswith("extra.ema.") for k in checkpoint)
    saved, _ = read_safetensors(run / WEIGHTS_FILE)
    assert all(torch.equal(checkpoint[f"model.{k}"], v) for k, v in saved.items())


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_bad_decay_is_refused(decay):
    raw = RunConfig().to_dict()
    raw["train"]["ema_decay"] = decay
    with pytest.raises(Exception, match=r"ema_decay must be in \[0, 1\)"):
        RunConfig.from_dict(raw)


@pytest.mark.slow
def test_resume_with_ema_after_a_kill_mid_epoch_is_bit_identical(tmp_path, fake_mnist):
    flags = ["--dataset", "mnist", "--data-dir", str(fake_mnist), "--batch-size", "16", "--hidden", "16",
             "--latent-dim", "2", "--epochs", "3", "--checkpoint-every", "3", "--threads", "1", "--seed", "2",
             "--ema-decay", "0.95"]
    reference, run, state = killed_then_resumed(tmp_path, flags, kill_at=6)
    assert (state["epoch"], state["batch"]) == (1, 2)
    assert_same_run(reference, run)  # includes the checkpoint's extra.ema.* tensors
