"""Image files in and out of an image-to-image run: `vaelab translate` and `vaelab eval --targets`.

Inputs are read by the function that reads every vaelab image (`vaelab.data.pairs.READERS`, by
file extension), converted to the run's channels and resized to its training size. Results are
written per input by `WRITERS`, keyed by the input's extension: a scan (NIfTI, DICOM) gets NIfTI
volumes in its own geometry (translate/scans.py: mean.nii.gz, sample-01.nii.gz, ..., std.nii.gz,
in modality units); every other input gets the files below.

Written per input into OUT/<name>/ (files in [0, 1] pixel units, 8-bit unless said otherwise):
input.png, mean.png, sample-01.png ... sample-K.png, std.png (the RMS over channels of the
per-pixel std on a fixed scale, 255 = STD_PNG_FULL_SCALE, larger values saturate, so maps of
different images compare), std.tiff (the same map, exact float32 values), target.png with
--targets, and figure.png (input | mean | samples | std map | target).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vaelab.config import DataConfig
from vaelab.data.pairs import READERS, reader_extension, scan_images
from vaelab.errors import DataError
from vaelab.translate.figures import as_uint8, std_map
from vaelab.translate.scans import SCAN_EXTENSIONS

STD_PNG_FULL_SCALE = 0.25  # std.png: 255 means a std of 0.25 (a quarter of the pixel range) or more


def read_images(paths: Sequence[str | Path], shape: tuple[int, int, int], data_cfg: DataConfig) -> list[torch.Tensor]:
    """Each file as float (n, C, H, W) in [0, 1] at `shape` (C, H, W) (n > 1 for multi-slice files),
    read as the run reads its images (`data_cfg`: intensity window, slice axis)."""
    channels, height, width = shape
    if height != width:
        raise DataError(f"this run's images are {height}×{width}; image files are read square, resized to S×S")
    out = []
    for path in (Path(p) for p in paths):
        if not path.is_file():
            raise DataError(f"image file not found: {path}")
        ext = reader_extension(path)
        if ext is None:
            raise DataError(f"{path} is not an image file vaelab reads ({', '.join(sorted(READERS))})")
        pixels = READERS[ext].read(path, height, channels, data_cfg)  # uint8 (n, C, S, S)
        out.append(torch.tensor(np.asarray(pixels), dtype=torch.float32) / 255.0)  # a copy: arrays may be read-only
    return out


def folder_inputs(folder: str | Path, shape: tuple[int, int, int], data_cfg: DataConfig) -> tuple[list[str],
                                                                                                torch.Tensor]:
    """Every image under `folder` (as `--dataset pairs` finds them) -> (pair keys, float (N, C_in, H, W))."""
    found = scan_images(Path(folder), "--inputs")
    keys = sorted(found)
    return keys, torch.cat(read_images([found[k] for k in keys], shape, data_cfg))


def folder_targets(keys: Sequence[str], target_dirs: Sequence[str | Path], shape: tuple[int, int, int],
                   data_cfg: DataConfig) -> torch.Tensor:
    """The target of each pair key in each folder of `target_dirs` (matched by relative path, the
    extension aside) -> float (R, N, C, H, W), R = len(target_dirs)."""
    stacks = []
    for folder in target_dirs:
        found = scan_images(Path(folder), "--targets folder")
        missing = [k for k in keys if k not in found]
        if missing:
            raise DataError(f"{folder} has no target for {missing[0]} ({len(missing)} of {len(keys)} inputs "
                            f"unmatched); targets are matched by relative path, the extension aside")
        stacks.append(torch.cat(read_images([found[k] for k in keys], shape, data_cfg)))
    return torch.stack(stacks)


def write_png(path: Path, images: torch.Tensor) -> list[Path]:
    """Float images (n, C, H, W) in [0, 1] -> path.png (n = 1) or path-slice001.png, ... (one per slice)."""
    written = []
    for i, image in enumerate(as_uint8(images)):
        target = path.with_suffix(".png") if len(images) == 1 else path.with_name(f"{path.name}-slice{i + 1:03d}.png")
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        _save(Image.fromarray(np.ascontiguousarray(pixels)), target)
        written.append(target)
    return written


def write_std(path: Path, std: torch.Tensor) -> list[Path]:
    """The std map (n, C, H, W) -> path.png (fixed scale, see the module docstring) and path.tiff (float32)."""
    maps = std_map(std)  # (n, H, W)
    written = write_png(path, (maps / STD_PNG_FULL_SCALE).clamp(0, 1)[:, None])
    for i, single in enumerate(maps.numpy().astype(np.float32)):
        target = path.with_suffix(".tiff") if len(maps) == 1 else path.with_name(f"{path.name}-slice{i + 1:03d}.tiff")
        _save(Image.fromarray(single, mode="F"), target)
        written.append(target)
    return written


def _save(image: Image.Image, target: Path) -> None:
    """Encode in memory, then one atomic write (a reader never sees half a file; a failure is one RunError)."""
    from vaelab.checkpoint import atomic_write_bytes

    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if target.suffix == ".tiff" else "PNG")
    atomic_write_bytes(target, buffer.getvalue())


# Input extension -> factory(source, data_cfg) -> an object with write(stem, images) and
# write_std(stem, std) (each -> the paths written): scans get NIfTI volumes in their own geometry;
# every other input gets PNGs (write_png, write_std).
Writer = Callable[[Path, torch.Tensor], list[Path]]


class PngWriter:
    """Results of an ordinary image (or of each slice): PNG, and the std also as float TIFF."""

    def __init__(self, source: Path, data_cfg: DataConfig) -> None:
        self.write: Writer = write_png
        self.write_std: Writer = write_std


def _scan_writer(source: Path, data_cfg: DataConfig):
    from vaelab.translate.scans import ScanWriter

    return ScanWriter(source, data_cfg)


WRITERS: dict[str, Callable[[Path, DataConfig], object]] = {ext: _scan_writer for ext in SCAN_EXTENSIONS}


def writers_for(source: Path, data_cfg: DataConfig) -> tuple[Writer, Writer]:
    """(image writer, std-map writer) for results of the input file `source`."""
    ext = reader_extension(source) or ""
    writer = WRITERS.get(ext, PngWriter)(source, data_cfg)
    return writer.write, writer.write_std


def output_folders(sources: Sequence[Path], out: Path) -> list[Path]:
    """OUT/<file name without extension> per input, made unique (name-2, ...) when names repeat."""
    folders, seen = [], set()
    for source in sources:
        ext = reader_extension(source) or source.suffix
        stem = source.name[: len(source.name) - len(ext)] if ext else source.stem
        name, i = stem or "image", 2
        while name in seen:
            name, i = f"{stem}-{i}", i + 1
        seen.add(name)
        folders.append(out / name)
    return folders
