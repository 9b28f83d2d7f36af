"""`--optimizer adam|adamw|sgd|rmsprop` with `--weight-decay` and `--momentum`.

References: a plain training loop (autograd, `elbo_loss`, batches gathered by hand) driven by
torch.optim's own optimiser with the same hyper-parameters, and for SGD with momentum a
hand-written update (v <- mu v + g, p <- p - lr v); exact resume is checked against the same run
without interruption, after a real SIGKILL halfway through a mid-epoch checkpoint write.
"""

from __future__ import annotations

import copy
import json
import random
import re

import numpy as np
import pytest
import torch

import vaelab
from kill_resume import assert_same_run, killed_then_resumed
from vaelab.config import RunConfig, TrainConfig
from vaelab.data import load_data
from vaelab.errors import ConfigError
from vaelab.models import VAE
from vaelab.objectives import elbo_loss
from vaelab.optim import Adam, make_optimizer
from vaelab.training import train


def _cfg(data_dir, **train_fields) -> RunConfig:
    cfg = RunConfig()
    cfg.data.dataset, cfg.data.data_dir = "mnist", str(data_dir)
    cfg.model.hidden, cfg.model.latent_dim, cfg.model.likelihood = [32], 3, "bernoulli"
    cfg.train.batch_size, cfg.train.epochs, cfg.train.seed, cfg.train.lr = 16, 1, 5, 0.01
    for key, value in train_fields.items():
        setattr(cfg.train, key, value)
    return cfg


def _plain_epoch(cfg: RunConfig, make_reference) -> dict[str, torch.Tensor]:
    """One epoch the plain way, `make_reference(params)` building the optimiser."""
    data = load_data(cfg.data)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.image_shape, model_cfg.num_classes = list(data.image_shape), data.num_classes
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    model = VAE(model_cfg)
    step = make_reference(list(model.parameters()))
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(cfg.train.seed))
    for start in range(0, len(order), cfg.train.batch_size):
        x = data.train.images[order[start:start + cfg.train.batch_size]].float() / 255.0
        for p in model.parameters():
            p.grad = None
        elbo_loss(model, x, None, 1.0).loss.backward()
        step()
    return {k: v.detach() for k, v in model.state_dict().items()}


def _sgd_by_hand(lr: float, momentum: float):
    def build(params):
        velocity = [torch.zeros_like(p) for p in params]

        @torch.no_grad()
        def step():
            for p, v in zip(params, velocity):
                v.mul_(momentum).add_(p.grad)  # torch's SGD: no dampening, the first v is the gradient
                p.sub_(lr * v)
        return step
    return build


def _torch_optim(cls, **kwargs):
    def build(params):
        return cls(params, foreach=False, **kwargs).step
    return build


@pytest.mark.parametrize("fields, reference", [
    ({"optimizer": "sgd", "momentum": 0.9}, _sgd_by_hand(0.01, 0.9)),
    ({"optimizer": "adamw"}, _torch_optim(torch.optim.AdamW, lr=0.01, weight_decay=0.01)),  # AdamW's default decay
    ({"optimizer": "adamw", "weight_decay": 0.3}, _torch_optim(torch.optim.AdamW, lr=0.01, weight_decay=0.3)),
    ({"optimizer": "adam", "weight_decay": 0.1}, _torch_optim(torch.optim.Adam, lr=0.01, weight_decay=0.1)),
    ({"optimizer": "rmsprop", "momentum": 0.5, "weight_decay": 0.01},
     _torch_optim(torch.optim.RMSprop, lr=0.01, momentum=0.5, weight_decay=0.01)),
], ids=["sgd-momentum", "adamw-default", "adamw-0.3", "adam-l2", "rmsprop"])
def test_each_optimizer_trains_like_its_reference(tmp_path, fake_mnist, fields, reference):
    cfg = _cfg(fake_mnist, **fields)
    run = train(copy.deepcopy(cfg), tmp_path / "run", progress=False)
    ours = vaelab.load(run).state_dict()
    plain = _plain_epoch(cfg, reference)
    for name, value in plain.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=1e-6, msg=name)
    # (plain Adam, or AdamW without its decay, lands further away than this tolerance: see below)


def test_the_references_tell_the_optimizers_apart(fake_mnist):
    cfg = _cfg(fake_mnist)
    adamw = _plain_epoch(cfg, _torch_optim(torch.optim.AdamW, lr=0.01, weight_decay=0.01))
    adam = _plain_epoch(cfg, _torch_optim(torch.optim.Adam, lr=0.01))
    assert any(not torch.allclose(adamw[k], adam[k], rtol=1e-4, atol=1e-6) for k in adam)


def test_optimizer_classes_and_resolved_weight_decay(tmp_path, fake_mnist):
    model = torch.nn.Linear(3, 2)
    assert type(make_optimizer(model, TrainConfig())) is Adam  # plain adam: vaelab's lean Adam
    assert type(make_optimizer(model, TrainConfig(weight_decay=0.1))) is torch.optim.Adam
    assert type(make_optimizer(model, TrainConfig(weight_decay=0.0))) is Adam
    for name, cls in (("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("rmsprop", torch.optim.RMSprop)):
        assert type(make_optimizer(model, TrainConfig(optimizer=name))) is cls
    group = make_optimizer(model, TrainConfig(optimizer="sgd", momentum=0.7, weight_decay=0.2, lr=0.3)).param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["lr"]) == (0.7, 0.2, 0.3)
    # config.json says what was used: AdamW's default weight decay, written out.
    run = train(_cfg(fake_mnist, optimizer="adamw"), tmp_path / "run", progress=False)
    saved = json.loads((run / "config.json").read_text())["train"]
    assert (saved["optimizer"], saved["weight_decay"]) == ("adamw", 0.01)


@pytest.mark.parametrize("fields, message", [
    ({"optimizer": "adam", "momentum": 0.9}, "momentum is for --optimizer sgd or rmsprop"),
    ({"optimizer": "sgd", "momentum": 1.0}, "momentum must be in [0, 1)"),
    ({"weight_decay": -0.1}, "weight_decay must be in [0, 10]"),
])
def test_bad_optimizer_settings_are_refused(fields, message):
    raw = RunConfig().to_dict()
    raw["train"].update(fields)
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunConfig.from_dict(raw)


FLAGS = ["--dataset", "mnist", "--batch-size", "16", "--hidden", "16", "--latent-dim", "2", "--epochs", "3",
         "--checkpoint-every", "3", "--threads", "1", "--seed", "2", "--lr", "0.01", "--binarize", "dynamic"]


@pytest.mark.parametrize("optimizer_flags", [
    pytest.param(["--optimizer", "sgd", "--momentum", "0.9"], id="sgd-momentum"),
    pytest.param(["--optimizer", "adam"], id="adam", marks=pytest.mark.slow),  # also tests/test_resume.py
    pytest.param(["--optimizer", "adam", "--weight-decay", "0.05"], id="adam-l2", marks=pytest.mark.slow),
    pytest.param(["--optimizer", "adamw"], id="adamw", marks=pytest.mark.slow),
    pytest.param(["--optimizer", "rmsprop", "--momentum", "0.5"], id="rmsprop", marks=pytest.mark.slow),
])
def test_resume_after_a_kill_mid_epoch_is_bit_identical(tmp_path, fake_mnist, optimizer_flags):
    # 108 training images in batches of 16: 7 steps per epoch. Checkpoints: #1 at step 0, then
    # steps 3, 6, 7 (epoch end), 9, 12, ...: killed writing #6 (step 12), the resume starts at step 9.
    flags = [*FLAGS, "--data-dir", str(fake_mnist), *optimizer_flags]
    reference, run, state = killed_then_resumed(tmp_path, flags, kill_at=6)
    assert (state["epoch"], state["batch"], state["step"]) == (1, 2, 9)  # mid-epoch 2
    assert_same_run(reference, run)
