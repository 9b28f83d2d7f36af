"""Parse the IDX format of MNIST-style files (LeCun et al.), gzip-compressed or raw.

Layout: 2 zero bytes, a type code (0x08 = uint8), the number of dimensions, then one big-endian
uint32 per dimension, then the data. Every malformed file is a `DataError` naming the file.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from vaelab.errors import DataError

_UINT8 = 0x08


def parse_idx(raw: bytes, where: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes (already decompressed) into a uint8 array of the declared shape."""
    if len(raw) < 4:
        raise DataError(f"{where}: too short to be an IDX file ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{where}: wrong magic number (not an IDX file)")
    if raw[2] != _UINT8:
        raise DataError(f"{where}: unsupported IDX element type 0x{raw[2]:02x} (expected 0x08, uint8)")
    ndim = raw[3]
    if not 1 <= ndim <= 4:
        raise DataError(f"{where}: unsupported number of dimensions {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{where}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    body = len(raw) - header
    if body != expected:
        kind = "truncated" if body < expected else "has trailing bytes"
        raise DataError(f"{where}: body {kind} ({body} bytes, header declares {expected})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file from disk; `.gz` files are decompressed first."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc})") from None
    return parse_idx(raw, str(path))


def read_images_and_labels(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a matching (N, H, W) image file and (N,) label file; their counts must agree."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected N×H×W images, got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected N labels, got shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path.name} has {images.shape[0]} images but {labels_path.name} has {labels.shape[0]} labels"
        )
    return images, labels
