"""Turn an in-memory uint8 split into float batches in [0, 1], with no per-sample Python work.

One `torch.randperm` per epoch gives the order; each batch is one index gather from the uint8
tensor and one conversion. Dynamic binarisation resamples every pixel as Bernoulli(grey) each
time a batch is drawn, from the same seeded generator as the order, so a run is reproducible
(and resumable: the generator's state is checkpointed).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import torch

from vaelab.data.base import Split


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1]."""
    return images.to(torch.float32).div_(255.0)


def binarize_dynamic(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """A fresh Bernoulli(x) draw per pixel. x: float (B, C, H, W) in [0, 1]."""
    return torch.bernoulli(x, generator=generator)


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    generator: Optional[torch.Generator] = None,
    dynamic_binarize: bool = False,
    device: torch.device | str = "cpu",
    start: int = 0,
    order: Optional[torch.Tensor] = None,
) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """Yield (x float (B, C, H, W), y int64 (B,) or None) batches from `split`.

    `order`/`start` let a resumed run continue mid-epoch: pass the epoch's permutation and the
    index of the first batch not yet seen.
    """
    n = len(split)
    if order is None:
        order = torch.randperm(n, generator=generator) if shuffle else None
    images, labels = split.images, split.labels
    for i in range(start, (n + batch_size - 1) // batch_size):
        if order is None:
            xb = images[i * batch_size : (i + 1) * batch_size]
            yb = None if labels is None else labels[i * batch_size : (i + 1) * batch_size]
        else:
            idx = order[i * batch_size : (i + 1) * batch_size]
            xb = images[idx]
            yb = None if labels is None else labels[idx]
        x = to_float(xb.to(device, non_blocking=True))
        if dynamic_binarize:
            x = binarize_dynamic(x, generator if x.device.type == "cpu" else None)
        yield x, None if yb is None else yb.to(device, non_blocking=True)
