"""Learning-rate schedules: the rate of each epoch, after an optional linear warm-up.

`--lr-schedule` (config `train.lr_schedule`) picks one entry of `SCHEDULES`; each maps
(TrainConfig, 0-based epoch) to that epoch's rate, with lr = `--lr` and E = `--epochs`:

    constant   lr
    cosine     min_lr + (lr - min_lr) (1 + cos(pi t)) / 2,  t = (epoch - W) / (E - W) clamped to [0, 1]
               (Loshchilov & Hutter 2017, SGDR, without restarts; torch's CosineAnnealingLR with
               T_max = E when W = 0: the last epoch is one step above min_lr)
    step       lr * lr_decay ** floor(epoch / lr_step)                  (torch's StepLR)
    piecewise  lr * the multiplier of the segment holding the epoch's midpoint; segments are
               [[epochs, multiplier], ...] one after the other (`train.lr_segments`; the IWAE
               paper's 3^i passes at 10^(-i/7) in the presets)
    plateau    lr times lr_decay for every time the validation loss stopped improving for more
               than lr_patience epochs, never below min_lr (torch's ReduceLROnPlateau, mode min,
               relative threshold 1e-4, no cool-down); the only schedule with state, which lives
               in the checkpoint

`--warmup-epochs W` multiplies any of them by a linear ramp over the first W epochs, computed
per step like the KL warm-up: step s (1-based) of a run with S steps per epoch trains at
rate(epoch) * min(1, s / (W * S)). The plateau schedule only counts epochs after the warm-up.

Everything here is a function of (epoch, step, the plateau state), so a resumed run gets the
same rate at every step as an uninterrupted one. The training loop sets the rate at the start of
each epoch and, while warming up, before each step; a constant rate without warm-up costs
nothing per step. `metrics.jsonl`'s `lr` is the rate of the epoch's last step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional

from vaelab.config import TrainConfig

# torch.optim.lr_scheduler.ReduceLROnPlateau's defaults: a loss counts as better than the best
# so far only below best * (1 - 1e-4); a decay smaller than 1e-8 is skipped.
PLATEAU_THRESHOLD = 1e-4
PLATEAU_EPS = 1e-8


def lr_multiplier(segments: list[list[float]], epoch: int) -> float:
    """Piecewise-constant multiplier [[epochs, multiplier], ...] evaluated at `epoch` (0-based).

    A segment covers [start, start + epochs); past the last segment its multiplier stays.
    """
    start = 0.0
    for length, mult in segments:
        if epoch + 0.5 < start + length:  # the epoch's midpoint decides, for fractional segments
            return float(mult)
        start += length
    return float(segments[-1][1]) if segments else 1.0


def cosine_lr(tc: TrainConfig, epoch: int) -> float:
    """Cosine from lr down towards min_lr over the epochs after the warm-up."""
    span = tc.epochs - tc.warmup_epochs
    t = min(1.0, max(0.0, (epoch - tc.warmup_epochs) / span)) if span > 0 else 1.0
    return tc.min_lr + (tc.lr - tc.min_lr) * (1.0 + math.cos(math.pi * t)) / 2.0


def step_lr(tc: TrainConfig, epoch: int) -> float:
    """lr * lr_decay every lr_step epochs."""
    return tc.lr * tc.lr_decay ** (epoch // tc.lr_step)


# name -> (config, 0-based epoch) -> that epoch's rate, before warm-up (plateau: before its decays).
SCHEDULES: dict[str, Callable[[TrainConfig, int], float]] = {
    "constant": lambda tc, epoch: tc.lr,
    "cosine": cosine_lr,
    "step": step_lr,
    "piecewise": lambda tc, epoch: tc.lr * lr_multiplier(tc.lr_segments, epoch),
    "plateau": lambda tc, epoch: tc.lr,
}


class LRSchedule:
    """The learning rate of every step of a run (see the module docstring).

    `lr(epoch, step)` is the rate of 1-based step `step` in 0-based `epoch`; `end_epoch(val_loss,
    step)` feeds the plateau schedule; `state_dict()` / `load_state_dict()` carry its state
    through checkpoints (JSON).
    """

    def __init__(self, tc: TrainConfig, steps_per_epoch: int) -> None:
        self.tc = tc
        self.epoch_rate = SCHEDULES[tc.lr_schedule]
        # Steps of linear warm-up; 0 = none (the loop then never touches the rate mid-epoch).
        self.warmup_steps = math.ceil(tc.warmup_epochs * steps_per_epoch) if tc.warmup_epochs else 0
        # Plateau state, as torch's ReduceLROnPlateau keeps it.
        self.factor = 1.0  # product of the decays so far
        self.best: Optional[float] = None
        self.bad_epochs = 0

    def lr(self, epoch: int, step: int) -> float:
        """The rate for step `step` (1-based, counted over the whole run) of `epoch` (0-based)."""
        rate = self.epoch_rate(self.tc, epoch)
        if self.tc.lr_schedule == "plateau":
            rate = max(rate * self.factor, self.tc.min_lr)
        if step <= self.warmup_steps:
            rate *= step / self.warmup_steps
        return rate

    def end_epoch(self, val_loss: float, step: int) -> None:
        """After an epoch's validation (`step` = steps taken so far): the plateau schedule's update."""
        if self.tc.lr_schedule != "plateau" or step < self.warmup_steps or not math.isfinite(val_loss):
            return
        if self.best is None or val_loss < self.best * (1.0 - PLATEAU_THRESHOLD):
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.tc.lr_patience:
            old = max(self.tc.lr * self.factor, self.tc.min_lr)
            if old - max(old * self.tc.lr_decay, self.tc.min_lr) > PLATEAU_EPS:
                self.factor *= self.tc.lr_decay
            self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        """The plateau state (JSON-able)."""
        return {"factor": self.factor, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        """Restore `state_dict()` output (None: a checkpoint from before schedules had state)."""
        if state:
            self.factor = float(state["factor"])
            self.best = None if state["best"] is None else float(state["best"])
            self.bad_epochs = int(state["bad_epochs"])


def set_lr(optimizer: Any, lr: float) -> None:
    """Set the rate of every parameter group of a torch.optim optimizer or vaelab's Adam."""
    for group in optimizer.param_groups:
        group["lr"] = lr
