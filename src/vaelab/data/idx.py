"""Parse the IDX format of MNIST-style files (LeCun et al.), gzip-compressed or raw.

Layout: 2 zero bytes, a type code (0x08 = uint8), the number of dimensions, then one big-endian
uint32 per dimension, then the data. Every malformed file is a `DataError` naming the file.
Decompression stops at what the header declares (at most `MAX_IDX_BYTES`), so a gzip bomb fails
fast instead of filling memory.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np

from vaelab.errors import DataError

_UINT8 = 0x08
MAX_IDX_BYTES = 2 * 1024**3  # 2 GiB: ~40x MNIST's training images, far above any IDX set vaelab targets


def _parse_header(raw: bytes, where: str, max_bytes: int) -> tuple[tuple[int, ...], int]:
    """The shape an IDX header declares and the header's length; DataError if it is malformed."""
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
    expected = math.prod(shape)  # exact Python int: four 2**32-1 dims must not wrap around
    if expected > max_bytes:
        raise DataError(f"{where}: header declares {expected} bytes of data, more than the {max_bytes} allowed")
    return shape, header


def parse_idx(raw: bytes, where: str = "IDX data", max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Decode IDX bytes (already decompressed) into a uint8 array of the declared shape."""
    shape, header = _parse_header(raw, where, max_bytes)
    expected = math.prod(shape)
    body = len(raw) - header
    if body != expected:
        kind = "truncated" if body < expected else "has trailing bytes"
        raise DataError(f"{where}: body {kind} ({body} bytes, header declares {expected})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable


def gunzip_bounded(raw: bytes, where: str, max_bytes: int = MAX_IDX_BYTES, *, prefix: bool = False,
                   limit_name: str = "") -> bytes:
    """Decompress (possibly multi-member) gzip `raw`, refusing output beyond `max_bytes`.

    With `prefix=True`, return just the first `max_bytes` bytes of the output (no error for more).
    `limit_name` says in the error where the limit comes from.
    """
    out = bytearray()
    while raw:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # 16+: expect a gzip header
        try:
            out += inflater.decompress(raw, max_bytes + 1 - len(out))
        except zlib.error as exc:
            raise DataError(f"{where}: corrupt gzip data ({exc})") from None
        if len(out) > max_bytes:
            if prefix:
                return bytes(out[:max_bytes])
            raise DataError(f"{where}: decompresses to more than {max_bytes} bytes{limit_name}; refusing it")
        if not inflater.eof:
            raise DataError(f"{where}: corrupt gzip data (the compressed stream is truncated)")
        raw = inflater.unused_data.lstrip(b"\x00")  # next member, if any (zero padding is allowed)
    return bytes(out)


def read_idx(path: Path, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file from disk; gzip-compressed files are decompressed first.

    The header is decompressed and checked first, and then no more than it declares: a gzip bomb
    costs what its header claims (at most `max_bytes`), never the size it would inflate to.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        shape, header = _parse_header(gunzip_bounded(raw, str(path), 4 + 4 * 4, prefix=True), str(path), max_bytes)
        raw = gunzip_bounded(raw, str(path), header + math.prod(shape), limit_name=" (what its header declares)")
    return parse_idx(raw, str(path), max_bytes)


def read_images_and_labels(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a matching (N, H, W) image file and (N,) label file; their counts must agree."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or min(images.shape[1:]) < 1:
        raise DataError(f"{images_path}: expected N×H×W images, got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected N labels, got shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path.name} has {images.shape[0]} images but {labels_path.name} has {labels.shape[0]} labels"
        )
    return images, labels
