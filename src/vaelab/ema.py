"""An exponential moving average (EMA) of a model's weights (`--ema-decay D`).

After every optimiser step, each averaged parameter moves towards the trained one:

    theta_ema <- D * theta_ema + (1 - D) * theta          (one `torch._foreach_lerp_` over all tensors)

starting from the initial weights, so after n steps theta_ema = D^n theta_0 + (1 - D) sum_k D^(n-k)
theta_k: an average over roughly the last 1 / (1 - D) steps (1000 for D = 0.999), the
exponential form of Polyak & Juditsky's (1992) iterate averaging. Averaged weights usually
validate better than the last iterate when the step size keeps the iterates jittering.

With EMA on, the training loop validates the averaged model every epoch, `model.safetensors`
holds the averaged weights (`config.json` says `"weights": "ema"`), `vaelab eval` and every
other command that loads the run use them, and the checkpoint keeps both: the raw weights the
optimiser continues from and the average (`extra.ema.*`), so a resumed run averages on exactly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

CHECKPOINT_PREFIX = "ema."


class ParameterEMA:
    """The moving average of `model`'s parameters, held in a copy of the model (`self.model`)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.source = [p for p in model.parameters()]
        self.averaged = [p for p in self.model.parameters()]
        # Buffers (none in vaelab's models today) are copied, not averaged.
        self.source_buffers = [b for b in model.buffers()]
        self.buffers = [b for b in self.model.buffers()]

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average, after an optimiser step."""
        torch._foreach_lerp_(self.averaged, self.source, 1.0 - self.decay)
        for target, value in zip(self.buffers, self.source_buffers):
            target.copy_(value)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The averaged weights as checkpoint tensors ("ema.<name>")."""
        return {CHECKPOINT_PREFIX + k: v for k, v in self.model.state_dict().items()}

    def load_state_tensors(self, extra: dict[str, torch.Tensor]) -> bool:
        """Restore what `state_tensors` saved, from a checkpoint's extra tensors; False if absent."""
        tensors = {k[len(CHECKPOINT_PREFIX):]: v for k, v in extra.items() if k.startswith(CHECKPOINT_PREFIX)}
        if not tensors:
            return False
        self.model.load_state_dict(tensors, strict=True)
        return True
