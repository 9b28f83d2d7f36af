"""vaelab.optim.AdamStep takes exactly the step `optimizer.step()` takes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vaelab.optim import AdamStep


def _pair(seed=0, **adam):
    torch.manual_seed(seed)
    a = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    b = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    b.load_state_dict(a.state_dict())
    kw = dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6, fused=True) | adam
    return a, torch.optim.Adam(a.parameters(), **kw), b, torch.optim.Adam(b.parameters(), **kw)


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()


def _same(a, oa, b, ob):
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    sa, sb = oa.state_dict(), ob.state_dict()
    for i in sa["state"]:
        for k in sa["state"][i]:
            assert torch.equal(sa["state"][i][k], sb["state"][i][k]), k


@pytest.mark.parametrize("adam", [{}, {"amsgrad": True}, {"weight_decay": 0.1}, {"fused": False}])
def test_bit_identical_to_optimizer_step_with_lr_changes(adam):
    a, oa, b, ob = _pair(**adam)
    lean = AdamStep(ob)
    gen = torch.Generator().manual_seed(1)
    for step in range(25):
        if step == 10:  # the loop sets the learning rate per epoch
            for opt in (oa, ob):
                opt.param_groups[0]["lr"] = 3e-3
        x = torch.randn(4, 7, generator=gen)
        _grads(a, x)
        _grads(b, x)
        oa.step()
        lean()
    _same(a, oa, b, ob)


def test_follows_the_state_after_load_state_dict():
    a, oa, b, ob = _pair()
    lean = AdamStep(ob)
    x = torch.randn(4, 7)
    for _ in range(3):
        _grads(a, x)
        _grads(b, x)
        oa.step()
        lean()
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))  # new state tensors: the cached lists are stale
    for _ in range(3):
        _grads(a, x)
        _grads(b, x)
        oa.step()
        lean()
    _same(a, oa, b, ob)
