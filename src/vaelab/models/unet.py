"""The networks of the Probabilistic U-Net (Kohl et al. 2018), for any image size.

- `UNet`: the U-Net of Ronneberger et al. 2015 on the input image y. `len(hidden)` levels; level i
  has `hidden[i]` channels and two 3×3 convolutions; 2×2 average pooling between levels (rounding
  odd sizes up), bilinear upsampling to the exact size of the skip connection on the way back, so
  28 -> 14 -> 7 -> 4 comes back as 4 -> 7 -> 14 -> 28. The latent code z (D,) is broadcast over
  the image and concatenated to the features where it is injected: at the final 1×1 convolutions
  (the "f_comb" of Kohl et al.: three 1×1 convolutions, the last one to the likelihood's raw
  channels) and, with `inject_stages` n > 1, at the input of the last n - 1 up-sampling stages.
  Everything before the first injection runs once per image however many z are decoded. The last
  1×1 convolution also sees the input image as logits (`start_from_input`: an untrained model
  predicts its input, and training learns the correction).
- `GaussianEncoder`: the prior net p(z | y) and the posterior net q(z | y, x): the U-Net's
  contracting path (its own weights), global average pooling and a 1×1 convolution (a linear
  layer) to the 2·D statistics [mean | log-variance] of a diagonal Gaussian.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.models.blocks import ACTIVATIONS

DEFAULT_HIDDEN = (32, 64, 128)
HEAD_LAYERS = 3  # 1×1 convolutions after z is injected (Kohl et al. 2018)


class ConvBlock(nn.Module):
    """Two 3×3 convolutions, each followed by the activation: (B, c_in, H, W) -> (B, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, activation: str) -> None:
        super().__init__()
        act = ACTIVATIONS[activation]
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), act(),
                                  nn.Conv2d(c_out, c_out, 3, padding=1), act())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def downsample(x: torch.Tensor) -> torch.Tensor:
    """2×2 average pooling; odd sizes round up (the last row/column is averaged on its own)."""
    return F.avg_pool2d(x, 2, ceil_mode=True)


class Contracting(nn.Module):
    """The contracting path: image (B, c, H, W) -> the feature maps of every level, finest first."""

    def __init__(self, channels: int, hidden: tuple[int, ...], activation: str) -> None:
        super().__init__()
        widths = [channels, *hidden]
        self.levels = nn.ModuleList(ConvBlock(a, b, activation) for a, b in zip(widths, widths[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else downsample(x))
            features.append(x)  # (B, hidden[i], H_i, W_i)
        return features


class GaussianEncoder(nn.Module):
    """Image(s) (B, c, H, W) -> (B, 2·D) statistics [mean | log_var] of a diagonal Gaussian over z."""

    def __init__(self, channels: int, hidden: tuple[int, ...], activation: str, stats_dim: int) -> None:
        super().__init__()
        self.path = Contracting(channels, hidden, activation)
        self.head = nn.Linear(hidden[-1], stats_dim)  # the 1×1 convolution after global average pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.path(x)[-1].mean(dim=(-2, -1))  # (B, hidden[-1])
        return self.head(pooled)


def broadcast_code(z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """z (N, D) -> (N, D, H, W), the same code at every pixel."""
    return z[:, :, None, None].expand(*z.shape, *size)


class Trunk(NamedTuple):
    """The U-Net's work that does not depend on z: the skips and the features before the first injection."""

    skips: list[torch.Tensor]  # contracting features, finest first
    features: torch.Tensor  # (B, c, h, w): the input of the first stage that sees z
    next_stage: int  # index into `UNet.up` of that stage (len(up) = only the head is left)
    input_logits: torch.Tensor  # (B, c_in, H, W): logit of the input image, the last layer's shortcut


def image_logits(y: torch.Tensor) -> torch.Tensor:
    """logit(y) of an image in [0, 1], clamped to [1/255, 254/255] first (|logit| <= 5.5)."""
    p = y.clamp(1 / 255, 254 / 255)
    return torch.log(p) - torch.log1p(-p)


class UNet(nn.Module):
    """Input image y (B, c_in, H, W) and codes z -> raw output (..., out_channels, H, W)."""

    def __init__(self, in_channels: int, hidden: tuple[int, ...], activation: str, latent_dim: int,
                 out_channels: int, inject_stages: int = 1) -> None:
        super().__init__()
        if not 1 <= inject_stages <= len(hidden):
            raise ValueError(f"inject_stages must be in 1..{len(hidden)}, got {inject_stages}")
        self.latent_dim = latent_dim
        self.down = Contracting(in_channels, hidden, activation)
        # up[j] restores level L-2-j from level L-1-j; the last `inject_stages - 1` of them see z too.
        levels = len(hidden)
        self.first_injected = levels - 1 - (inject_stages - 1)
        self.up = nn.ModuleList()
        for j, level in enumerate(range(levels - 2, -1, -1)):
            extra = latent_dim if j >= self.first_injected else 0
            self.up.append(ConvBlock(hidden[level + 1] + hidden[level] + extra, hidden[level], activation))
        act = ACTIVATIONS[activation]
        width = hidden[0]
        layers: list[nn.Module] = [nn.Conv2d(width + latent_dim, width, 1), act()]
        for _ in range(HEAD_LAYERS - 2):
            layers += [nn.Conv2d(width, width, 1), act()]
        self.head = nn.Sequential(*layers)
        # The last 1×1 convolution: raw likelihood parameters (no activation) from the head's features
        # and the input image's logits, a shortcut that lets the network start from its input and
        # learn the correction (residual learning, as image-restoration networks do: Zhang et al. 2017).
        self.out = nn.Conv2d(width + in_channels, out_channels, 1)

    def start_from_input(self, channels: int) -> None:
        """Initialise the last layer to pass logit(input) through to the first `channels` outputs
        (those whose sigmoid is the predicted image), with the features' weights scaled down: an
        untrained model then predicts its input, the classical baselines' starting point."""
        width = self.out.in_channels - self.down.levels[0].body[0].in_channels
        with torch.no_grad():
            self.out.weight[:, :width].mul_(0.1)
            self.out.weight[:, width:].zero_()
            self.out.bias.zero_()
            for c in range(min(channels, self.out.in_channels - width, self.out.out_channels)):
                self.out.weight[c, width + c] = 1.0

    def _stage(self, j: int, x: torch.Tensor, skip: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        parts = [x, skip] if z is None else [x, skip, broadcast_code(z, skip.shape[-2:])]
        return self.up[j](torch.cat(parts, dim=1))

    def trunk(self, y: torch.Tensor) -> Trunk:
        """The part of the forward pass before z enters: once per input image."""
        skips = self.down(y)
        x = skips[-1]
        for j in range(self.first_injected):
            x = self._stage(j, x, skips[-2 - j], None)
        return Trunk(skips, x, self.first_injected, image_logits(y))

    def finish(self, trunk: Trunk, z: torch.Tensor) -> torch.Tensor:
        """The rest of the pass for codes z (B, D) or (K, B, D) -> (B | K, B, out_channels, H, W)."""
        lead = z.shape[:-1]
        k = z.shape[0] if z.dim() == 3 else 1
        flat_z = z.reshape(-1, z.shape[-1])  # (K·B, D), k-major: row k·B + b is sample k of image b

        def repeat(t: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (K·B, ...), matching flat_z's rows
            return t if k == 1 else t.unsqueeze(0).expand(k, *t.shape).reshape(-1, *t.shape[1:])

        x = repeat(trunk.features)
        for j in range(trunk.next_stage, len(self.up)):
            x = self._stage(j, x, repeat(trunk.skips[-2 - j]), flat_z)
        features = self.head(torch.cat([x, broadcast_code(flat_z, x.shape[-2:])], dim=1))  # (K·B, width, H, W)
        out = self.out(torch.cat([features, repeat(trunk.input_logits)], dim=1))  # (K·B, P·C, H, W)
        return out.reshape(*lead, *out.shape[1:])

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.finish(self.trunk(y), z)
