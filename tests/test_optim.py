"""vaelab.optim.Adam takes exactly torch.optim.Adam's steps and shares its checkpoint layout."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

from vaelab.optim import Adam

HYPER = dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6)


def _models(seed=0):
    torch.manual_seed(seed)
    a = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    b = copy.deepcopy(a)
    return a, b


def _grads(model, x):
    for p in model.parameters():
        p.grad = None
    model(x).square().sum().backward()


def _same(a, oa, b, ob):
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa["state"][i][k], sb["state"][i][k]), k


def _train_both(a, oa, b, ob, steps, gen, lr_change_at=None):
    for step in range(steps):
        if step == lr_change_at:  # the loop sets the learning rate per epoch
            for opt in (oa, ob):
                opt.param_groups[0]["lr"] = 3e-3
        x = torch.randn(4, 7, generator=gen)
        _grads(a, x)
        _grads(b, x)
        oa.step()
        ob.step()


@pytest.mark.parametrize("fused", [True, False])
def test_bit_identical_to_torch_adam(fused):
    a, b = _models()
    reference = torch.optim.Adam(a.parameters(), **HYPER, **({"fused": True} if fused else {"foreach": False}))
    ours = Adam(b.parameters(), **HYPER)
    ours.fused = fused  # False: the single-tensor path used where PyTorch has no fused kernel
    _train_both(a, reference, b, ours, 25, torch.Generator().manual_seed(1), lr_change_at=10)
    _same(a, reference, b, ours)


def test_checkpoints_move_between_torch_adam_and_ours():
    a, b = _models()
    reference = torch.optim.Adam(a.parameters(), **HYPER, fused=True)
    ours = Adam(b.parameters(), **HYPER)
    gen = torch.Generator().manual_seed(2)
    _train_both(a, reference, b, ours, 3, gen)
    # Swap states: each continues from the other's (deep copies: no shared tensors).
    ours.load_state_dict(copy.deepcopy(reference.state_dict()))
    reference.load_state_dict(copy.deepcopy(ours.state_dict()))
    _train_both(a, reference, b, ours, 4, gen)
    _same(a, reference, b, ours)
    assert ours.state_dict()["param_groups"][0].keys() == reference.state_dict()["param_groups"][0].keys()


def test_parameters_without_gradient_are_left_alone():
    a, _ = _models()
    opt = Adam(a.parameters(), **HYPER)
    frozen = a[2].weight.detach().clone()
    _grads(a, torch.randn(3, 7))
    a[2].weight.grad = None
    opt.step()
    assert torch.equal(a[2].weight, frozen) and a[2].weight not in opt.state
    assert not torch.equal(a[0].weight.grad, torch.zeros_like(a[0].weight))


@pytest.mark.parametrize("fused", [True, False])
def test_state_saved_contiguous_resumes_channels_last_parameters(fused):
    """Checkpoints store tensors contiguous; a channels-last convolution weight must get its moments
    back in its own layout, or the fused kernel pairs each weight with another one's moments."""
    def conv():
        torch.manual_seed(3)
        return nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)

    def step(model, opt, seed):
        x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
        for p in model.parameters():
            p.grad = None
        model(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
        opt.step()

    straight, resumed = conv(), conv()
    opt_a, opt_b = Adam(straight.parameters(), **HYPER), Adam(resumed.parameters(), **HYPER)
    opt_a.fused = opt_b.fused = fused
    for seed in range(3):
        step(straight, opt_a, seed)
        step(resumed, opt_b, seed)
    saved = copy.deepcopy(opt_b.state_dict())
    for slots in saved["state"].values():  # as the safetensors checkpoint stores them
        for k in ("exp_avg", "exp_avg_sq"):
            slots[k] = slots[k].contiguous()
    opt_b = Adam(resumed.parameters(), **HYPER)
    opt_b.fused = fused
    opt_b.load_state_dict(saved)
    for seed in range(3, 6):
        step(straight, opt_a, seed)
        step(resumed, opt_b, seed)
    _same(straight, opt_a, resumed, opt_b)


@pytest.mark.parametrize("damage", ["count", "shape", "amsgrad", "slots"])
def test_load_refuses_state_that_does_not_fit(damage):
    a, _ = _models()
    opt = Adam(a.parameters(), **HYPER)
    _grads(a, torch.randn(3, 7))
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    if damage == "count":
        sd["param_groups"][0]["params"] = [0, 1]
    elif damage == "shape":
        sd["state"][0]["exp_avg"] = torch.zeros(2, 2)
    elif damage == "amsgrad":
        sd["param_groups"][0]["amsgrad"] = True
    else:
        sd["state"][0]["max_exp_avg_sq"] = torch.zeros(5, 7)
    with pytest.raises(ValueError):
        opt.load_state_dict(sd)


def test_training_start_up_does_not_import_torch_dynamo(tmp_path):
    """torch.optim's decorators import torch._dynamo (about 2 s) on first use; vaelab's Adam not."""
    import subprocess

    code = ("import sys, torch; from vaelab.optim import Adam; m = torch.nn.Linear(3, 2); o = Adam(m.parameters());"
            "m(torch.randn(4, 3)).sum().backward(); o.step(); o.state_dict();"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_fused_step_is_right_for_channels_last_weights_and_layout_changes():
    """The fused kernel walks parameter, gradient and moments as flat arrays: with a channels-last
    conv weight (the CPU default for conv models) every one must share its layout, also after a
    checkpoint round trip (saved contiguous) and after the model's layout changes mid-run."""
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(3, 4, 3)
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    conv.load_state_dict(ref.state_dict())
    ours, theirs = Adam(conv.parameters(), lr=0.1), torch.optim.Adam(ref.parameters(), lr=0.1, foreach=False)
    x = torch.randn(2, 3, 6, 6)

    def step(model, opt):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()

    for i in range(4):
        step(conv, ours)
        step(ref, theirs)
        if i == 1:  # checkpoint round trip: the moments come back contiguous from the file
            state = {k: v for k, v in ours.state_dict().items()}
            state["state"] = {k: {n: t.contiguous() for n, t in s.items()} for k, s in state["state"].items()}
            ours = Adam(conv.parameters(), lr=0.1)
            ours.load_state_dict(state)
        if i == 2:  # the layout changes under an optimiser that already has state
            conv.to(memory_format=torch.contiguous_format)
        torch.testing.assert_close(conv.weight, ref.weight, rtol=1e-6, atol=1e-6)
