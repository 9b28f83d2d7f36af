"""What the explorer serves: a trained model plus the split it maps, with every input checked.

`ExplorerSession` owns the model (eval mode), the split it serves (the test split by default), the
posterior means of up to `max_points` of its images (a seeded subset when there are more) and their
2-D map (`vaelab.latent.fit_projection`: the same PCA as the run's figures, identity for 2-D
latents). It validates every value that comes from a request and raises `InputError` (with an
HTTP status) for anything out of bounds.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from vaelab.data import Split, load_data
from vaelab.data.batches import to_float
from vaelab.data.images import decode_image
from vaelab.errors import ConfigError, DataError, VaelabError
from vaelab.explorer.codec import png_bytes
from vaelab.latent import encode_split, fit_projection, rank_dimensions, subsample

Z_LIMIT = 10.0  # |z_d| bound on every latent value a request may send; the prior puts ~0 mass past it
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_POINTS = 10_000
DEFAULT_SLIDER_DIMS = 12


class InputError(VaelabError):
    """A request value the explorer refuses; `status` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class EncodedImage:
    """An uploaded image as the model sees it, its posterior and its reconstruction."""

    image: np.ndarray  # uint8 (C, H, W), converted and resized
    mean: torch.Tensor  # (D,)
    log_var: torch.Tensor  # (D,)
    coords: torch.Tensor  # (2,) on the map
    reconstruction: np.ndarray  # uint8 (C, H, W)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images (B, C, H, W) in [0, 1] -> uint8 numpy (B, C, H, W), rounded."""
    return images.detach().float().cpu().clamp_(0, 1).mul_(255).round_().to(torch.uint8).numpy()


class ExplorerSession:
    """A loaded model and its split for the explorer: encoding, decoding, the latent map, input checks."""
    def __init__(self, model, split: Split, class_names: Sequence[str] = (), *, name: str = "model",
                 max_points: int = DEFAULT_MAX_POINTS, slider_dims: int = DEFAULT_SLIDER_DIMS,
                 z_limit: float = Z_LIMIT, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> None:
        if len(model.image_shape) != 3:  # its tiles, uploads and API are 2-D images
            raise ConfigError("vaelab explore shows 2-D images and this run models volumes (C, D, H, W); use vaelab "
                              "sample, reconstruct, traverse, interpolate or manifold, whose figures show their "
                              "orthogonal mid-slices")
        if len(split) == 0:
            raise DataError("the split to map has no images")
        if tuple(split.images.shape[1:]) != tuple(model.image_shape):
            raise DataError(f"images of shape {tuple(split.images.shape[1:])} do not fit the model's "
                            f"{tuple(model.image_shape)}")
        if model.conditional and split.labels is None:
            raise DataError("a conditional model needs a labelled split to map")
        self.model = model.eval()
        self.split = split
        self.class_names = list(class_names)
        self.name = name
        self.z_limit = float(z_limit)
        self.max_upload_bytes = int(max_upload_bytes)
        self.latent_dim = int(model.latent_dim)
        self.image_shape = tuple(int(s) for s in model.image_shape)  # (C, H, W)
        # The map: posterior means of (a seeded subset of) the split -> 2-D coordinates.
        self.encoded = encode_split(model, subsample(split, max_points))  # mean (N, D)
        self.projection = fit_projection(self.encoded.mean)
        self.coords = self.projection(self.encoded.mean)  # (N, 2)
        # Dimensions ordered by how much the model uses them (average KL to the prior). A
        # hierarchical model's decoder reads its bottom layer only: the sliders steer that layer
        # (`vaelab traverse --layer L` shows the others, whose moves regenerate the layers below).
        self.kl_per_dim = self.encoded.kl_per_dim()  # (D,)
        decoded = int(getattr(model, "layer_sizes", (self.latent_dim,))[0])
        self.dims_by_kl = [d for d in rank_dimensions(self.encoded) if d < decoded]
        self.slider_dims = self.dims_by_kl[: max(1, min(slider_dims, self.latent_dim))]

    # ---- construction ---------------------------------------------------------------------------

    @classmethod
    def from_model(cls, model, *, split: Optional[Split] = None, class_names: Optional[Sequence[str]] = None,
                   data_dir: Optional[str | Path] = None, run_dir: Optional[Path] = None, **kwargs: Any):
        """Map `split`, or the test split of the data the model was trained on (its run config)."""
        if split is None:
            cfg = getattr(model, "run_config", None)
            if cfg is None:
                raise ConfigError("this model has no run config: pass the split to map")
            data = load_data(_resolve_data_config(cfg.data, data_dir, run_dir))
            split = data.test
            class_names = data.class_names if class_names is None else class_names
        if class_names is None:
            n = 0 if split.labels is None else int(split.labels.max()) + 1
            class_names = [str(i) for i in range(n)]
        return cls(model, split, class_names, **kwargs)

    # ---- checks on request values ------------------------------------------------------------------

    def check_latent(self, values: Sequence[float], where: str = "z") -> list[float]:
        """A latent vector from a request: length D, finite, |z| <= limit; returned as a list (the
        batcher turns a whole batch into one tensor, cheaper than one tensor per request)."""
        if len(values) != self.latent_dim:
            raise InputError(f"{where} must have {self.latent_dim} values (the latent dimension), got {len(values)}")
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise InputError(f"{where}[{i}] must be a finite number, got {v}")
            if abs(v) > self.z_limit:
                raise InputError(f"{where}[{i}] = {v} is outside [-{self.z_limit:g}, {self.z_limit:g}]")
        return [float(v) for v in values]

    def check_label(self, label: Optional[int]) -> Optional[int]:
        """The label a decode/encode request gives: required and in range for conditional runs only."""
        if not self.model.conditional:
            if label is not None:
                raise InputError("this run is not conditional: leave out 'label'")
            return None
        if label is None:
            raise InputError(f"this run is conditional: give a 'label' in 0..{self.model.num_classes - 1}")
        if not 0 <= label < self.model.num_classes:
            raise InputError(f"label must be in 0..{self.model.num_classes - 1}, got {label}")
        return int(label)

    def check_index(self, index: int) -> int:
        if not 0 <= index < len(self.split):
            raise InputError(f"index {index} is out of range: the split has {len(self.split)} images "
                             f"(0..{len(self.split) - 1})", status=404)
        return index

    # ---- model work ------------------------------------------------------------------------------

    @torch.inference_mode()
    def prior_sample(self, seed: int) -> list[float]:
        """One draw (D values) from the model's own prior, seeded, clipped to the z limit."""
        z = self.model.prior.sample(1, generator=torch.Generator().manual_seed(int(seed)))[0]
        return z.float().cpu().clamp(-self.z_limit, self.z_limit).tolist()

    def decode_uint8(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> np.ndarray:
        """z (B, D) -> decoded expected images, uint8 (B, C, H, W)."""
        device = self.model.device
        y = None if labels is None else labels.to(device)
        return to_uint8(self.model.decode_images(z.to(device), y))

    def decode_pngs(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> list[bytes]:
        """z (B, D) -> one PNG per row (the batcher's unit of work)."""
        return [png_bytes(image) for image in self.decode_uint8(z, labels)]

    @torch.inference_mode()
    def encode_images(self, images: np.ndarray, label: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, C, H, W) -> posterior mean and log-variance, each (B, D), on the CPU."""
        x = to_float(torch.tensor(images)).to(self.model.device)  # copies: uploads may be read-only arrays
        y = None if label is None else torch.full((len(x),), label, dtype=torch.long, device=x.device)
        q = self.model.encode(x, y)
        return q.mean.float().cpu(), q.log_var.float().cpu()

    def encode_upload(self, data: bytes, label: Optional[int], invert: bool = False) -> EncodedImage:
        """Uploaded file bytes -> the image as the model sees it, its code, its reconstruction."""
        if len(data) > self.max_upload_bytes:
            raise InputError(f"upload is {len(data)} bytes; the limit is {self.max_upload_bytes}", status=413)
        if not data:
            raise InputError("upload is empty")
        channels, height, width = self.image_shape
        if height != width:
            raise InputError(f"uploads need a square model input; this model takes {height}×{width} images")
        try:
            image = decode_image(io.BytesIO(data), height, channels, "upload")  # uint8 (C, H, W)
        except DataError as exc:
            raise InputError(str(exc)) from None
        if invert:  # dark ink on light paper -> the light-on-dark convention of MNIST
            image = 255 - image
        mean, log_var = self.encode_images(image[None], label)
        recon = self.decode_uint8(mean, None if label is None else torch.tensor([label]))
        return EncodedImage(image, mean[0], log_var[0], self.projection(mean)[0], recon[0])

    def item(self, index: int) -> tuple[np.ndarray, Optional[int], torch.Tensor]:
        """Image `index` of the split: uint8 (C, H, W), its label (or None) and posterior mean (D,)."""
        index = self.check_index(index)
        image = self.split.images[index].numpy()
        label = None if self.split.labels is None else int(self.split.labels[index])
        mean, _ = self.encode_images(image[None], label if self.model.conditional else None)
        return image, label, mean[0]

    # ---- descriptions ----------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        cfg = getattr(self.model, "run_config", None)
        return {
            "name": self.name,
            "dataset": cfg.data.dataset if cfg else None,
            "arch": cfg.model.arch if cfg else None,
            "likelihood": cfg.model.likelihood if cfg else None,
            "latent_dim": self.latent_dim,
            "image_shape": list(self.image_shape),
            "conditional": bool(self.model.conditional),
            "num_classes": int(self.model.num_classes) if self.model.conditional else len(self.class_names),
            "class_names": self.class_names,
            "labelled": self.split.labels is not None,
            "split_size": len(self.split),
            "map_points": len(self.coords),
            "projection": "identity" if self.latent_dim <= 2 else "pca",
            "z_limit": self.z_limit,
            "prior": getattr(getattr(self.model, "cfg", None), "prior", "normal"),
            "max_upload_bytes": self.max_upload_bytes,
            "kl_per_dim": [round(float(v), 5) for v in self.kl_per_dim],
            "dims_by_kl": self.dims_by_kl,
            "slider_dims": self.slider_dims,
        }


def _resolve_data_config(data_cfg, data_dir: Optional[str | Path], run_dir: Optional[Path]):
    """The run's DataConfig, with `data_dir` overridden, and relative paths tried from the working
    directory first and then from the run folder."""
    changes: dict[str, Any] = {}
    if data_dir is not None:
        changes["data_dir"] = str(data_dir)
    for key in ("data_dir", "data_path"):
        value = changes.get(key, getattr(data_cfg, key))
        if value and run_dir is not None and not Path(value).is_absolute() and not Path(value).exists():
            for base in (run_dir, run_dir.parent):
                if (base / value).exists():
                    changes[key] = str((base / value).resolve())
                    break
    return dataclasses.replace(data_cfg, **changes)
