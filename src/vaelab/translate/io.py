"""Image files in and out of an image-to-image run: `vaelab translate` and `vaelab eval --targets`.

Inputs are read by the function that reads every vaelab image (`vaelab.data.pairs.READERS`, by
file extension), converted to the run's channels and resized to its training size. Results are
written per input by `WRITERS`, keyed by the input's extension, PNG for everything else
(`write_png`): the medical formats plug in here (a NIfTI writer that puts the mean, the samples
and the std map into the input's geometry registers `WRITERS[".nii.gz"]` and `[".nii"]`).

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

from vaelab.data.pairs import READERS, reader_extension, scan_images
from vaelab.errors import DataError
from vaelab.translate.figures import as_uint8, std_map

STD_PNG_FULL_SCALE = 0.25  # std.png: 255 means a std of 0.25 (a quarter of the pixel range) or more


def read_images(paths: Sequence[str | Path], shape: tuple[int, int, int], window=None) -> list[torch.Tensor]:
    """Each file as float (n, C, H, W) in [0, 1] at `shape` (C, H, W) (n > 1 for multi-slice files)."""
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
        pixels = READERS[ext].read(path, height, channels, window)  # uint8 (n, C, S, S)
        out.append(torch.tensor(np.asarray(pixels), dtype=torch.float32) / 255.0)  # a copy: arrays may be read-only
    return out


def folder_inputs(folder: str | Path, shape: tuple[int, int, int], window=None) -> tuple[list[str], torch.Tensor]:
    """Every image under `folder` (as `--dataset pairs` finds them) -> (pair keys, float (N, C_in, H, W))."""
    found = scan_images(Path(folder), "--inputs")
    keys = sorted(found)
    return keys, torch.cat(read_images([found[k] for k in keys], shape, window))


def folder_targets(keys: Sequence[str], target_dirs: Sequence[str | Path], shape: tuple[int, int, int],
                   window=None) -> torch.Tensor:
    """The target of each pair key in each folder of `target_dirs` (matched by relative path, the
    extension aside) -> float (R, N, C, H, W), R = len(target_dirs)."""
    stacks = []
    for folder in target_dirs:
        found = scan_images(Path(folder), "--targets folder")
        missing = [k for k in keys if k not in found]
        if missing:
            raise DataError(f"{folder} has no target for {missing[0]} ({len(missing)} of {len(keys)} inputs "
                            f"unmatched); targets are matched by relative path, the extension aside")
        stacks.append(torch.cat(read_images([found[k] for k in keys], shape, window)))
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


# Input extension -> writer(out path without extension, float images (n, C, H, W)); default write_png.
Writer = Callable[[Path, torch.Tensor], list[Path]]
WRITERS: dict[str, Writer] = {}
STD_WRITERS: dict[str, Writer] = {}


def writers_for(source: Path) -> tuple[Writer, Writer]:
    """(image writer, std-map writer) for results of the input file `source`."""
    ext = reader_extension(source) or ""
    return WRITERS.get(ext, write_png), STD_WRITERS.get(ext, write_std)


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
