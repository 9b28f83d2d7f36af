"""Synthetic degradations: clean images (the targets) -> the inputs of an image-to-image run.

`--degrade noise=0.1,blur=1.5,downsample=2,jpeg=30` turns any dataset into a denoising,
deblurring, super-resolution or JPEG-artefact-removal task. The steps, in order (each left out
when its value is 0, or 1 for downsample):

1. `blur`: a Gaussian blur of σ pixels (separable, kernel radius round(4σ) as scipy's default
   truncate = 4, mirrored borders: scipy.ndimage mode "mirror");
2. `downsample`: resize to round(H / f) × round(W / f) with antialiased bicubic interpolation,
   then back to H × W with bicubic interpolation (the low-resolution image as a super-resolution
   model sees it: at the target's size);
3. `noise`: additive Gaussian noise of std `noise` on [0, 1] pixel values;
4. clipping to [0, 1] (bicubic overshoot and noise leave the range; real images cannot);
5. `jpeg`: 8-bit rounding, JPEG encoding at that quality and decoding (PIL, 4:2:0 chroma for
   colour), image by image on the CPU.

Only step 3 is random. Its noise is drawn from the generator passed in (the training loop's
data generator, checkpointed with the run, so a resumed run draws exactly the noise it would
have drawn), on the CPU (the same numbers on every device), afresh for every batch: an image
seen twice gets two different noisy copies.
"""

from __future__ import annotations

import io
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vaelab.config import DegradeConfig
from vaelab.errors import ConfigError

BLUR_TRUNCATE = 4.0  # kernel radius = round(truncate * sigma), scipy.ndimage's default


def parse_degrade(text: str) -> dict[str, float]:
    """`noise=0.1,blur=1.5,downsample=2,jpeg=30` -> {"noise": 0.1, ...}; one clear error per mistake."""
    known = {"noise": float, "blur": float, "downsample": float, "jpeg": int}
    values: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise ConfigError(f"--degrade takes name=value items out of {', '.join(known)} "
                              f"(e.g. noise=0.1,downsample=2), got '{item}'")
        try:
            values[name] = known[name](value.strip())
        except ValueError:
            kind = "a whole number" if known[name] is int else "a number"
            raise ConfigError(f"--degrade {name} must be {kind}, got '{value.strip()}'") from None
        if not math.isfinite(values[name]):
            raise ConfigError(f"--degrade {name} must be finite, got '{value.strip()}'")
    if not values:
        raise ConfigError("--degrade needs at least one of noise=, blur=, downsample=, jpeg=")
    return values


def gaussian_kernel(sigma: float, truncate: float = BLUR_TRUNCATE) -> torch.Tensor:
    """Normalised 1-D Gaussian weights over offsets -r..r, r = round(truncate·σ) -> (2r + 1,) float64."""
    radius = max(1, int(truncate * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of σ pixels: x (B, C, H, W) -> same shape and dtype.

    Borders are mirrored (the edge pixel is not repeated: scipy.ndimage mode "mirror"). A kernel
    wider than the image is cut to the widest radius the mirroring allows (size - 1), so tiny
    images still blur rather than fail.
    """
    if sigma <= 0:
        return x
    batch, channels, height, width = x.shape
    kernel = gaussian_kernel(sigma).to(device=x.device, dtype=x.dtype)
    flat = x.reshape(batch * channels, 1, height, width)
    for axis, size in ((2, height), (3, width)):
        radius = min((kernel.numel() - 1) // 2, size - 1)
        if radius == 0:
            continue
        k = kernel[(kernel.numel() - 1) // 2 - radius : (kernel.numel() - 1) // 2 + radius + 1]
        k = k / k.sum()
        shape = [1, 1, 1, 1]
        shape[axis] = k.numel()
        pad = (0, 0, radius, radius) if axis == 2 else (radius, radius, 0, 0)  # F.pad: last dim first
        flat = F.conv2d(F.pad(flat, pad, mode="reflect"), k.reshape(shape))
    return flat.reshape(batch, channels, height, width)


def low_resolution_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """The size an image of height × width is downsampled to: round(s / factor), at least 1."""
    return max(1, round(height / factor)), max(1, round(width / factor))


def downsample_upsample(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Antialiased bicubic downsampling by `factor`, then bicubic upsampling back: (B, C, H, W) -> same."""
    if factor <= 1:
        return x
    height, width = x.shape[-2:]
    low = F.interpolate(x, size=low_resolution_size(height, width, factor), mode="bicubic", align_corners=False,
                        antialias=True)
    return bicubic_upsample(low, (height, width))


def bicubic_upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic interpolation (a = -0.75, PyTorch's) of x (B, C, h, w) to `size` (H, W)."""
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False)


def jpeg_round_trip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Each image rounded to 8 bits, JPEG-encoded at `quality` and decoded: x (B, C, H, W) in [0, 1]."""
    images = (x.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    out = np.empty_like(images)
    for i, image in enumerate(images):
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            array = np.asarray(decoded.convert("L" if image.shape[0] == 1 else "RGB"))
        out[i] = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype) / 255.0


class Degradation:
    """The callable a paired split makes its inputs with: `degradation(clean, generator)` -> degraded.

    clean: float (B, C, H, W) in [0, 1]; the result has the same shape, in [0, 1] (see the module
    docstring for the steps). The noise is drawn from `generator` on the CPU.
    """

    def __init__(self, cfg: DegradeConfig) -> None:
        self.cfg = cfg

    @property
    def kinds(self) -> list[str]:
        """The steps this degradation applies, in order (e.g. ['downsample', 'noise'])."""
        c = self.cfg
        steps = (("blur", c.blur > 0), ("downsample", c.downsample > 1), ("noise", c.noise > 0), ("jpeg", c.jpeg > 0))
        return [name for name, on in steps if on]

    def describe(self) -> str:
        """One line, e.g. 'Gaussian noise std 0.1, 2× bicubic downsampling'."""
        c = self.cfg
        words = {"blur": f"Gaussian blur σ {c.blur:g} px", "downsample": f"{c.downsample:g}× downsampling + bicubic "
                 f"upsampling", "noise": f"Gaussian noise std {c.noise:g}", "jpeg": f"JPEG quality {c.jpeg}"}
        return ", ".join(words[k] for k in self.kinds)

    def __call__(self, clean: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        c = self.cfg
        x = gaussian_blur(clean, c.blur)
        x = downsample_upsample(x, c.downsample)
        if c.noise > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32)  # on the CPU: same on every device
            x = x + c.noise * noise.to(device=x.device, dtype=x.dtype)
        x = x.clamp(0.0, 1.0)
        if c.jpeg > 0:
            x = jpeg_round_trip(x, c.jpeg)
        return x

    def __repr__(self) -> str:
        return f"Degradation({self.describe()})"
