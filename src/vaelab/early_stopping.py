"""The best epoch so far: early stopping (`--early-stopping N`) and `--keep best`.

After each epoch's validation, `BestEpoch.update` records the epoch when its validation loss is
lower than every earlier one (strictly: a tie keeps the earlier epoch). Every metrics line
carries `best_epoch`. `--early-stopping N` ends training before the next epoch once N epochs in
a row have not improved on the best (checked at the top of each epoch, so a resumed run that had
stopped stays stopped); `--keep best` makes `model.safetensors` hold the best epoch's weights
(the validated ones: the moving average when `--ema-decay` is on) instead of the last epoch's.

The best epoch and loss are part of the checkpoint's loop state and, with `--keep best`, the
best weights are in the checkpoint too (`extra.best.*`), so a resumed run knows them exactly.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

CHECKPOINT_PREFIX = "best."


class BestEpoch:
    """The lowest validation loss so far, its 1-based epoch and (optionally) a copy of its weights."""

    def __init__(self, keep_weights: bool) -> None:
        self.keep_weights = keep_weights
        self.epoch = 0  # 0 = no epoch validated yet
        self.val_loss: Optional[float] = None
        self.weights: Optional[dict[str, torch.Tensor]] = None

    def update(self, epoch: int, val_loss: float, model: Optional[nn.Module]) -> bool:
        """Record `epoch` if `val_loss` beats the best so far (copying `model`'s weights when kept)."""
        if not math.isfinite(val_loss) or (self.val_loss is not None and not val_loss < self.val_loss):
            return False
        self.epoch, self.val_loss = epoch, float(val_loss)
        if self.keep_weights and model is not None:
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True

    def epochs_without_improvement(self, epochs_done: int) -> int:
        """How many of the `epochs_done` epochs came after the best one."""
        return epochs_done - self.epoch if self.epoch else epochs_done

    def should_stop(self, epochs_done: int, patience: int) -> bool:
        """Early stopping: `patience` (> 0) epochs in a row without a better validation loss."""
        return patience > 0 and self.epoch > 0 and self.epochs_without_improvement(epochs_done) >= patience

    def state_dict(self) -> dict[str, Any]:
        """The loop-state part (JSON-able)."""
        return {"epoch": self.epoch, "val_loss": self.val_loss}

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        """Restore `state_dict()` output (None: a checkpoint from before vaelab tracked the best epoch)."""
        if state:
            self.epoch = int(state["epoch"])
            self.val_loss = None if state["val_loss"] is None else float(state["val_loss"])

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The best weights as checkpoint tensors ("best.<name>"); empty unless kept."""
        return {CHECKPOINT_PREFIX + k: v for k, v in (self.weights or {}).items()}

    def load_state_tensors(self, extra: dict[str, torch.Tensor]) -> None:
        """Restore what `state_tensors` saved from a checkpoint's extra tensors."""
        tensors = {k[len(CHECKPOINT_PREFIX):]: v.clone() for k, v in extra.items() if k.startswith(CHECKPOINT_PREFIX)}
        self.weights = tensors or None
