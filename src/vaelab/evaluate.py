"""Evaluation over whole splits: the negative ELBO and its parts, in inference mode.

All functions fix their own random seed inside `torch.random.fork_rng`, so evaluating never
disturbs the training RNG (a resumed run stays bit-identical) and repeated evaluations of the
same model agree.
"""

from __future__ import annotations

from typing import Optional

import torch

from vaelab.data.base import Split
from vaelab.data.batches import iterate_batches
from vaelab.objectives import elbo_loss

EVAL_SEED = 1234


@torch.inference_mode()
def elbo_on_split(model, split: Split, batch_size: int = 1000, dynamic_binarize: bool = False,
                  seed: int = EVAL_SEED, max_images: Optional[int] = None) -> dict[str, float]:
    """Mean per-image negative ELBO, reconstruction term and KL over `split` (beta = 1)."""
    device = model.device
    devices = [device] if device.type == "cuda" else []
    totals = torch.zeros(3, dtype=torch.float64)
    count = 0
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        for x, y in iterate_batches(split, batch_size, shuffle=False, generator=gen,
                                    dynamic_binarize=dynamic_binarize, device=device):
            parts = elbo_loss(model, x, y if model.conditional else None, beta=1.0)
            b = x.shape[0]
            totals += torch.stack([parts.loss, parts.recon, parts.kl]).double().cpu() * b
            count += b
            if max_images is not None and count >= max_images:
                break
    loss, recon, kl = (totals / max(count, 1)).tolist()
    return {"loss": loss, "recon": recon, "kl": kl}
