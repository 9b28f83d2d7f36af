"""The optimisers (`--optimizer`), and vaelab's lean Adam (Kingma & Ba 2015) with torch.optim.Adam's
checkpoint layout.

`OPTIMIZERS` maps each `--optimizer` to a builder: `adam` is `Adam` below (torch.optim.Adam
when `--weight-decay` is given, an L2 penalty that the lean one does not implement); `adamw`
(Loshchilov & Hutter 2019, decoupled weight decay), `sgd` (with `--momentum`) and `rmsprop`
(Tieleman & Hinton 2012, with `--momentum`) are torch.optim's, with PyTorch's defaults for
everything vaelab has no flag for (RMSprop alpha 0.99, eps 1e-8). All four keep their state in
torch.optim's `state_dict()` layout, which is what checkpoints store.

Why a lean Adam and not `torch.optim.Adam` itself for plain `adam`: its constructor and `step()`
go through decorators that import `torch._dynamo` on first use, about 2 s of every `vaelab train`
start-up on 2 CPU cores, and its `step()` spends about 0.25 ms of Python bookkeeping per call
(grouping tensors by device and dtype, state look-ups), 7% of the MNIST recipe's step
(benchmarks/train_speed.py).

`Adam` here calls the very kernel `torch.optim.Adam(fused=True)` calls, `torch._fused_adam_`
(one kernel per parameter tensor), on the same state: `step` (float32 scalar tensor),
`exp_avg`, `exp_avg_sq`; where PyTorch has no fused kernel (an old PyTorch, another device) it
takes the same step as torch.optim's single-tensor implementation. `state_dict()` /
`load_state_dict()` use torch.optim.Adam's layout, so checkpoints move between the two.
tests/test_optim.py checks both paths bit for bit against `torch.optim.Adam`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

# torch.optim.Adam's hyper-parameters beyond lr / betas / eps, as it records them; vaelab's Adam
# supports exactly these values (plain Adam).
_FIXED = {"weight_decay": 0, "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
          "differentiable": False, "decoupled_weight_decay": False}


# --weight-decay when not given: PyTorch's default for each optimiser.
DEFAULT_WEIGHT_DECAY = {"adam": 0.0, "adamw": 0.01, "sgd": 0.0, "rmsprop": 0.0}


def _adam(params: list[torch.Tensor], tc) -> Any:
    if tc.weight_decay:  # L2 regularisation inside Adam: torch.optim's, fused where it can be
        return torch.optim.Adam(params, lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps,
                                weight_decay=tc.weight_decay, fused=_fused_kernel_for(params) or None)
    return Adam(params, lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps)


def _adamw(params: list[torch.Tensor], tc) -> Any:
    return torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps,
                             weight_decay=weight_decay_of(tc), fused=_fused_kernel_for(params) or None)


def _sgd(params: list[torch.Tensor], tc) -> Any:
    return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=weight_decay_of(tc))


def _rmsprop(params: list[torch.Tensor], tc) -> Any:
    return torch.optim.RMSprop(params, lr=tc.lr, momentum=tc.momentum, weight_decay=weight_decay_of(tc))


# --optimizer name -> (trainable parameters, TrainConfig) -> optimiser with torch.optim's interface.
OPTIMIZERS: dict[str, Callable[[list[torch.Tensor], Any], Any]] = {
    "adam": _adam, "adamw": _adamw, "sgd": _sgd, "rmsprop": _rmsprop,
}


def weight_decay_of(tc) -> float:
    """`tc.weight_decay`, or the optimiser's default when it is None."""
    return DEFAULT_WEIGHT_DECAY[tc.optimizer] if tc.weight_decay is None else float(tc.weight_decay)


def make_optimizer(model: nn.Module, tc) -> Any:
    """The `--optimizer` of a `TrainConfig` over the model's trainable parameters."""
    return OPTIMIZERS[tc.optimizer]([p for p in model.parameters() if p.requires_grad], tc)


def _fused_kernel_for(params: list[torch.Tensor]) -> bool:
    """Whether torch._fused_adam_ can update these parameters (float32/16 on a CPU or a GPU)."""
    return (hasattr(torch, "_fused_adam_") and bool(params)
            and all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
                    for p in params)
            and len({p.device for p in params}) == 1)


class Adam:
    """Adam with one parameter group; `step()`, `zero_grad()`, `state_dict()`, `load_state_dict()`,
    and `param_groups[0]["lr"]` to change the learning rate, as with torch.optim."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.fused = _fused_kernel_for(self.params)
        self.param_groups: list[dict[str, Any]] = [{
            "lr": lr, "betas": tuple(betas), "eps": eps, **_FIXED, "fused": self.fused or None,
            "params": self.params}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    # ---- the step ---------------------------------------------------------------------------
    def _slots(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        slots = self.state.get(p)
        if slots is None:  # created at a parameter's first step, as torch.optim does
            step_device = p.device if self.fused else torch.device("cpu")
            slots = self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=step_device),
                                     "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                     "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return slots

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient (the others are left alone)."""
        group = self.param_groups[0]
        params = [p for p in self.params if p.grad is not None]
        if not params:
            return
        slots = [self._slots(p) for p in params]
        grads = [p.grad for p in params]
        steps = [s["step"] for s in slots]
        exp_avgs = [s["exp_avg"] for s in slots]
        exp_avg_sqs = [s["exp_avg_sq"] for s in slots]
        lr, eps = float(group["lr"]), float(group["eps"])
        beta1, beta2 = (float(b) for b in group["betas"])
        if self.fused:
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2,
                               weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)
            return
        for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
            # torch.optim's single-tensor Adam, step for step (same rounding).
            t += 1
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            step = float(t.item())
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(eps)
            p.addcdiv_(m, denom, value=-lr / bias_correction1)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every parameter's gradient, as torch.optim does."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    # ---- checkpoints (torch.optim.Adam's layout) --------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """{"state": {index: {step, exp_avg, exp_avg_sq}}, "param_groups": [{..., "params": [indices]}]}."""
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(self.params)))
        state = {i: dict(self.state[p]) for i, p in enumerate(self.params) if p in self.state}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore `state_dict()` output (or torch.optim.Adam's); ValueError if it does not fit."""
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or len(groups) != 1 or len(groups[0].get("params", ())) != len(self.params):
            raise ValueError("optimizer state does not match the model's parameters")
        saved = groups[0]
        for key, value in _FIXED.items():
            if bool(saved.get(key, value)) != bool(value):
                raise ValueError(f"optimizer state uses {key}={saved[key]!r}, which vaelab's Adam does not")
        state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        for index, slots in (state_dict.get("state") or {}).items():
            p = self.params[int(index)]
            if set(slots) != {"step", "exp_avg", "exp_avg_sq"}:
                raise ValueError(f"optimizer state {index} has slots {sorted(slots)}")
            if slots["exp_avg"].shape != p.shape or slots["exp_avg_sq"].shape != p.shape:
                raise ValueError(f"optimizer state {index} has shape {tuple(slots['exp_avg'].shape)}, "
                                 f"the parameter {tuple(p.shape)}")
            step_device = p.device if self.fused else torch.device("cpu")
            # The moments take the parameter's memory layout (channels-last convolution weights, say):
            # the fused kernel walks all its tensors in storage order, so a layout mismatch would
            # pair each weight with another weight's moments.
            state[p] = {"step": torch.as_tensor(slots["step"]).to(step_device, torch.float32).clone(),
                        "exp_avg": torch.empty_like(p).copy_(slots["exp_avg"]),
                        "exp_avg_sq": torch.empty_like(p).copy_(slots["exp_avg_sq"])}
        group = self.param_groups[0]
        group["lr"], group["eps"] = float(saved["lr"]), float(saved["eps"])
        group["betas"] = tuple(float(b) for b in saved["betas"])
        self.state = state

