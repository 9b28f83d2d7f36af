"""The in-memory dataset container and the split helpers shared by every loader."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from vaelab.errors import DataError


@dataclass
class Split:
    """One split: `images` uint8 (N, C, H, W); `labels` int64 (N,) or None when unlabelled.

    A dataset generated from known factors of variation (`--dataset shapes`) also carries
    `factors` int64 (N, F): the index of each factor's value for every image (the values and
    names are in `ImageData.factors`); None for every other dataset.
    An image-to-image split (`paired`) also says where each image's *input* comes from: `inputs`
    uint8 (N, C_in, H, W), its partner image row by row (`images` are then the targets), or
    `degrade`, a callable (vaelab.data.degrade.Degradation) that makes a fresh degraded copy of
    each batch of targets. Batches of a paired split carry the input image where others carry the
    label (see `batches.iterate_batches`).
    """

    images: torch.Tensor
    labels: Optional[torch.Tensor] = None
    factors: Optional[torch.Tensor] = None
    inputs: Optional[torch.Tensor] = None
    degrade: Optional[Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]] = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def paired(self) -> bool:
        """Whether every image has an input image (an image-to-image split)."""
        return self.inputs is not None or self.degrade is not None

    def take(self, index: torch.Tensor | slice) -> Split:
        """The rows `index` of every per-image tensor (images, labels, factors, inputs); `degrade` is kept."""
        def rows(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t[index]

        return Split(self.images[index], rows(self.labels), rows(self.factors), rows(self.inputs), self.degrade)


@dataclass(frozen=True)
class FactorSpec:
    """The factors of variation behind a generated dataset (Split.factors holds their indices).

    `values[k][i]` is the value of factor k's i-th level (e.g. a scale of 0.5 .. 1); factors
    named in `categorical` are unordered (a shape), the others ordered quantities.
    """

    names: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]
    categorical: tuple[str, ...] = ()

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of levels of each factor."""
        return tuple(len(v) for v in self.values)

    def is_categorical(self) -> list[bool]:
        """Per factor, whether it is unordered."""
        return [name in self.categorical for name in self.names]


@dataclass
class ImageData:
    """Train / validation / test splits of one dataset, all of the same image shape."""

    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str] = field(default_factory=list)
    factors: Optional[FactorSpec] = None  # the factors of variation (`Split.factors`), if known

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(C, H, W) of every image (of every target, for image-to-image data); (C, D, H, W) for volumes."""
        return tuple(int(v) for v in self.train.images.shape[1:])

    @property
    def paired(self) -> bool:
        """Whether this is image-to-image data (every split has input images)."""
        return self.train.paired

    @property
    def input_channels(self) -> int:
        """Channels of the input images of paired data (those of the targets when degraded); 0 if unpaired."""
        if self.train.inputs is not None:
            return int(self.train.inputs.shape[1])
        return self.image_shape[0] if self.paired else 0

    @property
    def num_classes(self) -> int:
        """Number of labelled classes (0 when unlabelled)."""
        return len(self.class_names)

    def split(self, name: str) -> Split:
        """The split called "train", "val" or "test"."""
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split '{name}'; choose train, val or test")
        return getattr(self, name)


def to_nchw(images: np.ndarray, where: str) -> torch.Tensor:
    """(N, H, W) or (N, H, W, C) uint8 array -> contiguous uint8 tensor (N, C, H, W)."""
    if images.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None, :, :]
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{where}: images must be N×H×W or N×H×W×C (C = 1 or 3), got shape {images.shape}")
    if images.shape[0] == 0:
        raise DataError(f"{where}: contains no images")
    return torch.from_numpy(np.ascontiguousarray(images))


def to_labels(labels: Optional[np.ndarray], n: int, where: str) -> Optional[torch.Tensor]:
    """Flatten (N,) or (N, 1) integer labels to int64 (N,); check their count."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels must be N integers, got shape {labels.shape} dtype {labels.dtype}")
    if labels.shape[0] != n:
        raise DataError(f"{where}: {labels.shape[0]} labels for {n} images")
    if labels.size and labels.min() < 0:
        raise DataError(f"{where}: labels must be >= 0")
    return torch.from_numpy(labels.astype(np.int64))


def holdout_indices(n: int, fraction: float, seed: int, what: str = "images") -> tuple[np.ndarray, np.ndarray]:
    """A seeded random `fraction` of 0..n-1 -> (rest, held_out) sorted int64 indices; both non-empty.

    The indices alone, so a loader can decide the splits before decoding anything (the decoded
    cache writes each split's rows straight to disk) and medical loaders can split whole series.
    """
    if n < 2:
        raise DataError(f"need at least 2 {what} to make a validation split, got {n}")
    n_out = min(max(int(round(n * fraction)), 1), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_out:].sort().values.numpy(), order[:n_out].sort().values.numpy()


def three_way_indices(n: int, test_fraction: float, val_fraction: float, seed: int,
                      what: str = "images") -> dict[str, np.ndarray]:
    """Seeded train / val / test indices into 0..n-1: first `test_fraction` held out for test
    (seed + 1), then `val_fraction` of the rest for validation (seed), as `folder` always did."""
    if n < 3:
        raise DataError(f"need at least 3 {what} to make train/validation/test splits, got {n}")
    rest, test = holdout_indices(n, test_fraction, seed + 1, what)
    keep, val = holdout_indices(len(rest), val_fraction, seed, what)
    return {"train": rest[keep], "val": rest[val], "test": test}


def holdout(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split off a seeded random `fraction` of `split` -> (rest, held_out); both non-empty."""
    keep, out = (torch.from_numpy(i) for i in holdout_indices(len(split), fraction, seed))
    return split.take(keep), split.take(out)


def keep_classes(data: ImageData, classes: list[int]) -> ImageData:
    """Only the images of `classes` in the training and validation splits; the test split keeps all.

    For one-class / anomaly training (`--train-classes`): the model sees the "normal" classes
    only, and is then scored on a test split that still holds every class. A class the dataset
    does not have, or one with no training image, is a DataError naming the classes there are.
    """
    if data.train.labels is None:
        raise DataError(f"--train-classes needs a labelled dataset; {data.name} has no labels")
    names = data.class_names
    unknown = [c for c in classes if not 0 <= c < len(names)]
    if unknown:
        listing = ", ".join(f"{k} ({n})" if n != str(k) else str(k) for k, n in enumerate(names))
        raise DataError(f"--train-classes: {data.name} has no class {unknown[0]}; its classes are {listing}")
    chosen = torch.tensor(sorted(classes), dtype=torch.int64)

    def take(split: Split, name: str) -> Split:
        keep = torch.isin(split.labels, chosen).nonzero().squeeze(1)  # (n_kept,) row indices
        if len(keep) == 0:
            raise DataError(f"--train-classes {','.join(map(str, classes))}: the {name} split of {data.name} "
                            f"has no image of these classes")
        return split.take(keep)  # every per-image tensor (an image pair's input too)

    return ImageData(data.name, take(data.train, "training"), take(data.val, "validation"), data.test,
                     data.class_names, data.factors)


def apply_static_binarization(data: ImageData, seed: int) -> ImageData:
    """One fixed Bernoulli(grey) draw per pixel, seeded, so every epoch sees the same bits."""
    gen = torch.Generator().manual_seed(seed + 7919)

    def binarize(split: Split) -> Split:
        probs = split.images.float().div_(255.0)
        bits = torch.bernoulli(probs, generator=gen).to(torch.uint8).mul_(255)
        return dataclasses.replace(split, images=bits)

    return ImageData(data.name, binarize(data.train), binarize(data.val), binarize(data.test), data.class_names,
                     data.factors)
