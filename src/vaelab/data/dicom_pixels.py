"""DICOM pixels: decoded (with the installed decoders), through the modality transform, per frame.

`decode_frames(header)` reads one file's pixel data with pydicom and returns every frame as a
`medical.Slice`: grey frames in modality units (stored · RescaleSlope + RescaleIntercept, from the
file or from an Enhanced object's shared / per-frame functional groups, or the Modality LUT), with
MONOCHROME1 marked for inversion; colour frames (RGB, YBR, palette colour) as uint8 RGB. A
compressed transfer syntax that no installed decoder reads is one line naming the file and the
package that would decode it. pydicom is silenced while it reads (see `medical.quiet`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from vaelab.data.medical import Slice, quiet, require
from vaelab.errors import DataError

if TYPE_CHECKING:
    from vaelab.data.dicom import Header

# Which package decodes each compressed transfer syntax that pydicom cannot decode on its own.
DECODER_HINTS = {
    "1.2.840.10008.1.2.4.50": "pip install pylibjpeg pylibjpeg-libjpeg",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "pip install pylibjpeg pylibjpeg-libjpeg",  # JPEG extended (12-bit)
    "1.2.840.10008.1.2.4.57": "pip install pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pip install pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "pip install pylibjpeg pylibjpeg-libjpeg",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pip install pylibjpeg pylibjpeg-libjpeg",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pip install pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pip install pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pip install pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.4.202": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pip install pylibjpeg pylibjpeg-rle",  # RLE (pydicom also has its own)
}
DEFAULT_HINT = "pip install python-gdcm"


def first_item(ds: Any, name: str) -> Any:
    """The first item of sequence `name` in `ds`, or None."""
    seq = getattr(ds, name, None) if ds is not None else None
    return seq[0] if seq else None


def _rescale(ds: Any, frames: int, rel: str) -> tuple[np.ndarray, np.ndarray]:
    """RescaleSlope / RescaleIntercept per frame (F,), from the top level or the functional groups."""
    def pair(node: Any) -> Optional[tuple[float, float]]:
        if node is None or "RescaleSlope" not in node and "RescaleIntercept" not in node:
            return None
        return float(node.get("RescaleSlope", 1) or 1), float(node.get("RescaleIntercept", 0) or 0)

    slopes, intercepts = np.ones(frames), np.zeros(frames)
    try:
        top = pair(ds)
        shared = getattr(ds, "SharedFunctionalGroupsSequence", None)
        shared_pair = pair(first_item(shared[0], "PixelValueTransformationSequence")) if shared else None
        per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
        for i in range(frames):
            frame_pair = None
            if per_frame and len(per_frame) == frames:
                frame_pair = pair(first_item(per_frame[i], "PixelValueTransformationSequence"))
            slopes[i], intercepts[i] = frame_pair or shared_pair or top or (1.0, 0.0)
    except (TypeError, ValueError, AttributeError, IndexError):
        raise DataError(f"{rel}: invalid RescaleSlope / RescaleIntercept") from None
    if not (np.isfinite(slopes).all() and np.isfinite(intercepts).all()) or (slopes == 0).any():
        raise DataError(f"{rel}: invalid RescaleSlope / RescaleIntercept")
    return slopes, intercepts


def _pixel_array(ds: Any, h: Header) -> np.ndarray:
    """The decoded pixels, (F, R, C) or (F, R, C, 3); one clear line when no decoder can read them."""
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    compressed = syntax is not None and getattr(syntax, "is_compressed", False)
    if compressed:
        try:
            available = get_decoder(syntax).is_available
        except (NotImplementedError, ValueError):
            available = False
        if not available:
            raise DataError(f"{h.rel}: no installed decoder reads its {syntax.name} pixel data; "
                            f"{DECODER_HINTS.get(str(syntax), DEFAULT_HINT)}")
    try:
        arr = ds.pixel_array
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise many types on bad data; one line each
        if compressed and isinstance(exc, (RuntimeError, NotImplementedError)):
            raise DataError(f"{h.rel}: the installed decoders cannot read its {syntax.name} pixel data; "
                            f"{DECODER_HINTS.get(str(syntax), DEFAULT_HINT)}") from None
        raise DataError(f"{h.rel}: its pixel data is truncated or corrupt ({type(exc).__name__})") from None
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    colour = h.samples == 3 or photometric == "PALETTE COLOR"
    arr = np.asarray(arr)
    if arr.ndim == (3 if colour else 2):
        arr = arr[None]
    expected = (h.frames, h.rows, h.cols) + ((3,) if colour else ())
    if arr.shape != expected:
        raise DataError(f"{h.rel}: decoded pixel data of shape {arr.shape} does not match its header {expected}")
    return arr


def _to_uint8_rgb(arr: np.ndarray) -> np.ndarray:
    """Colour pixels of any integer depth -> uint8 RGB."""
    if arr.dtype == np.uint8:
        return arr
    top = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else float(arr.max() or 1)
    return np.round(np.clip(arr.astype(np.float64) / top, 0, 1) * 255).astype(np.uint8)


def decode_frames(h: Header) -> list[Slice]:
    """Every frame of one file in modality units (grey) or as uint8 RGB, in stored order."""
    pydicom = require("pydicom", "dicom")
    try:
        with quiet("pydicom"):
            ds = pydicom.dcmread(h.path)
            arr = _pixel_array(ds, h)
            photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
            if arr.ndim == 4:  # colour: the window does not apply
                return [Slice(_to_uint8_rgb(frame), False, h.rel) for frame in arr]
            if "ModalityLUTSequence" in ds:
                from pydicom.pixels import apply_modality_lut

                values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
            else:
                slopes, intercepts = _rescale(ds, h.frames, h.rel)
                values = (arr.astype(np.float64) * slopes[:, None, None] + intercepts[:, None, None]).astype(np.float32)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - as in read_header: hostile bytes, one line
        raise DataError(f"{h.rel}: not a readable DICOM file ({type(exc).__name__}; truncated or corrupt)") from None
    invert = photometric == "MONOCHROME1"
    return [Slice(frame, invert, h.rel) for frame in values]
