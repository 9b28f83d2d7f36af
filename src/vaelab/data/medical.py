"""What the DICOM and NIfTI loaders share: volumes, intensity windows, slices, and splits by patient.

A scan reaches the model in four steps, the same for both formats:

1. its voxels in modality units (Hounsfield units for CT, after RescaleSlope/Intercept);
2. an intensity window [low, high] -> 0..255 (clipped): `--intensity-window LOW,HIGH`, or per
   series the robust percentiles PERCENTILES (0.5th and 99.5th) of its voxels, so a few
   metal-artefact or air voxels do not squash the contrast of everything else;
3. each 2-D slice resized (bilinear, on the windowed values) to `--image-size` × `--image-size`
   and rounded to uint8; MONOCHROME1 images (white = low values) inverted;
4. slices that are one constant value after windowing (all air below the window, the zero
   padding around a skull-stripped brain) skipped unless `--keep-empty-slices`.

`Window.inverse` maps a model's output back to modality units (`vaelab reconstruct ... --out
X.nii.gz`); values outside the window were clipped on the way in and cannot come back.

Splits are made by patient (PatientID, or a BIDS `sub-<label>` folder) where one is known, else by
series / file: the slices of one scan never straddle train, validation and test. Identifying values
(PatientID, UIDs) are only compared in memory, never written or printed: files are named by their
path relative to `--data-dir` in every message. How a slice is shown (the radiological view) is
`orientation.py`'s job; the formats' own readers are `dicom.py` / `dicom_pixels.py` and `nifti.py`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vaelab.config import DataConfig
from vaelab.data.base import ImageData, three_way_indices
from vaelab.data.cache import CacheKey, SplitWriter, load_cached, note
from vaelab.errors import DataError

DEFAULT_SIZE = 64  # scans are large: 28×28 (the folder default) loses most anatomy
PERCENTILES = (0.5, 99.5)  # robust per-series window when no --intensity-window is given
SAMPLE_PIXELS = 16_384  # per slice, for the percentiles: stride s in both directions, s² · this ≥ the slice
TEST_FRACTION = 0.1
MAX_VOXELS = 2**30  # one volume or series (4 GiB as float32): refused before anything is allocated
MAX_SLICE_PIXELS = 64_000_000  # one 2-D slice, as for ordinary images
INSTALL_HINT = "pip install 'vaelab[medical]'"
DECODER_VERSION = "medical-1"  # bump when a change here changes decoded pixels (invalidates caches)


@contextlib.contextmanager
def quiet(library: str) -> Iterator[None]:
    """Silence a reader library (its warnings and log lines): they can quote header values (names,
    dates, descriptions) and would break the one-line error output."""
    logger = logging.getLogger(library)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        logger.propagate = propagate


def require(module: str, dataset: str) -> Any:
    """Import pydicom / nibabel on first use; one clear line naming the pip install when missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"--dataset {dataset} needs the {module} package: {INSTALL_HINT}") from None


# ---- intensity windows ------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A linear map of modality values [low, high] -> [0, 255], clipped outside."""

    low: float
    high: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Modality values -> float64 in [0, 255] (not yet rounded: resizing comes first)."""
        scaled = (values.astype(np.float64) - self.low) * 255.0 / (self.high - self.low)
        return np.clip(scaled, 0.0, 255.0)

    def inverse(self, grey: np.ndarray) -> np.ndarray:
        """Grey values in [0, 255] -> modality units (within [low, high])."""
        return (self.low + np.clip(grey.astype(np.float64), 0.0, 255.0) * ((self.high - self.low) / 255.0)
                ).astype(np.float32)


def fixed_window(cfg: DataConfig) -> Optional[Window]:
    """`--intensity-window LOW,HIGH` as a Window, or None (per-series percentiles)."""
    if cfg.intensity_window is None:
        return None
    return Window(float(cfg.intensity_window[0]), float(cfg.intensity_window[1]))


def sample_for_percentiles(values: np.ndarray) -> np.ndarray:
    """Every s-th pixel of a 2-D slice in both directions (all of it up to 128×128), flattened."""
    stride = max(1, math.ceil(math.sqrt(values.shape[0] * values.shape[1] / SAMPLE_PIXELS)))
    return np.asarray(values[::stride, ::stride], dtype=np.float32).ravel()


def robust_window(samples: Sequence[np.ndarray]) -> Window:
    """The PERCENTILES of the pooled samples; min..max if they coincide; a unit window if constant."""
    pooled = np.concatenate([s.ravel() for s in samples]) if samples else np.zeros(1, np.float32)
    low, high = (float(v) for v in np.percentile(pooled, PERCENTILES))
    if not high > low:
        low, high = float(pooled.min()), float(pooled.max())
    if not high > low:
        # A constant series: every slice is empty. The width must survive float64 rounding: at
        # |low| = 2.4e24 (a damaged header's scaling), low + 1.0 == low, and 0 / 0 gave NaN pixels.
        high = low + max(1.0, abs(low))
    return Window(low, high)


def check_finite(values: np.ndarray, where: str) -> None:
    """Refuse NaN / ±Inf voxels with one line naming the file."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise DataError(f"{where}: contains NaN or infinite values")


# ---- slices -----------------------------------------------------------------------------------


def resize_float(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float 2-D array to `shape` (rows, cols), as `folder` resizes images."""
    from PIL import Image

    if values.shape == shape:
        return values  # no resampling: the values stay exact
    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    return np.asarray(img.resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.float32)


def to_uint8(grey: np.ndarray) -> np.ndarray:
    """Float grey values in [0, 255] -> uint8, rounded."""
    return np.round(np.clip(grey, 0.0, 255.0)).astype(np.uint8)


@dataclass
class Slice:
    """One 2-D image of a scan as decoded: modality values (R, C) float32, or RGB (R, C, 3) uint8."""

    values: np.ndarray
    invert: bool = False  # MONOCHROME1: low values are shown white
    where: str = ""  # the file, relative to --data-dir, for messages

    @property
    def colour(self) -> bool:
        return self.values.ndim == 3


def grey_slice(s: Slice, window: Window, size: int) -> np.ndarray:
    """Window, resize and round one grey slice -> uint8 (size, size) (MONOCHROME1 inverted)."""
    check_finite(s.values, s.where)
    u = to_uint8(resize_float(window.apply(s.values), (size, size)))
    return 255 - u if s.invert else u


def colour_slice(s: Slice, size: int, channels: int) -> np.ndarray:
    """An RGB (ultrasound, photo) slice, converted and resized like a folder image -> (C, size, size)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(s.values, dtype=np.uint8))
    img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def window_series(slices: Callable[[], Iterator[Slice]], window: Optional[Window], size: int, channels: int,
                  keep_empty: bool) -> tuple[np.ndarray, int]:
    """Every slice of one series -> (uint8 (k, C, size, size), number of empty slices skipped).

    `slices()` yields the series' slices in order; it is called twice when the window comes from
    the series' own percentiles (one pass to sample, one to convert), so no series is ever held
    whole at full resolution.
    """
    if window is None:
        samples = []
        for s in slices():
            if not s.colour:
                check_finite(s.values, s.where)  # before np.percentile: NaN would poison the window
                samples.append(sample_for_percentiles(s.values))
        window = robust_window(samples)
    out, empty = [], 0
    for s in slices():
        image = colour_slice(s, size, channels) if s.colour else grey_slice(s, window, size)
        if image.ndim == 2:
            image = np.repeat(image[None], channels, axis=0)  # grey scans for an RGB model
        if not keep_empty and is_empty(image):
            empty += 1
            continue
        out.append(image)
    images = np.stack(out) if out else np.zeros((0, channels, size, size), np.uint8)
    return images, empty


def is_empty(image: np.ndarray) -> bool:
    """A slice is empty when it is one constant value after windowing."""
    return bool(image.min() == image.max())


# ---- files, labels and splits -----------------------------------------------------------------


def visible(folder: Path) -> list[Path]:
    """Entries of `folder`, sorted, without hidden ones."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def walk_files(folder: Path) -> list[Path]:
    """Every non-hidden file under `folder`, recursively, sorted (hidden folders skipped too)."""
    out: list[Path] = []
    for entry in visible(folder):
        if entry.is_dir():
            out += walk_files(entry)
        elif entry.is_file():
            out.append(entry)
    return out


def scan_tree(root: Path, dataset: str, class_folders: bool) -> tuple[list[Path], list[Optional[int]], list[str]]:
    """Every file under `root` and its class: the top-level sub-folder it lies in (None: unlabelled).

    With `class_folders`, a root holding sub-folders labels its files by the sub-folder they lie
    in, searched recursively beneath it; loose files next to the class folders are refused (as
    for `folder`), except a DICOMDIR index. Without, or when the root holds no sub-folders, the
    whole tree is one unlabelled dataset.
    """
    if not root.is_dir():
        raise DataError(f"--data-dir for --dataset {dataset} does not exist or is not a folder")
    entries = visible(root)
    subdirs = [p for p in entries if p.is_dir()]
    if not class_folders or not subdirs:
        files = walk_files(root)
        return files, [None] * len(files), []
    loose = [p for p in entries if p.is_file() and p.name.upper() != "DICOMDIR"]
    if loose:
        raise DataError(f"--data-dir mixes files ({loose[0].name}) and class sub-folders; put every scan in a "
                        "class folder, or pass --no-class-folders to search the whole tree unlabelled")
    files, labels = [], []
    for label, sub in enumerate(subdirs):
        found = walk_files(sub)
        files += found
        labels += [label] * len(found)
    return files, labels, [d.name for d in subdirs]


BIDS_SUBJECT = re.compile(r"sub-[A-Za-z0-9]+")


def bids_subject(rel: Path) -> Optional[str]:
    """The BIDS subject folder (`sub-01`) a file lies in, if any: its slices share a patient."""
    for part in rel.parts[:-1]:
        if BIDS_SUBJECT.fullmatch(part):
            return part
    return None


def split_units(groups: Sequence[str], cfg: DataConfig, what: str) -> dict[str, list[int]]:
    """Assign units (series, files) to train / val / test so that units of one group (patient)
    stay together. `groups[i]` is unit i's group; groups are ordered by first appearance."""
    order: dict[str, int] = {}
    for g in groups:
        order.setdefault(g, len(order))
    plan = three_way_indices(len(order), TEST_FRACTION, cfg.val_fraction, cfg.split_seed, what)
    split_of = {int(g): name for name, idx in plan.items() for g in idx}
    return {name: [i for i, g in enumerate(groups) if split_of[order[g]] == name] for name in plan}


@dataclass
class Unit:
    """One series (DICOM) or one volume / time point set (NIfTI): decoded and windowed as a whole."""

    slices: Callable[[], Iterator[Slice]]  # yields the unit's slices in order (may be called twice)
    group: str  # patient (or the unit itself): units of one group share a split; never written anywhere
    label: Optional[int]
    release: Optional[Callable[[], None]] = None  # drops what `slices` kept in memory, once decoded


def load_units(kind: str, cfg: DataConfig, root: Path, files: list[Path], params: dict[str, Any],
               scan: Callable[[], tuple[list[Unit], list[str], dict[str, int]]]) -> ImageData:
    """Decode the units that `scan()` finds (through the decoded-image cache) into an ImageData.

    `scan()` reads the headers and returns (units, class_names, skipped counts); it only runs
    when the cache has to be built. A summary line reports what was skipped.
    """
    size = cfg.image_size or DEFAULT_SIZE
    channels = cfg.channels or 1
    window = fixed_window(cfg)

    def build(writer: SplitWriter) -> tuple[list[str], dict[str, Any]]:
        units, class_names, skipped = scan()
        unit_word = "series" if kind == "dicom" else "volumes"
        if len({u.group for u in units}) < 3:
            n_groups = len({u.group for u in units})
            raise DataError(f"--dataset {kind}: found {len(units)} {unit_word} of {n_groups} patient(s); "
                            "splits are made by patient (or by series), never by slice, so train/validation/test "
                            "need at least 3")
        plan = split_units([u.group for u in units], cfg, f"patients or {unit_word}")
        empty = 0
        for split, members in plan.items():
            for i in members:
                images, n_empty = window_series(units[i].slices, window, size, channels, cfg.keep_empty_slices)
                if units[i].release is not None:
                    units[i].release()
                empty += n_empty
                label = units[i].label
                writer.add(split, images, None if label is None else np.full(len(images), label, np.int64))
        skipped = dict(skipped)
        if empty:
            skipped["empty slice(s)"] = empty
        return class_names, {"skipped": skipped, "units": len(units)}

    key = CacheKey(kind, root, files, {**params, "size": size, "channels": channels,
                                       "window": None if window is None else [window.low, window.high],
                                       "percentiles": list(PERCENTILES), "keep_empty": cfg.keep_empty_slices,
                                       "class_folders": cfg.class_folders, "split_seed": cfg.split_seed,
                                       "val_fraction": cfg.val_fraction, "test_fraction": TEST_FRACTION,
                                       "decoder": DECODER_VERSION})
    return cached_units(kind, key, build, f"--dataset {kind}", cfg.cache)


def cached_units(kind: str, key: CacheKey, build: Callable[[SplitWriter], tuple[list[str], dict[str, Any]]],
                 what: str, enabled: bool) -> ImageData:
    """The splits `build` writes, through the decoded-image cache, with one note line counting what
    its scan skipped (the counts are kept in the cache, so a cache hit reports them too)."""
    cached = load_cached(key, build, what=what, enabled=enabled)
    skipped = {k: int(v) for k, v in cached.extra.get("skipped", {}).items() if v}
    if skipped:
        note(f"{kind}: skipped " + ", ".join(f"{v} {k}" for k, v in skipped.items()))
    s = cached.splits
    return ImageData(kind, s["train"], s["val"], s["test"], cached.class_names)


def relative(path: Path, root: Path) -> str:
    """A file as messages name it: its path relative to --data-dir."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name
