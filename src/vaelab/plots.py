"""Figures: image grids and the run folder's standard plots (matplotlib, Agg backend).

Every PNG is rendered in memory and written atomically (vaelab.checkpoint.atomic_write_bytes),
so a reader of a run folder never sees half a figure while a run draws its own.

Paper Fig. 2 -> `latent_figure` (test-set codes coloured by label); paper Fig. 3 ->
`reconstruction_figure` (inputs above their reconstructions).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vaelab.latent import EncodedSplit, Projection  # noqa: E402

if TYPE_CHECKING:
    from vaelab.data import ImageData
    from vaelab.models import VAE

from vaelab.checkpoint import atomic_write_bytes  # noqa: E402

MIN_TILE = 56  # tiles are upscaled (nearest) to at least this many pixels so 8×8 digits are visible


def mid_slices(volumes: torch.Tensor, gap: int = 1, gap_value: float = 1.0) -> torch.Tensor:
    """Volumes (N, C, D, H, W) -> tiles (N, C, S, 3S) of their orthogonal mid-slices side by side.

    D runs from superior to inferior and each (H, W) plane is an axial slice in the radiological
    view (data/volumes.py), so the three panels are, left to right: axial (H × W, at D // 2),
    coronal (D × W, at H // 2: superior at the top, patient's left on the right) and sagittal
    (D × H, at W // 2: superior at the top, posterior on the right). Each is centred in an S × S
    square (S = the largest size; black around it) and they are separated by `gap` columns.
    """
    v = volumes.detach().float().cpu()
    n, c, d, h, w = v.shape
    side = max(d, h, w)
    panels = [v[:, :, d // 2], v[:, :, :, h // 2, :], v[:, :, :, :, w // 2]]  # (N, C, rows, cols) each
    out = torch.full((n, c, side, 3 * side + 2 * gap), gap_value)
    for i, p in enumerate(panels):
        rows, cols = p.shape[2:]
        top, left = (side - rows) // 2, i * (side + gap) + (side - cols) // 2
        out[:, :, :, i * (side + gap) : i * (side + gap) + side] = 0.0
        out[:, :, top : top + rows, left : left + cols] = p
    return out


def as_tiles(images: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) as they are; volumes (N, C, D, H, W) as their `mid_slices` tiles."""
    return mid_slices(images) if images.dim() == 5 else images


def image_grid(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> uint8 grid (rows*H', nrow*W', 3) with `nrow` images per row.

    Volumes (N, C, D, H, W) are drawn as their orthogonal mid-slices (`mid_slices`)."""
    volumes = images.dim() == 5
    images = as_tiles(images.detach().float().cpu().clamp(0, 1))
    n, c, h, w = images.shape
    scale = max(1, math.ceil(MIN_TILE / (h if volumes else max(h, w))))  # volumes: each mid-slice panel h × h
    if scale > 1:
        images = images.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        h, w = h * scale, w * scale
    if c == 1:
        images = images.expand(n, 3, h, w)
    rows = math.ceil(n / nrow)
    grid = torch.full((3, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_png(path: str | Path, render: Callable[[io.BytesIO], None]) -> Path:
    """`render(buffer)` writes a PNG into `buffer`; it lands at `path` in one atomic rename."""
    buffer = io.BytesIO()
    render(buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int) -> Path:
    """Save `images` (N, C, H, W) in [0, 1] as one PNG grid with `nrow` per row."""
    return save_png(path, lambda buffer: Image.fromarray(image_grid(images, nrow)).save(buffer, format="PNG"))


def latent_figure(encoded: EncodedSplit, projection: Projection, path: str | Path,
                  class_names: Sequence[str] = (), title: str = "Latent codes of the test set") -> Path:
    """Scatter of the posterior means (projected to 2-D when D > 2), coloured by label."""
    coords = projection(encoded.mean).numpy()
    fig, ax = plt.subplots(figsize=(7, 6))
    if encoded.labels is not None:
        labels = encoded.labels.numpy()
        cmap = plt.get_cmap("tab10" if labels.max() < 10 else "tab20")
        sc = ax.scatter(coords[:, 0], coords[:, 1], c=labels, cmap=cmap, s=3, alpha=0.7,
                        vmin=-0.5, vmax=labels.max() + 0.5)
        bar = fig.colorbar(sc, ax=ax, ticks=range(int(labels.max()) + 1))
        if class_names:
            bar.ax.set_yticklabels(list(class_names)[: int(labels.max()) + 1])
    else:
        ax.scatter(coords[:, 0], coords[:, 1], s=3, alpha=0.6)
    d = encoded.mean.shape[1]
    ax.set_xlabel("z[0]" if d <= 2 else "PC 1 of the posterior means")
    ax.set_ylabel("z[1]" if d <= 2 else "PC 2 of the posterior means")
    ax.set_title(title)
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    save_png(path, lambda buffer: fig.savefig(buffer, format="png", dpi=110))
    plt.close(fig)
    return Path(path)


def latent_hist_figure(encoded: EncodedSplit, path: str | Path, max_dims: int = 16,
                       generator: Optional[torch.Generator] = None, prior_draws: Optional[torch.Tensor] = None,
                       dim_names: Optional[Sequence[str]] = None) -> Path:
    """Histogram of sampled codes h = sigma*N + mu per dimension, over the N(0, 1) density, or,
    given `prior_draws` (M, D) of a prior without a closed form, over the histogram of those draws
    (each panel then spans that dimension's prior mean ± 4 std).

    Dimensions are ordered by average KL (most informative first); at most `max_dims` shown.
    (For a flow posterior, sigma is the base Gaussian's: the histogram is an approximation.)
    """
    std = (0.5 * encoded.log_var).exp()
    codes = encoded.mean + std * torch.randn(encoded.mean.shape, generator=generator)
    order = encoded.kl_per_dim().argsort(descending=True)[:max_dims].tolist()
    cols = min(4, len(order))
    rows = math.ceil(len(order) / cols)
    # Shared x axis, fixed margins instead of tight_layout, few ticks: a 16-panel figure takes
    # about a quarter of the time tight_layout and per-panel tick labels took.
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.1 * rows + 0.6), squeeze=False,
                             sharex=prior_draws is None)
    fig.subplots_adjust(left=0.03, right=0.98, bottom=0.6 / (2.1 * rows + 0.6) * 0.9, top=1 - 0.55 / (2.1 * rows + 0.6),
                        wspace=0.08, hspace=0.35)
    grid = np.linspace(-4, 4, 200)
    density = np.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi)
    for ax, d in zip(axes.flat, order):
        span = (-4.0, 4.0)
        if prior_draws is not None:
            centre, spread = float(prior_draws[:, d].mean()), float(prior_draws[:, d].std()) or 1.0
            span = (centre - 4 * spread, centre + 4 * spread)
        # One filled polygon per histogram, not 60 bar patches: half the figure's drawing time.
        ax.hist(codes[:, d].numpy(), bins=60, range=span, density=True, color="tab:blue", alpha=0.6,
                histtype="stepfilled")
        if prior_draws is None:
            ax.plot(grid, density, color="black", lw=1.2, label="N(0, 1)")
            ax.set_xticks([-4, -2, 0, 2, 4])
        else:
            ax.hist(prior_draws[:, d].numpy(), bins=60, range=span, density=True, color="black", lw=1.2,
                    histtype="step", label="prior (draws)")
        ax.set_title(dim_names[d] if dim_names else f"z[{d}]", fontsize=9, pad=2)
        ax.set_yticks([])
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(order):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Latent codes of the test set per dimension, against the prior")
    save_png(path, lambda buffer: fig.savefig(buffer, format="png", dpi=100))
    plt.close(fig)
    return Path(path)


def reconstruction_figure(inputs: torch.Tensor, recons: torch.Tensor, path: str | Path) -> Path:
    """Paper Fig. 3: the row of inputs above the row of their reconstructions."""
    n = inputs.shape[0]
    return save_grid(torch.cat([inputs, recons]), path, nrow=n)


def manifold_grid_codes(steps: int, dims: tuple[int, int], latent_dim: int,
                        base: Optional[torch.Tensor] = None, edge: float = 0.05,
                        values: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """(steps², D) codes on a grid through the N(0, 1) quantiles in `dims` (or through the given
    `values` (steps,) of each of the two dims, ascending), other dims = base."""
    if values is None:
        quantiles = torch.linspace(edge, 1 - edge, steps)
        normal = torch.distributions.Normal(0.0, 1.0).icdf(quantiles)  # (steps,)
        values = (normal, normal)
    z = (torch.zeros(latent_dim) if base is None else base.clone()).repeat(steps * steps, 1)
    ys, xs = torch.meshgrid(values[1].flip(0), values[0], indexing="ij")  # top row = high z[j]
    z[:, dims[0]] = xs.reshape(-1)
    z[:, dims[1]] = ys.reshape(-1)
    return z


def loss_figure(metrics_path: str | Path, path: str | Path) -> Path:
    """Train and validation loss per epoch from metrics.jsonl."""
    from vaelab.runs import read_metrics

    rows = read_metrics(metrics_path)
    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train")
    ax.plot(epochs, [r["val_loss"] for r in rows], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO (nats per image)")
    ax.set_title("Loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(path, lambda buffer: fig.savefig(buffer, format="png", dpi=100))
    plt.close(fig)
    return Path(path)


def labelled_grid(images: torch.Tensor, nrow: int, path: str | Path, row_labels: Sequence[str] = (),
                  col_labels: Sequence[str] = (), title: str = "") -> Path:
    """An image grid (see `image_grid`) with a title and labels beside its rows and above its columns.

    The grid is drawn pixel for pixel (the figure is sized to it), so tiles are not resampled.
    """
    grid = image_grid(images, nrow)
    h, w = grid.shape[:2]
    tile_h = (h - 2) / math.ceil(images.shape[0] / nrow)
    tile_w = (w - 2) / nrow
    dpi = 100
    left = 8 + 7 * max((len(s) for s in row_labels), default=0)  # margins in pixels
    top = (26 if title else 6) + (16 if col_labels else 0)
    width, height = w + left + 8, h + top + 6
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes((left / width, 6 / height, w / width, h / height))
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([1 + tile_w * (i + 0.5) for i in range(len(col_labels))], list(col_labels), fontsize=8)
    ax.set_yticks([1 + tile_h * (i + 0.5) for i in range(len(row_labels))], list(row_labels), fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0, pad=2)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 4 / height, va="top")
    save_png(path, lambda buffer: fig.savefig(buffer, format="png", dpi=dpi))
    plt.close(fig)
    return Path(path)


def figure_indices(n_total: int, n: int, seed: int) -> torch.Tensor:
    """Which of a split's `n_total` images a figure shows: min(n, n_total) indices drawn at random
    without replacement with their own generator seeded by `seed` (the run's seed), so a split
    sorted by class (a folder of class sub-folders) is not shown as its first class only."""
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return order[: min(n, n_total)]


def prior_hist_arguments(model: VAE, seed: int = 0) -> dict:
    """`latent_hist_figure`'s prior arguments for `model`: none for N(0, I) (its density is drawn),
    seeded prior draws otherwise; and the dimensions' names (z2[3], ...) for a hierarchical model."""
    from vaelab.latent import PRIOR_DRAWS, dim_name, layer_sizes

    arguments: dict = {}
    if not model.prior.standard_normal:
        with torch.inference_mode():
            draws = model.prior.sample(PRIOR_DRAWS, generator=torch.Generator().manual_seed(seed))
        arguments["prior_draws"] = draws.float().cpu()
    if len(layer_sizes(model)) > 1:
        arguments["dim_names"] = [dim_name(model, d) for d in range(model.latent_dim)]
    return arguments


def _translate_figures(model, data: ImageData, run_dir: str | Path, seed: int) -> list[Path]:
    from vaelab.translate.figures import write_translate_run_figures

    return write_translate_run_figures(model, data, run_dir, seed=seed)


# Model family -> its figures (the VAE's are `write_run_figures` below).
FAMILY_FIGURES = {"translate": _translate_figures}


@torch.inference_mode()
def write_run_figures(model: VAE, data: ImageData, run_dir: str | Path, n_recon: int = 10, n_samples: int = 64,
                      seed: int = 0) -> list[Path]:
    """Write every standard figure of a run into RUN/figures/ (another model family's own set).

    reconstructions.png shows `n_recon` test images picked by `figure_indices(..., seed)` above
    their reconstructions; grey images are drawn grey, colour images in colour."""
    from vaelab.data.batches import to_float
    from vaelab.latent import encode_split, fit_projection
    from vaelab.models import family_of

    if family_of(model) in FAMILY_FIGURES:
        return FAMILY_FIGURES[family_of(model)](model, data, run_dir, seed)

    fig_dir = Path(run_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    test = data.test
    encoded = encode_split(model, test)
    projection = fit_projection(encoded.mean)
    written = [latent_figure(encoded, projection, fig_dir / "latent.png", data.class_names),
               latent_hist_figure(encoded, fig_dir / "latent_hist.png", generator=gen,
                                  **prior_hist_arguments(model))]
    idx = figure_indices(len(test), n_recon, seed)  # a seeded random sample, not the first images
    x = to_float(test.images[idx]).to(model.device)
    y = None if test.labels is None else test.labels[idx].to(model.device)
    written.append(reconstruction_figure(x, model.reconstruct(x, y if model.conditional else None),
                                         fig_dir / "reconstructions.png"))
    y_s = None
    if model.conditional:
        y_s = torch.arange(n_samples) % model.num_classes
    samples = model.sample(n_samples, y_s, generator=gen)
    written.append(save_grid(samples, fig_dir / "samples.png", nrow=int(math.sqrt(n_samples))))
    if model.latent_dim == 2:
        from vaelab.latent import manifold_images

        table = manifold_images(model, (0, 1), 15, y=0 if model.conditional else None)
        written.append(save_grid(table.images, fig_dir / "manifold.png", nrow=table.nrow))
    metrics = Path(run_dir) / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size:
        written.append(loss_figure(metrics, fig_dir / "loss.png"))
    return written
