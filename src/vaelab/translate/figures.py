"""Figures of image-to-image runs: input | mean | samples | std map (| target), one row per input.

`translation_figure` draws any number of rows (the run's `figures/translations.png`, one figure
per input for `vaelab translate`); `write_translate_run_figures` writes a finished run's figures:
`translations.png` (a seeded random choice of test inputs) and `loss.png`. The std map is shown
on one colour scale for the whole figure (so rows compare), with a colour bar in pixel units
([0, 1]); for colour images it is the RMS over the channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

if TYPE_CHECKING:
    from vaelab.data import ImageData

MAX_SAMPLES_SHOWN = 8
RUN_FIGURE_ROWS = 6
STD_CMAP = "magma"


def std_map(std: torch.Tensor) -> torch.Tensor:
    """Per-pixel std (..., C, H, W) -> one map (..., H, W): the RMS over the channels."""
    return std.float().square().mean(-3).sqrt()


def _show(ax, image: torch.Tensor) -> None:
    """An image (C, H, W) in [0, 1], grey or colour, pixel for pixel."""
    array = image.detach().float().cpu().clamp(0, 1).numpy()
    if array.shape[0] == 1:
        ax.imshow(array[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(array.transpose(1, 2, 0), interpolation="nearest")


def translation_figure(inputs: torch.Tensor, means: torch.Tensor, samples: torch.Tensor, stds: torch.Tensor,
                       path: str | Path, targets: Optional[torch.Tensor] = None, row_labels: Sequence[str] = (),
                       title: str = "") -> Path:
    """Rows of input | mean | samples | std map (| target): inputs (N, C_in, H, W), means and stds
    (N, C, H, W), samples (K, N, C, H, W), targets (N, C, H, W) or None; at most
    MAX_SAMPLES_SHOWN samples are drawn (the title says how many there are)."""
    n, k = inputs.shape[0], samples.shape[0]
    shown = min(k, MAX_SAMPLES_SHOWN)
    columns = ["input", "mean", *[f"sample {i + 1}" for i in range(shown)], "std"] + (["target"] if targets is not None
                                                                                     else [])
    maps = std_map(stds).cpu().numpy()  # (N, H, W)
    vmax = max(float(maps.max()), 1e-6)
    tile = 1.25
    fig, axes = plt.subplots(n, len(columns), figsize=(tile * len(columns) + 0.9, tile * n + 0.55), squeeze=False)
    for r in range(n):
        panels = [inputs[r], means[r], *[samples[i, r] for i in range(shown)]]
        for c, image in enumerate(panels):
            _show(axes[r, c], image)
        std_ax = axes[r, len(panels)]
        mappable = std_ax.imshow(maps[r], cmap=STD_CMAP, vmin=0, vmax=vmax, interpolation="nearest")
        if targets is not None:
            _show(axes[r, -1], targets[r])
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
        if row_labels:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
    top = 1 - 0.5 / (tile * n + 0.55)
    fig.subplots_adjust(left=0.05 if row_labels else 0.02, right=0.9, bottom=0.02, top=top, wspace=0.05, hspace=0.08)
    bar_ax = fig.add_axes((0.915, 0.1, 0.015, 0.75))
    bar = fig.colorbar(mappable, cax=bar_ax)
    bar.ax.tick_params(labelsize=7)
    bar.set_label("std (pixel values in [0, 1])", fontsize=7)
    heading = title or "Image to image"
    if k > shown:
        heading += f" ({shown} of {k} samples shown)"
    fig.suptitle(heading, fontsize=9)
    from vaelab.plots import save_png

    save_png(path, lambda buffer: fig.savefig(buffer, format="png", dpi=110))  # written atomically
    plt.close(fig)
    return Path(path)


@torch.inference_mode()
def write_translate_run_figures(model, data: ImageData, run_dir: str | Path, seed: int = 0,
                                rows: int = RUN_FIGURE_ROWS, num_samples: int = 8) -> list[Path]:
    """A finished translate run's figures in RUN/figures: translations.png and loss.png."""
    from vaelab.evaluate import EVAL_SEED
    from vaelab.plots import loss_figure
    from vaelab.translate.evaluate import fixed_pairs

    fig_dir = Path(run_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    test = data.test
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    pick = order[: min(rows, len(test))].sort().values  # a seeded random choice, not the first images
    pairs = fixed_pairs(test.take(pick), "test", seed=EVAL_SEED)
    out = model.translate(pairs.inputs.to(model.device), num_samples, torch.Generator().manual_seed(seed))
    written = [translation_figure(pairs.inputs, out.mean.cpu(), out.samples.cpu(), out.std.cpu(),
                                  fig_dir / "translations.png", targets=pairs.targets[0],
                                  row_labels=[f"test #{i}" for i in pick.tolist()],
                                  title="Test inputs, mean prediction, samples (z ~ p(z | input)), per-pixel std, "
                                        "target")]
    metrics = Path(run_dir) / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size:
        written.append(loss_figure(metrics, fig_dir / "loss.png"))
    return written


def as_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images (..., C, H, W) in [0, 1] -> uint8 numpy, rounded."""
    return (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
