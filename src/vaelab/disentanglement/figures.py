"""Traversal figures of `vaelab disentanglement`, each latent dimension labelled with its factor.

RUN/figures/disentanglement/traverse-z<d>.png: for a few images of the pool (one row each), the
decoding of their code with dimension d set to `steps` values across the pool's 2nd..98th
percentile of that dimension, the other dimensions kept. RUN/figures/disentanglement.png: one row
per dimension (most used first) from the first image's code, its label saying which factor
the dimension captures (share of that factor's entropy) or that it is unused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from vaelab.plots import labelled_grid

if TYPE_CHECKING:
    from vaelab.models import VAE

ROWS = 4  # images per per-dimension figure
STEPS = 9
PERCENTILES = (2.0, 98.0)


def _label(capture: dict[str, Any]) -> str:
    if not capture["active"]:
        return f"z[{capture['dim']}] unused"
    if capture["factor"] is None:
        return f"z[{capture['dim']}] no factor"
    return f"z[{capture['dim']}] {capture['factor']} {capture['share_of_entropy']:.2f}"


def _values(codes: np.ndarray, dim: int, steps: int) -> torch.Tensor:
    low, high = np.percentile(codes[:, dim], PERCENTILES)
    if not high > low:  # a dimension the pool does not move: walk the prior's range instead
        low, high = low - 2.0, high + 2.0
    return torch.linspace(float(low), float(high), steps)


@torch.inference_mode()
def traversal_figures(model: VAE, codes: np.ndarray, captures: list[dict[str, Any]], figures_dir: Path,
                      labels: Optional[torch.Tensor] = None, steps: int = STEPS, rows: int = ROWS) -> list[Path]:
    """Write the per-dimension figures and the overview (see the module docstring); return their paths.

    codes (N, D): the pool's posterior means; labels (N,): its labels (a conditional model
    decodes each row with its image's label).
    """
    out_dir = figures_dir / "disentanglement"
    out_dir.mkdir(parents=True, exist_ok=True)
    bases = torch.from_numpy(codes[:rows]).float()  # (R, D) the first images of the (seeded) pool

    def decode(z: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        y = y.to(model.device) if model.conditional and y is not None else None
        return model.decode_images(z.to(model.device), y).float().cpu()

    base_labels = None if labels is None else labels[:len(bases)]
    written = []
    for capture in captures:
        d = capture["dim"]
        values = _values(codes, d, steps)
        grid = bases[:, None, :].repeat(1, steps, 1)  # (R, S, D)
        grid[:, :, d] = values
        images = decode(grid.reshape(-1, codes.shape[1]),
                        None if base_labels is None else base_labels.repeat_interleave(steps))
        title = _label(capture).replace(f"z[{d}] ", f"z[{d}]: ") + (
            " (share of the factor's entropy)" if capture["factor"] else "")
        written.append(labelled_grid(images, steps, out_dir / f"traverse-z{d}.png",
                                     [f"image {i}" for i in range(len(bases))],
                                     [f"{v:.2g}" for v in values.tolist()], title))
    order = sorted(captures, key=lambda c: -c["kl"])
    overview = []
    for capture in order:
        grid = bases[:1].repeat(steps, 1)
        grid[:, capture["dim"]] = _values(codes, capture["dim"], steps)
        overview.append(grid)
    images = decode(torch.cat(overview), None if base_labels is None else base_labels[:1].expand(steps * len(order)))
    written.append(labelled_grid(images, steps, figures_dir / "disentanglement.png", [_label(c) for c in order], [],
                                 "Each row moves one latent dimension (its 2nd..98th percentile)"))
    return written
