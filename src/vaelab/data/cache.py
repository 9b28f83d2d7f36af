"""The decoded-image cache: a dataset decoded once, kept on disk as uint8 arrays, read memory-mapped.

Decoding 50,000 JPEGs (or a few hundred DICOM slices) takes far longer than training's first
step, and the result never changes while the files do not: `load_cached` decodes a dataset once
into `$VAELAB_DATA/decoded/` (or `~/.cache/vaelab/decoded/`) and maps it on every later run.

One file per dataset folder and decoding set-up. Its name comes from the folder, the loader and
every decoding and splitting parameter (image size, channels, intensity window, slice axis, split
seed, ...); its header also records a digest of every file's path relative to the folder, size
and modification time, so changing, adding or removing a file makes it stale (and the next run
replaces it). Layout, little-endian:

    [train images (N, C, H, W) uint8][train labels (N,) int64] [val ...] [test ...]

(volumes, `--dimensions 3`: images (N, C, D, H, W); the header's shape says which.)
    [header JSON][header length uint64][SHA-256 of the header][magic b"VAELABDC"]

The header (written last, then fsync and rename, so no reader ever sees a half-written file)
holds the offsets, the shapes and a CRC-32 of everything before it. A file whose magic, header
digest, size or CRC does not match is damaged: it is decoded again, never trusted. The images
are mapped copy-on-write (`np.memmap(mode="c")`), so a dataset larger than memory still trains:
batches gather rows from the mapping and only the pages they touch are read. Nothing from a
file's contents other than pixels and labels is stored (no paths, no DICOM header values).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vaelab.data.base import Split
from vaelab.errors import DataError

FORMAT = 1  # bump when the layout or the meaning of a cached array changes
MAGIC = b"VAELABDC"
TRAILER = struct.Struct("<Q32s8s")  # header length, SHA-256 of the header, magic
SPLITS = ("train", "val", "test")
CHUNK = 16 * 1024 * 1024  # bytes per read while checking the CRC (file reads, not the mapping)
_warned: set[str] = set()


def cache_root() -> Path:
    """`$VAELAB_DATA/decoded` if set, else `~/.cache/vaelab/decoded`."""
    from vaelab.data.mnist import cache_dir

    return cache_dir("decoded")


def note(message: str, key: Optional[str] = None) -> None:
    """One line on stderr (`vaelab: ...`), at most once per process for a given `key`."""
    if key is not None:
        if key in _warned:
            return
        _warned.add(key)
    print(f"vaelab: {message}", file=sys.stderr, flush=True)


@dataclass
class CacheKey:
    """What decides a cached dataset: the loader, the folder, its files and every parameter."""

    kind: str  # the loader, e.g. "folder", "dicom", "nifti"
    root: Path  # the dataset folder (files are keyed by their path relative to it)
    files: Sequence[Path]  # every file that can change the decoded result
    params: dict[str, Any] = field(default_factory=dict)  # decoding + splitting parameters (JSON-able)

    def slot(self) -> str:
        """The cache file's name: the loader, the folder and the parameters (not the file list)."""
        text = json.dumps([FORMAT, self.kind, str(self.root.resolve()), self.params], sort_keys=True)
        return f"{self.kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}.bin"

    def digest(self) -> str:
        """SHA-256 over the parameters and every file's relative path, size and mtime (ns)."""
        h = hashlib.sha256(json.dumps([FORMAT, self.kind, self.params], sort_keys=True).encode())
        prefix = os.path.join(str(self.root), "")  # "root/": the relative path by slicing, not pathlib
        for path in self.files:
            text = str(path)
            st = os.stat(text)
            rel = (text[len(prefix):].replace(os.sep, "/") if text.startswith(prefix)
                   else path.relative_to(self.root).as_posix())
            h.update(f"{len(rel)}:{rel}:{st.st_size}:{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()


@dataclass
class Cached:
    """A dataset as the cache returns it: mapped (or in-memory) splits and what the build recorded."""

    splits: dict[str, Split]
    class_names: list[str]
    extra: dict[str, Any]
    from_cache: bool  # True when read from an existing cache file (no decoding happened)


class SplitWriter:
    """Collects decoded rows split by split, train first, then val, then test.

    `add` appends (k, C, H, W) uint8 rows to a split; a split, once left, cannot be added to again
    (the file is written front to back). This base class keeps everything in memory (the fallback
    when the cache cannot be written); `_FileWriter` streams the rows to the cache file instead.
    """

    def __init__(self) -> None:
        self.shape: Optional[tuple[int, ...]] = None  # (C, H, W), or (C, D, H, W) for volumes
        self.counts = {s: 0 for s in SPLITS}
        self.labelled: Optional[bool] = None
        self._current: Optional[str] = None
        self._done: set[str] = set()
        self._labels: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        self._images: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}

    def add(self, split: str, images: np.ndarray, labels: Optional[np.ndarray] = None) -> None:
        """Append `images` (k, C, H, W) uint8 and their labels (k,) (or None: unlabelled) to `split`."""
        if split not in SPLITS or split in self._done:
            raise ValueError(f"rows for split {split!r} after that split was finished")
        if images.dtype != np.uint8 or images.ndim not in (4, 5):
            raise ValueError(f"images must be uint8 (k, C, H, W) or volumes (k, C, D, H, W), got {images.dtype} "
                             f"{images.shape}")
        if self.shape is None:
            self.shape = tuple(int(v) for v in images.shape[1:])
        elif tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"images of shape {images.shape[1:]} after {self.shape}")
        if self.labelled is None:
            self.labelled = labels is not None
        elif self.labelled != (labels is not None):
            raise ValueError("labelled and unlabelled rows mixed")
        if self._current != split:
            if self._current is not None:
                self._finish(self._current)
            self._current = split
        if len(images) == 0:
            return
        self.counts[split] += len(images)
        if labels is not None:
            self._labels[split].append(np.asarray(labels, dtype=np.int64).reshape(len(images)))
        self._write_images(split, np.ascontiguousarray(images))

    def _write_images(self, split: str, images: np.ndarray) -> None:
        self._images[split].append(images)

    def _finish(self, split: str) -> None:
        self._done.add(split)

    def close(self) -> None:
        """Finish every split (call once, after the last `add`)."""
        for split in SPLITS:
            if split not in self._done:
                self._finish(split)

    def check(self, what: str) -> None:
        """Every split must have rows: one clear DataError naming the empty one."""
        if self.shape is None:
            raise DataError(f"{what} contains no images")
        empty = [s for s in SPLITS if self.counts[s] == 0]
        if empty:
            raise DataError(f"{what}: the {empty[0]} split has no images (too few series or images to split)")

    def splits(self) -> dict[str, Split]:
        """The collected rows as in-memory splits."""
        import torch

        out = {}
        for s in SPLITS:
            images = torch.from_numpy(np.concatenate(self._images[s]))
            labels = torch.from_numpy(np.concatenate(self._labels[s])) if self.labelled else None
            out[s] = Split(images, labels)
        return out


class _FileWriter(SplitWriter):
    """Streams rows into a temp file in the cache folder; `commit` adds the header and renames it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self.tmp = Path(tmp)
        self.handle = os.fdopen(fd, "wb")
        self.crc = 0
        self.offset = 0
        self.layout: dict[str, dict[str, Optional[int]]] = {}

    def _write(self, payload: bytes | memoryview) -> None:
        self.handle.write(payload)
        self.crc = zlib.crc32(payload, self.crc)
        self.offset += len(payload)

    def _write_images(self, split: str, images: np.ndarray) -> None:
        self.layout.setdefault(split, {"offset": self.offset})
        self._write(memoryview(images).cast("B"))

    def _finish(self, split: str) -> None:
        super()._finish(split)
        entry = self.layout.setdefault(split, {"offset": self.offset})
        entry["count"] = self.counts[split]
        entry["labels_offset"] = None
        if self.labelled:
            entry["labels_offset"] = self.offset
            labels = np.concatenate(self._labels[split]) if self._labels[split] else np.zeros(0, np.int64)
            self._write(labels.astype("<i8").tobytes())
            self._labels[split] = []

    def commit(self, digest: str, class_names: list[str], extra: dict[str, Any]) -> None:
        """Write the header, fsync and rename the file into place."""
        header = json.dumps({
            "format": FORMAT, "key": digest, "shape": list(self.shape or ()), "splits": self.layout,
            "labelled": bool(self.labelled), "class_names": class_names, "extra": extra,
            "payload_bytes": self.offset, "crc32": self.crc,
        }).encode()
        self.handle.write(header + TRAILER.pack(len(header), hashlib.sha256(header).digest(), MAGIC))
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Close and delete the temp file (after a failure)."""
        try:
            self.handle.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def read_header(path: Path) -> Optional[dict[str, Any]]:
    """The header of cache file `path` if its trailer, header digest and size are intact; else None."""
    try:
        size = path.stat().st_size
        if size < TRAILER.size:
            return None
        with open(path, "rb") as f:
            f.seek(size - TRAILER.size)
            length, sha, magic = TRAILER.unpack(f.read(TRAILER.size))
            if magic != MAGIC or length > size - TRAILER.size:
                return None
            f.seek(size - TRAILER.size - length)
            raw = f.read(length)
        if hashlib.sha256(raw).digest() != sha:
            return None
        header = json.loads(raw)
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            return None
        if header["payload_bytes"] + length + TRAILER.size != size:
            return None
        return header
    except (OSError, ValueError, KeyError, TypeError):
        return None


def payload_intact(path: Path, header: dict[str, Any]) -> bool:
    """Whether the CRC-32 of the arrays matches the header (read in chunks: no full copy in memory)."""
    remaining, crc = int(header["payload_bytes"]), 0
    try:
        with open(path, "rb") as f:
            while remaining:
                chunk = f.read(min(CHUNK, remaining))
                if not chunk:
                    return False
                crc = zlib.crc32(chunk, crc)
                remaining -= len(chunk)
    except OSError:
        return False
    return crc == header["crc32"]


def map_splits(path: Path, header: dict[str, Any]) -> dict[str, Split]:
    """The cached splits as tensors over a copy-on-write mapping of `path` (labels read into memory)."""
    import torch

    shape = tuple(int(v) for v in header["shape"])  # (C, H, W) or (C, D, H, W)
    out = {}
    for name in SPLITS:
        entry = header["splits"][name]
        n = int(entry["count"])
        images = np.memmap(path, dtype=np.uint8, mode="c", offset=int(entry["offset"]), shape=(n, *shape))
        labels = None
        if entry["labels_offset"] is not None:
            labels = np.fromfile(path, dtype="<i8", count=n, offset=int(entry["labels_offset"])).astype(np.int64)
        out[name] = Split(torch.from_numpy(images), None if labels is None else torch.from_numpy(labels))
    return out


def _open_writer(path: Path) -> Optional[_FileWriter]:
    """A file writer in the cache folder, or None (after one warning) when it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _FileWriter(path)
    except OSError as exc:
        note(f"warning: cannot write the decoded-image cache in {path.parent} ({exc.strerror or exc}); "
             "decoding without it", key="cache-unwritable")
        return None


Build = Callable[[SplitWriter], tuple[list[str], dict[str, Any]]]


def load_cached(key: CacheKey, build: Build, *, what: str, enabled: bool = True) -> Cached:
    """The dataset described by `key`: mapped from the cache when intact and current, else built.

    `build(writer)` decodes the dataset into `writer` (split by split) and returns
    (class_names, extra), where `extra` is small JSON-able metadata kept with the arrays.
    `what` names the dataset in errors. With `enabled=False` (or an unwritable cache folder)
    the dataset is decoded into memory every time.
    """
    if not enabled:
        return _build_in_memory(build, what)
    path = cache_root() / key.slot()
    digest = key.digest()
    header = read_header(path) if path.exists() else None
    if header is not None and header.get("key") == digest:
        if payload_intact(path, header):
            return Cached(map_splits(path, header), list(header["class_names"]), dict(header["extra"]), True)
        note(f"note: the decoded-image cache {path} is damaged; decoding again")
    elif path.exists() and header is None:
        note(f"note: the decoded-image cache {path} is damaged; decoding again")
    writer = _open_writer(path)
    if writer is None:
        return _build_in_memory(build, what)
    try:
        class_names, extra = build(writer)
        writer.close()
        writer.check(what)
        writer.commit(digest, class_names, extra)
    except OSError as exc:  # e.g. the disk filled up while writing: decode again, in memory
        writer.abort()
        note(f"warning: cannot write the decoded-image cache {path} ({exc.strerror or exc}); decoding without it",
             key="cache-unwritable")
        return _build_in_memory(build, what)
    except BaseException:
        writer.abort()
        raise
    header = read_header(path)
    if header is None:  # replaced meanwhile by something unreadable: use what we just wrote, decoded again
        return _build_in_memory(build, what)
    return Cached(map_splits(path, header), class_names, extra, False)


def _build_in_memory(build: Build, what: str) -> Cached:
    writer = SplitWriter()
    class_names, extra = build(writer)
    writer.close()
    writer.check(what)
    return Cached(writer.splits(), class_names, extra, False)
