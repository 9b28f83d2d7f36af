"""`--dataset shapes`: a procedural copy of dSprites (Matthey et al. 2017), drawn by vaelab.

The images are 64×64 and binary, one white shape on black, generated from five independent
factors on the original's grid (3 × 6 × 40 × 32 × 32 = 737,280 images, in dSprites' order:
the last factor varies fastest):

    shape        square, ellipse, heart                       (categorical)
    scale        6 values, 0.5 .. 1                           (the shape's size, linearly)
    orientation  40 values, 0 .. 2π, both ends included as in dSprites (so 0 and 2π draw the
                 same image), counter-clockwise on screen, about the shape's centre
    posX, posY   32 values each, 0 .. 1: the centre moves from pixel 16 to pixel 48 (left to
                 right, top to bottom), 32/31 ≈ 1.03 px per step

How a shape is drawn (`render`): in the shape's own frame, with unit length HALF_SIZE × scale
pixels (10 px at scale 1), the square is |u|, |v| <= 0.8 (16 px wide at scale 1), the ellipse
u² + (v/0.6)² <= 1 (20 × 12 px), and the heart is the classic sextic heart curve
(X² + Y² − 1)³ <= X² Y³, scaled and shifted so that its bounding box is 2 units wide and
centred on the shape's centre (about 20 × 20 px at scale 1, lobes up at orientation 0). A pixel is
on (255) when its centre, mapped into that frame (rotated by −orientation about the shape's
centre and divided by the unit), lies inside the shape; there is no anti-aliasing, which is
the same as box-filtering the exact shape and thresholding its coverage at one half, to first
order in the boundary's curvature. The drawing follows dSprites' description, not its pixels:
the images are not byte-identical to the original (sizes, the heart's curve and the pixel
grid all differ a little) and scores on it are not directly comparable with published ones.

A subset (`--shapes-subsample N`) is the first N images of a permutation of the whole grid
seeded by `--split-seed`; 10 % of them are the test split, `--val-fraction` of the rest the
validation split, the remainder the training split. Only the chosen images are drawn. Up to
CACHE_MIN_IMAGES images are drawn in memory at every load (a fraction of a second); larger
sets are drawn once into `$VAELAB_DATA/shapes/` (or `~/.cache/vaelab/shapes/`) as one raw
uint8 file (4 KiB per image, 3 GB for all 737,280) with a JSON record of its size and CRC-32,
and read memory-mapped after that: batches read only the pages they touch, so the whole grid
trains on a machine with little memory. A file whose record is missing or does not match is
drawn again, never trusted.

Labels: `Split.labels` is the shape (0 square, 1 ellipse, 2 heart), so class-conditional
models and the latent map work as for any labelled dataset; `Split.factors` (N, 5) holds
every factor's index and `ImageData.factors` their names and values.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vaelab.config import SHAPES_IMAGES, DataConfig
from vaelab.data.base import FactorSpec, ImageData, Split
from vaelab.errors import DataError

SHAPE_NAMES = ("square", "ellipse", "heart")
FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (3, 6, 40, 32, 32)
IMAGE_SIZE = 64
HALF_SIZE = 10.0  # pixels: one unit of the shape frame at scale 1
CENTRE_RANGE = (16.0, 48.0)  # pixels: where the centre goes as posX / posY runs 0 .. 1
WINDOW = 32  # pixels: every shape fits in a 32 × 32 window around its centre (at most 14.2 px out)
CHUNK = 1024  # images drawn per vectorised step
TEST_FRACTION = 0.1
CACHE_MIN_IMAGES = 4096  # larger sets are drawn once into the cache and memory-mapped
# Bumped whenever a drawn pixel can change: cache files of another version are drawn again.
GENERATOR_VERSION = 1
assert math.prod(FACTOR_SIZES) == SHAPES_IMAGES

# The heart curve (X² + Y² − 1)³ = X² Y³ spans X in ±1.139 and Y in −1 .. 1.236: scale by
# 1.139 so the box is 2 units wide, shift by the box's centre 0.118 so it turns about its middle.
_HEART_SCALE, _HEART_SHIFT = 1.139, 0.118


def factor_spec() -> FactorSpec:
    """The five factors, their values and which is categorical (the shape)."""
    pos = tuple(float(v) for v in np.linspace(0.0, 1.0, FACTOR_SIZES[3]))
    return FactorSpec(
        names=FACTOR_NAMES,
        values=(tuple(float(i) for i in range(3)),
                tuple(float(v) for v in np.linspace(0.5, 1.0, FACTOR_SIZES[1])),
                tuple(float(v) for v in np.linspace(0.0, 2 * math.pi, FACTOR_SIZES[2])),
                pos, pos),
        categorical=("shape",),
    )


def factors_of(index: np.ndarray) -> np.ndarray:
    """Flat image indices (n,) in 0..737279 -> factor indices (n, 5), in dSprites' order."""
    return np.stack(np.unravel_index(np.asarray(index, dtype=np.int64), FACTOR_SIZES), axis=1).astype(np.int64)


def index_of(factors: np.ndarray) -> np.ndarray:
    """Factor indices (n, 5) -> flat image indices (n,): the inverse of `factors_of`."""
    return np.ravel_multi_index(tuple(np.asarray(factors, dtype=np.int64).T), FACTOR_SIZES).astype(np.int64)


def _inside(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether shape-frame points (u right, v down; unit = HALF_SIZE × scale px) lie in the shape."""
    if shape == 0:  # square
        return torch.maximum(u.abs(), v.abs()) <= 0.8
    if shape == 1:  # ellipse, long axis along u
        return u * u + (v / 0.6) ** 2 <= 1.0
    x, y = _HEART_SCALE * u, _HEART_SHIFT - _HEART_SCALE * v  # y up: the lobes point up
    r = x * x + y * y - 1.0
    return r * r * r <= x * x * y * y * y


def render(factors: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Factor indices (n, 5) -> uint8 images (n, 1, 64, 64), 255 inside the shape, 0 outside."""
    factors = torch.as_tensor(np.asarray(factors), dtype=torch.int64).reshape(-1, len(FACTOR_SIZES))
    out = torch.zeros(len(factors), 1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    for lo in range(0, len(factors), CHUNK):
        out[lo:lo + CHUNK, 0] = _render_chunk(factors[lo:lo + CHUNK])
    return out


def _render_chunk(f: torch.Tensor) -> torch.Tensor:
    """(n, 5) factor indices -> (n, 64, 64) uint8. Each shape is evaluated in a 32 × 32 window
    around its centre (float64, so a pixel centre on the boundary is decided the same way on
    every machine but in the rarest cases) and pasted into the empty image."""
    n = len(f)
    dtype = torch.float64
    scale = 0.5 + 0.1 * f[:, 1].to(dtype)
    theta = (2 * math.pi / (FACTOR_SIZES[2] - 1)) * f[:, 2].to(dtype)
    step = (CENTRE_RANGE[1] - CENTRE_RANGE[0]) / (FACTOR_SIZES[3] - 1)
    cx = CENTRE_RANGE[0] + step * f[:, 3].to(dtype)  # (n,) pixels, column
    cy = CENTRE_RANGE[0] + step * f[:, 4].to(dtype)  # (n,) pixels, row
    left = cx.floor().long() - WINDOW // 2  # (n,) the window's first column, 0..32
    top = cy.floor().long() - WINDOW // 2
    w = torch.arange(WINDOW)
    dx = ((left[:, None] + w).to(dtype) + 0.5 - cx[:, None])[:, None, :]  # (n, 1, W) pixel centre - centre
    dy = ((top[:, None] + w).to(dtype) + 0.5 - cy[:, None])[:, :, None]  # (n, W, 1)
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    unit = (HALF_SIZE * scale)[:, None, None]
    # Undo a counter-clockwise (on screen, y down) rotation by theta, then divide by the unit.
    u = (cos * dx - sin * dy) / unit  # (n, W, W)
    v = (sin * dx + cos * dy) / unit
    window = torch.zeros(n, WINDOW, WINDOW, dtype=torch.bool)
    for shape in range(FACTOR_SIZES[0]):
        chosen = f[:, 0] == shape
        if bool(chosen.any()):
            window[chosen] = _inside(shape, u[chosen], v[chosen])
    images = torch.zeros(n, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    rows = (top[:, None] + w)[:, :, None]  # (n, W, 1)
    cols = (left[:, None] + w)[:, None, :]  # (n, 1, W)
    images[torch.arange(n)[:, None, None], rows, cols] = window.to(torch.uint8) * 255
    return images


def chosen_indices(count: int, seed: int) -> np.ndarray:
    """The flat indices of a seeded random subset of `count` images (all, in a seeded order, when
    `count` is the grid's size): the first `count` of one seeded permutation, so subsets nest."""
    order = torch.randperm(SHAPES_IMAGES, generator=torch.Generator().manual_seed(seed))
    return order[:count].numpy()


def load_shapes(cfg: DataConfig) -> ImageData:
    """The shapes dataset of `cfg` (see the module docstring): test, validation and training
    splits as consecutive ranges of the chosen images (views of one array: no copies)."""
    count = cfg.shapes_subsample or SHAPES_IMAGES
    index = chosen_indices(count, cfg.split_seed)
    images = _images(index, cfg.split_seed)  # (count, 1, 64, 64) uint8, in the order of `index`
    factors = torch.from_numpy(factors_of(index))  # (count, 5)
    n_test = max(1, int(round(count * TEST_FRACTION)))
    n_val = min(max(1, int(round((count - n_test) * cfg.val_fraction))), count - n_test - 1)
    bounds = {"test": (0, n_test), "val": (n_test, n_test + n_val), "train": (n_test + n_val, count)}

    def split(name: str) -> Split:
        lo, hi = bounds[name]
        return Split(images[lo:hi], factors[lo:hi, 0].clone(), factors[lo:hi].clone())

    return ImageData("shapes", split("train"), split("val"), split("test"), list(SHAPE_NAMES), factor_spec())


# ---- the cache: large sets drawn once, memory-mapped after --------------------------------------

def _images(index: np.ndarray, seed: int) -> torch.Tensor:
    """The images of `index` (n,) as uint8 (n, 1, 64, 64): drawn now, or mapped from the cache."""
    if len(index) <= CACHE_MIN_IMAGES:
        return render(factors_of(index))
    from vaelab.data.mnist import cache_dir

    path = cache_dir("shapes") / f"shapes-v{GENERATOR_VERSION}-seed{seed}-n{len(index)}.u8"
    mapped = _open_cached(path, len(index))
    if mapped is None:
        try:
            _write_cache(path, index)
        except OSError as exc:  # a read-only or full cache folder: draw in memory instead
            print(f"vaelab: cannot write the shapes cache {path.parent} ({exc.strerror or exc}); drawing "
                  f"{len(index):,} images in memory ({len(index) * IMAGE_SIZE ** 2 / 2 ** 20:,.0f} MiB)",
                  file=sys.stderr, flush=True)
            return render(factors_of(index))
        mapped = _open_cached(path, len(index))
        if mapped is None:
            raise DataError(f"the shapes cache {path} did not read back as written; remove it and try again")
    return mapped


def _record(path: Path) -> Path:
    return path.with_suffix(".json")


def _open_cached(path: Path, count: int) -> Optional[torch.Tensor]:
    """The cached images mapped copy-on-write, or None if the file or its record is missing,
    of another version or size, or its CRC-32 does not match (then it is drawn again)."""
    try:
        record = json.loads(_record(path).read_text())
        size = path.stat().st_size
    except (OSError, ValueError):
        return None
    want = {"version": GENERATOR_VERSION, "images": count, "bytes": count * IMAGE_SIZE ** 2}
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in want.items()) or size != want["bytes"]:
        return None
    if _crc32(path) != record.get("crc32"):
        return None
    mapped = np.memmap(path, dtype=np.uint8, mode="c", shape=(count, 1, IMAGE_SIZE, IMAGE_SIZE))
    return torch.from_numpy(mapped)


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(16 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def _write_cache(path: Path, index: np.ndarray) -> None:
    """Draw the images of `index` chunk by chunk into a temporary file, fsync, rename it into
    place, then write its record (last: a file without a valid record is never read)."""
    from vaelab.checkpoint import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"vaelab: drawing {len(index):,} shapes images into {path} (once; "
          f"{len(index) * IMAGE_SIZE ** 2 / 2 ** 20:,.0f} MiB)", file=sys.stderr, flush=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    crc = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            for lo in range(0, len(index), 16 * CHUNK):
                block = render(factors_of(index[lo:lo + 16 * CHUNK])).numpy().tobytes()
                crc = zlib.crc32(block, crc)
                handle.write(block)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    record = {"version": GENERATOR_VERSION, "images": len(index), "bytes": len(index) * IMAGE_SIZE ** 2,
              "crc32": crc, "layout": "uint8 (N, 1, 64, 64), rows in the order of the seeded permutation"}
    atomic_write_text(_record(path), json.dumps(record, indent=1))
