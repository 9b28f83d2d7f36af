"""Where an image is anomalous: per-pixel maps, their figures, and ground-truth masks.

- `residual`: |x − x̂| averaged over the channels, x̂ = E[x | z = E_q[z|x]] the reconstruction:
  the map of reconstruction-based detection (Baur et al. 2021).
- `weighted`: |x − x̂| / σ(x̂), the residual in units of the decoder's own per-pixel standard
  deviation (`likelihood.pixel_std`), where the likelihood has one: a pixel the decoder is
  unsure about counts less than one it claims to know. None for likelihoods without one
  (Bernoulli). For a fixed-std Gaussian it is the residual divided by that constant.
- `intensity`: the image itself (mean over channels), the no-model baseline of Meissen et al.
  2021, whose thresholded FLAIR images beat every autoencoder on brain-MRI lesions; reported with
  the others when masks are given.

Maps are (N, *S) with S the model's spatial size; a volume (C, D, H, W) is drawn at its middle
slice. Masks are image files matched to the scored files by name (`find_masks`), resized to the
model's size by nearest neighbour; any non-zero pixel is anomalous.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from vaelab.anomaly.baselines import as_float
from vaelab.errors import DataError

if TYPE_CHECKING:
    from vaelab.models import VAE

MAP_KINDS = ("residual", "weighted", "intensity")
MASK_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class AnomalyMaps:
    """Images, reconstructions and per-pixel anomaly maps of a batch."""

    image: np.ndarray  # (N, C, *S) float in [0, 1]
    reconstruction: np.ndarray  # (N, C, *S)
    residual: np.ndarray  # (N, *S) |x - x̂| averaged over channels
    weighted: Optional[np.ndarray]  # (N, *S) |x - x̂| / σ, or None
    intensity: np.ndarray  # (N, *S) the image, averaged over channels

    def get(self, kind: str) -> Optional[np.ndarray]:
        """The map called `kind` (one of MAP_KINDS)."""
        return getattr(self, kind)


@torch.inference_mode()
def anomaly_maps(model: VAE, images: torch.Tensor, batch_size: int = 250) -> AnomalyMaps:
    """Per-pixel maps of `images` (N, C, *S), uint8 or float in [0, 1]."""
    parts: dict[str, list[np.ndarray]] = {"image": [], "reconstruction": [], "residual": [], "weighted": []}
    has_std = True
    for start in range(0, len(images), batch_size):
        x = as_float(images[start:start + batch_size]).to(model.device)
        param = model.decode(model.encode(x).mean)  # the likelihood's parameter at the code
        x_hat = model.likelihood.mean(param)
        residual = (x - x_hat).abs()  # (B, C, *S)
        std = model.likelihood.pixel_std(param)
        has_std = has_std and std is not None
        parts["image"].append(x.float().cpu().numpy())
        parts["reconstruction"].append(x_hat.float().cpu().numpy())
        parts["residual"].append(residual.mean(1).float().cpu().numpy())
        if has_std:
            parts["weighted"].append((residual / std.clamp_min(1e-6)).mean(1).float().cpu().numpy())
    image = np.concatenate(parts["image"])
    return AnomalyMaps(image, np.concatenate(parts["reconstruction"]), np.concatenate(parts["residual"]),
                       np.concatenate(parts["weighted"]) if has_std else None, image.mean(1))


def _plane(array: np.ndarray) -> np.ndarray:
    """A 2-D view: (H, W) as is, a volume (D, H, W) at its middle slice."""
    return array[array.shape[0] // 2] if array.ndim == 3 else array


def _display_image(image: np.ndarray) -> np.ndarray:
    """(C, *S) -> (H, W) grey or (H, W, 3) RGB for imshow."""
    planes = np.stack([_plane(c) for c in image])  # (C, H, W)
    return planes[0] if planes.shape[0] == 1 else planes.transpose(1, 2, 0)


def common_scale(maps: Sequence[np.ndarray]) -> float:
    """One colour-scale maximum for a set of maps (their 99.9th percentile), so figures compare."""
    values = np.concatenate([np.ravel(m) for m in maps]) if len(maps) else np.zeros(1)
    top = float(np.quantile(values, 0.999)) if values.size else 1.0
    return top if top > 0 else 1.0


def save_map_figure(path: str | Path, maps: AnomalyMaps, i: int, title: str, scales: dict[str, float],
                    mask: Optional[np.ndarray] = None) -> Path:
    """One figure for image i: input, reconstruction, each map overlaid on the input, the mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = _display_image(maps.image[i])
    panels = [("input", None), ("reconstruction", None), ("residual |x - x̂|", "residual")]
    if maps.weighted is not None:
        panels.append(("residual / decoder σ", "weighted"))
    if mask is not None:
        panels.append(("ground truth", "mask"))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.7), squeeze=False)
    grey = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    for ax, (label, kind) in zip(axes[0], panels):
        ax.set_axis_off()
        ax.set_title(label, fontsize=8)
        if kind is None:
            ax.imshow(image if label == "input" else _display_image(maps.reconstruction[i]), **grey)
        elif kind == "mask":
            ax.imshow(image, **grey)
            ax.contour(_plane(mask).astype(float), levels=[0.5], colors="lime", linewidths=1.0)
        else:
            ax.imshow(image, **grey)
            overlay = ax.imshow(_plane(maps.get(kind)[i]), cmap="inferno", alpha=0.6, vmin=0.0, vmax=scales[kind])
            fig.colorbar(overlay, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def find_masks(mask_dir: str | Path, names: Sequence[str]) -> dict[str, Path]:
    """The mask file of each image name (its stem, optionally + "_mask"), in `mask_dir`."""
    folder = Path(mask_dir)
    if not folder.is_dir():
        raise DataError(f"mask folder not found: {folder}")
    files = {}
    for p in folder.iterdir():
        if p.suffix.lower() in MASK_EXTENSIONS and not p.name.startswith("."):
            files.setdefault(p.stem, p)
    found = {}
    for name in names:
        stem = Path(name).stem
        match = files.get(stem) or files.get(f"{stem}_mask")
        if match is not None:
            found[name] = match
    return found


def load_mask(path: str | Path, spatial: tuple[int, int]) -> np.ndarray:
    """A mask image -> bool (H, W) at the model's size (nearest neighbour); non-zero = anomalous."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            grey = img.convert("L")
            if grey.size != (spatial[1], spatial[0]):
                grey = grey.resize((spatial[1], spatial[0]), Image.NEAREST)
            return np.asarray(grey) > 0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable mask image ({exc})") from None
