"""`--lr-schedule constant|cosine|step|plateau|piecewise` and `--warmup-epochs`.

References: torch.optim.lr_scheduler's CosineAnnealingLR, StepLR and ReduceLROnPlateau driven
side by side with vaelab's schedule; a plain loop (torch.optim.Adam, the rate set by hand before
each step) for the per-step warm-up; exact resume against the same run without interruption
after a real SIGKILL mid-epoch, mid-warm-up and after plateau decays; version-1 run folders.
"""

from __future__ import annotations

import copy
import json
import random
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

import vaelab
from kill_resume import assert_same_run, killed_then_resumed, metrics
from vaelab.checkpoint import CHECKPOINT_FILE, checkpoint_position
from vaelab.cli import main
from vaelab.cli.options import build_config
from vaelab.config import CONFIG_VERSION, RunConfig, TrainConfig
from vaelab.data import load_data
from vaelab.errors import ConfigError
from vaelab.models import VAE
from vaelab.objectives import elbo_loss
from vaelab.schedules import LRSchedule
from vaelab.training import train


def _torch_rates(scheduler_cls, epochs: int, lr: float, **kwargs) -> list[float]:
    """The rate torch's scheduler gives each epoch (stepped once per epoch)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = scheduler_cls(optimizer, **kwargs)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def _ours(tc: TrainConfig, epochs: int, steps_per_epoch: int = 10) -> list[float]:
    schedule = LRSchedule(tc, steps_per_epoch)
    return [schedule.lr(e, (e + 1) * steps_per_epoch) for e in range(epochs)]


def test_cosine_and_step_match_torch():
    tc = TrainConfig(epochs=12, lr=0.1, lr_schedule="cosine", min_lr=0.001)
    want = _torch_rates(torch.optim.lr_scheduler.CosineAnnealingLR, 12, 0.1, T_max=12, eta_min=0.001)
    assert _ours(tc, 12) == pytest.approx(want, rel=1e-12)
    tc = TrainConfig(epochs=12, lr=0.1, lr_schedule="step", lr_step=3, lr_decay=0.5)
    want = _torch_rates(torch.optim.lr_scheduler.StepLR, 12, 0.1, step_size=3, gamma=0.5)
    assert _ours(tc, 12) == pytest.approx(want, rel=1e-12)
    assert _ours(TrainConfig(epochs=4, lr=0.1), 4) == [0.1] * 4


@pytest.mark.parametrize("patience, min_lr", [(0, 0.0), (2, 0.0), (1, 0.004)])
def test_plateau_matches_torch_on_a_constructed_validation_curve(patience, min_lr):
    curve = [10.0, 9.0, 9.0, 8.9995, 9.5, 8.0, 8.0, 8.1, 8.2, 8.3, 7.0, 7.5, 7.6, 7.7, 7.8, 7.9]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=patience,
                                                           min_lr=min_lr)
    ours = LRSchedule(TrainConfig(epochs=len(curve) + 1, lr=0.1, lr_schedule="plateau", lr_patience=patience,
                                  lr_decay=0.5, min_lr=min_lr), steps_per_epoch=10)
    want, got = [], []
    for epoch, loss in enumerate(curve):
        reference.step(loss)
        ours.end_epoch(loss, step=(epoch + 1) * 10)
        want.append(optimizer.param_groups[0]["lr"])
        got.append(ours.lr(epoch + 1, (epoch + 2) * 10))
    assert got == pytest.approx(want, rel=1e-12)
    assert min(got) < 0.1  # the curve does make it decay


def test_warmup_ramps_per_step_then_hands_over():
    tc = TrainConfig(epochs=6, lr=0.2, lr_schedule="cosine", warmup_epochs=1.5)
    schedule = LRSchedule(tc, steps_per_epoch=4)  # 6 warm-up steps
    assert schedule.warmup_steps == 6
    # epoch 0: steps 1-4, epoch 1: steps 5-8; the cosine starts after the warm-up's 1.5 epochs
    assert [schedule.lr(0, s) for s in (1, 2, 3, 4)] == pytest.approx([0.2 * s / 6 for s in (1, 2, 3, 4)])
    assert [schedule.lr(1, s) for s in (5, 6, 7)] == pytest.approx([0.2 * 5 / 6, 0.2, 0.2])
    t = (3 - 1.5) / (6 - 1.5)
    assert schedule.lr(3, 13) == pytest.approx(0.2 * (1 + np.cos(np.pi * t)) / 2)


def _cfg(data_dir, **train_fields) -> RunConfig:
    cfg = RunConfig()
    cfg.data.dataset, cfg.data.data_dir = "mnist", str(data_dir)
    cfg.model.hidden, cfg.model.latent_dim, cfg.model.likelihood = [32], 3, "bernoulli"
    cfg.train.batch_size, cfg.train.seed = 16, 5
    for key, value in train_fields.items():
        setattr(cfg.train, key, value)
    return cfg


def test_metrics_hold_each_epochs_rate(tmp_path, fake_mnist):
    run = train(_cfg(fake_mnist, epochs=5, lr=0.01, lr_schedule="step", lr_step=2, lr_decay=0.5),
                tmp_path / "step", progress=False)
    want = _torch_rates(torch.optim.lr_scheduler.StepLR, 5, 0.01, step_size=2, gamma=0.5)
    assert [r["lr"] for r in metrics(run)] == pytest.approx(want, rel=1e-12)
    # warm-up over the first epoch (7 steps; its last step is at the full rate), then the cosine
    # over the other two: t = (epoch - 1) / (3 - 1)
    run = train(_cfg(fake_mnist, epochs=3, lr=0.01, lr_schedule="cosine", warmup_epochs=1.0, min_lr=0.001),
                tmp_path / "cosine", progress=False)
    cosine = [0.001 + 0.009 * (1 + np.cos(np.pi * t)) / 2 for t in (0.0, 0.0, 0.5)]
    assert [r["lr"] for r in metrics(run)] == pytest.approx(cosine, rel=1e-12)


def test_warmup_trains_like_a_loop_that_sets_the_rate_before_each_step(tmp_path, fake_mnist):
    cfg = _cfg(fake_mnist, epochs=1, lr=0.01, warmup_epochs=0.5)  # 7 steps per epoch: 4 warm-up steps
    ours = vaelab.load(train(copy.deepcopy(cfg), tmp_path / "run", progress=False)).state_dict()
    data = load_data(cfg.data)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.image_shape, model_cfg.num_classes = list(data.image_shape), data.num_classes
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    model = VAE(model_cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, foreach=False)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(cfg.train.seed))
    for step, start in enumerate(range(0, len(order), 16), start=1):
        optimizer.param_groups[0]["lr"] = 0.01 * min(1.0, step / 4)
        x = data.train.images[order[start:start + 16]].float() / 255.0
        optimizer.zero_grad()
        elbo_loss(model, x, None, 1.0).loss.backward()
        optimizer.step()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=1e-6, msg=name)
    plain = vaelab.load(train(_cfg(fake_mnist, epochs=1, lr=0.01), tmp_path / "plain", progress=False)).state_dict()
    assert any(not torch.allclose(plain[k], ours[k], rtol=1e-4, atol=1e-6) for k in ours)  # warm-up mattered


FLAGS = ["--dataset", "mnist", "--batch-size", "16", "--hidden", "16", "--latent-dim", "2", "--threads", "1",
         "--seed", "2", "--binarize", "dynamic", "--checkpoint-every", "3"]


def test_resume_mid_warmup_is_bit_identical(tmp_path, fake_mnist):
    # 7 steps per epoch, warm-up over 14; killed writing checkpoint #6 (step 12): resumed from step 9.
    flags = [*FLAGS, "--data-dir", str(fake_mnist), "--epochs", "3", "--lr", "0.01", "--lr-schedule", "cosine",
             "--warmup-epochs", "2", "--min-lr", "0.0001"]
    reference, run, state = killed_then_resumed(tmp_path, flags, kill_at=6)
    assert (state["epoch"], state["batch"], state["step"]) == (1, 2, 9)
    assert_same_run(reference, run)


@pytest.mark.slow
def test_resume_after_plateau_decays_is_bit_identical(tmp_path, fake_mnist):
    # lr 0.6 with patience 0 stalls after epochs 2 and 3 (measured); killed writing checkpoint #13
    # (step 27; step 21 ends epoch 3 and is also a multiple of 3: two checkpoints), the resume
    # starts at step 24 inside epoch 4, with two decays in its state.
    flags = [*FLAGS, "--data-dir", str(fake_mnist), "--epochs", "5", "--lr", "0.6", "--lr-schedule", "plateau",
             "--lr-patience", "0", "--lr-decay", "0.5"]
    reference, run, state = killed_then_resumed(tmp_path, flags, kill_at=13)
    assert (state["epoch"], state["batch"]) == (3, 3)
    assert state["schedule"]["factor"] == 0.25  # the kill came after two decays
    assert_same_run(reference, run)
    assert [r["lr"] for r in metrics(run)][:4] == [0.6, 0.6, 0.3, 0.15]


def test_a_version_1_run_folder_loads_evaluates_and_resumes(tmp_path, fake_mnist, capsys):
    flags = [*FLAGS, "--data-dir", str(fake_mnist), "--lr", "0.01"]
    new = tmp_path / "new"
    segments = [[1, 1.0], [1, 0.5], [2, 0.1]]
    assert main(["train", *flags, "--epochs", "1", "--lr-segments", "1:1,1:0.5,2:0.1", "--out", str(new),
                 "--quiet"]) == 0
    old = tmp_path / "old"
    shutil.copytree(new, old)
    # config.json as vaelab wrote it before version 2: segments under lr_schedule, none of the new keys.
    raw = json.loads((old / "config.json").read_text())
    raw["version"] = 1
    del raw["weights"]
    for key in ("optimizer", "weight_decay", "momentum", "warmup_epochs", "min_lr", "lr_decay", "lr_step",
                "lr_patience", "lr_segments", "ema_decay", "early_stopping", "keep", "mlflow"):
        del raw["train"][key]
    raw["train"]["lr_schedule"] = segments
    (old / "config.json").write_text(json.dumps(raw, indent=2))
    # ... and a checkpoint without the new loop-state keys
    payload = (old / CHECKPOINT_FILE).read_bytes()
    header = json.loads(payload[8:8 + int.from_bytes(payload[:8], "little")])["__metadata__"]
    info = json.loads(header["vaelab"])
    for key in ("optimizer", "schedule", "best"):
        info["state"].pop(key)
    (old / CHECKPOINT_FILE).write_bytes(save(load(payload), metadata={"vaelab": json.dumps(info)}))
    assert "optimizer" not in checkpoint_position(old / CHECKPOINT_FILE)

    assert RunConfig.load(old / "config.json").train.lr_segments == segments
    vaelab.load(old)
    assert main(["eval", str(old), "--iw-samples", "2", "--no-fid", "--quiet"]) == 0
    for run in (new, old):
        assert main(["train", "--resume", str(run), "--epochs", "4", "--quiet"]) == 0
    assert_same_run(new, old)  # the old folder continued exactly as the new one
    upgraded = json.loads((old / "config.json").read_text())
    assert upgraded["version"] == CONFIG_VERSION and upgraded["train"]["lr_schedule"] == "piecewise"
    assert [r["lr"] for r in metrics(old)] == pytest.approx([0.01, 0.005, 0.001, 0.001])


def test_layers_of_schedule_settings():
    preset = build_config("iwae-paper-vae", None, {})
    assert preset.train.lr_schedule == "piecewise" and len(preset.train.lr_segments) == 8
    cosine = build_config("iwae-paper-vae", None, {"train.lr_schedule": "cosine"})
    assert (cosine.train.lr_schedule, cosine.train.lr_segments) == ("cosine", [])  # the preset's segments dropped
    flags = build_config(None, None, {"train.lr_segments": [[2.0, 1.0], [3.0, 0.5]]})
    assert flags.train.lr_schedule == "piecewise"  # --lr-segments alone means piecewise


@pytest.mark.parametrize("fields, message", [
    ({"lr_schedule": "step"}, "--lr-schedule step needs lr_step >= 1"),
    ({"lr_schedule": "piecewise"}, "--lr-schedule piecewise needs lr_segments"),
    ({"lr_schedule": "cosine", "lr_segments": [[1, 0.5]]}, "lr_segments are for lr_schedule 'piecewise'"),
    ({"lr_schedule": "cosine", "min_lr": 0.01}, "min_lr must be >= 0 and below lr"),
    ({"warmup_epochs": 10}, "warmup_epochs must be >= 0 and fewer than the 10 epochs"),
    ({"lr_decay": 1.0}, "lr_decay must be in (0, 1)"),
])
def test_bad_schedule_settings_are_refused(fields, message):
    raw = RunConfig().to_dict()
    raw["train"].update(fields)
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(raw)
    assert message in str(info.value)
