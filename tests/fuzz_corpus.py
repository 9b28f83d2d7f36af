"""Seed files and damage for the fuzz tests (`test_fuzz.py`): a registry of small valid files,
each with the reader that must decode it, and the seeded mutations applied to them.

`SEEDS` maps a name to a `Seed`: a generator of one small valid file from a NumPy random
generator, the file's suffix, and its `kind`; `READERS` maps a kind to the vaelab reader that
decodes such bytes (or raises `DataError`). Adding a format is adding entries: the DICOM and
NIfTI seeds below (made by `vaelab.data.synthetic_scans.seed_files`, present when pydicom and
nibabel are installed) were added that way, and every fuzz test (the decode path, the explorer's
uploads when `uploadable`) covers them.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Seed:
    """A small valid file: `make(rng) -> bytes`, its suffix, the kind of reader it goes through,
    and whether the explorer's upload endpoint takes it (images)."""

    make: Callable[[np.random.Generator], bytes]
    suffix: str
    kind: str
    uploadable: bool = False


def _size(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(3, 25)), int(rng.integers(3, 25))


def _pil(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png8(rng: np.random.Generator) -> bytes:
    return _pil(rng.integers(0, 256, _size(rng), dtype=np.uint8), "PNG")


def png16(rng: np.random.Generator) -> bytes:
    return _pil(rng.integers(0, 65536, _size(rng)).astype(np.uint16), "PNG")


def png_rgb(rng: np.random.Generator) -> bytes:
    return _pil(rng.integers(0, 256, (*_size(rng), 3), dtype=np.uint8), "PNG")


def jpeg(rng: np.random.Generator) -> bytes:
    return _pil(rng.integers(0, 256, (*_size(rng), 3), dtype=np.uint8), "JPEG", quality=int(rng.integers(30, 96)))


def tiff8(rng: np.random.Generator) -> bytes:
    return _pil(rng.integers(0, 256, _size(rng), dtype=np.uint8), "TIFF")


def tiff16(rng: np.random.Generator) -> bytes:
    return _pil(rng.integers(0, 65536, _size(rng)).astype(np.uint16), "TIFF")


def tiff_float(rng: np.random.Generator) -> bytes:
    return _pil(rng.normal(0.0, 100.0, _size(rng)).astype(np.float32), "TIFF")


def tiff_rgb(rng: np.random.Generator) -> bytes:
    compression = ("raw", "tiff_lzw", "tiff_adobe_deflate", "packbits")[int(rng.integers(0, 4))]
    return _pil(rng.integers(0, 256, (*_size(rng), 3), dtype=np.uint8), "TIFF", compression=compression)


def bmp(rng: np.random.Generator) -> bytes:
    mode_rgb = bool(rng.integers(0, 2))
    shape = (*_size(rng), 3) if mode_rgb else _size(rng)
    return _pil(rng.integers(0, 256, shape, dtype=np.uint8), "BMP")


def _idx_bytes(rng: np.random.Generator) -> bytes:
    images = rng.integers(0, 256, (int(rng.integers(1, 6)), *_size(rng)), dtype=np.uint8)
    return bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape) + images.tobytes()


def idx_gz(rng: np.random.Generator) -> bytes:
    return gzip.compress(_idx_bytes(rng), compresslevel=6)


def idx_raw(rng: np.random.Generator) -> bytes:
    return _idx_bytes(rng)


def npz(rng: np.random.Generator) -> bytes:
    h, w = _size(rng)
    arrays = {}
    for split in ("train", "val", "test"):
        n = int(rng.integers(1, 5))
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 3, (n, 1))
    buffer = io.BytesIO()
    (np.savez_compressed if rng.integers(0, 2) else np.savez)(buffer, **arrays)
    return buffer.getvalue()


SEEDS: dict[str, Seed] = {
    "png-8bit": Seed(png8, ".png", "image", True),
    "png-16bit": Seed(png16, ".png", "image", True),
    "png-rgb": Seed(png_rgb, ".png", "image", True),
    "jpeg": Seed(jpeg, ".jpg", "image", True),
    "tiff-8bit": Seed(tiff8, ".tif", "image", True),
    "tiff-16bit": Seed(tiff16, ".tif", "image", True),
    "tiff-float32": Seed(tiff_float, ".tif", "image", True),
    "tiff-rgb": Seed(tiff_rgb, ".tif", "image", True),
    "bmp": Seed(bmp, ".bmp", "image", True),
    "idx-gz": Seed(idx_gz, ".gz", "idx"),
    "idx-raw": Seed(idx_raw, "", "idx"),
    "npz": Seed(npz, ".npz", "npz"),
}


# ---- scans (DICOM, NIfTI): the medical readers' own seed files ----------------------------------

HAVE_SCAN_READERS = all(importlib.util.find_spec(m) is not None for m in ("pydicom", "nibabel"))


@functools.cache
def _scan_files() -> dict[str, bytes]:
    """The bytes of `vaelab.data.synthetic_scans.seed_files` (written once into a temporary folder)."""
    from vaelab.data.synthetic_scans import seed_files

    with tempfile.TemporaryDirectory() as folder:
        return {str(path.relative_to(folder)): path.read_bytes() for path in seed_files(folder)}


def _scan(prefix: str) -> Callable[[np.random.Generator], bytes]:
    def make(rng: np.random.Generator) -> bytes:
        names = sorted(name for name in _scan_files() if name.startswith(prefix))
        return _scan_files()[names[int(rng.integers(0, len(names)))]]  # one of the series' files
    return make


if HAVE_SCAN_READERS:
    SEEDS.update({
        "dicom-ct": Seed(_scan("ct/"), ".dcm", "dicom"),  # signed, rescale slope/intercept
        "dicom-mr": Seed(_scan("mr/"), ".dcm", "dicom"),
        "dicom-monochrome1": Seed(_scan("mono1/"), ".dcm", "dicom"),
        "dicom-multiframe": Seed(_scan("multiframe/"), ".dcm", "dicom"),
        "nifti-3d": Seed(_scan("nifti/volume.nii"), ".nii", "nifti"),
        "nifti-4d-gz": Seed(_scan("nifti/series4d.nii.gz"), ".nii.gz", "nifti"),
    })


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _read_image(data: bytes, path: Path, rng: np.random.Generator) -> object:
    from vaelab.data.images import decode_image

    window = (float(rng.uniform(-100, 100)), float(rng.uniform(150, 70000))) if rng.integers(0, 4) == 0 else None
    return decode_image(io.BytesIO(data), int(rng.choice([8, 28])), int(rng.choice([1, 3])), str(path), window)


def _read_idx(data: bytes, path: Path, rng: np.random.Generator) -> object:
    from vaelab.data.idx import read_idx

    return read_idx(_write(path, data))


def _read_npz(data: bytes, path: Path, rng: np.random.Generator) -> object:
    from vaelab.config import DataConfig
    from vaelab.data.npz import load_npz

    return load_npz(DataConfig(dataset="npz", data_path=str(_write(path, data))))


def _read_dicom(data: bytes, path: Path, rng: np.random.Generator) -> object:
    """What `--dataset dicom` does with one file: its header, its frames, the window, the slices."""
    from vaelab.data.dicom import decode_frames, read_header
    from vaelab.data.medical import window_series

    header, _ = read_header(_write(path, data), path.parent)
    if header is None:  # not an image object: skipped and counted, as the loader does
        return None
    frames = decode_frames(header)
    return window_series(lambda: iter(frames), None, 8, 1, False)


def _read_nifti(data: bytes, path: Path, rng: np.random.Generator) -> object:
    """What `--dataset nifti` does with one file: its volumes, the window, the slices."""
    from vaelab.data.medical import window_series
    from vaelab.data.nifti import NiftiUnit

    return window_series(NiftiUnit(_write(path, data), path.name, None).slices, None, 8, 1, False)


# kind -> reader(bytes, a scratch path with the seed's suffix, rng): decodes, or raises DataError.
READERS: dict[str, Callable[[bytes, Path, np.random.Generator], object]] = {
    "image": _read_image,
    "idx": _read_idx,
    "npz": _read_npz,
    "dicom": _read_dicom,
    "nifti": _read_nifti,
}


def damage(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """A seeded truncation or byte flips (mostly in the first 300 bytes, where headers live) of
    `data`; returns the damaged bytes and a description of what was done."""
    if rng.random() < 0.35 and len(data) > 1:
        cut = int(rng.integers(0, len(data)))
        return data[:cut], f"truncated to {cut} of {len(data)} bytes"
    out = bytearray(data)
    flips = []
    for _ in range(int(rng.integers(1, 9))):
        span = min(300, len(out)) if rng.random() < 0.75 else len(out)
        at, value = int(rng.integers(0, span)), int(rng.integers(0, 256))
        out[at] = value
        flips.append(f"{at}={value}")
    if rng.random() < 0.15:  # and cut short as well
        cut = int(rng.integers(len(out) // 2, len(out) + 1))
        return bytes(out[:cut]), f"bytes {', '.join(flips)} set, cut to {cut}"
    return bytes(out), f"bytes {', '.join(flips)} set"
