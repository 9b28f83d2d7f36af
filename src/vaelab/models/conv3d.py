"""3-D convolutional encoder and decoder for volumes (C, D, H, W): `--arch conv3d`.

The 2-D `conv` network's `transposed` layout (models/conv.py), one dimension up: `len(hidden)`
stride-2 3×3×3 convolutions, each halving D, H and W (rounding up: 9 -> 5 -> 3 -> 2), then one
dense layer to the posterior's parameters; the decoder maps z with one dense layer onto the last
feature map and upsamples with stride-2 3×3×3 transposed convolutions whose output_padding (0 or
1 per axis) restores each exact size the encoder saw, so odd sizes come back with no cropping.
The last one maps straight to the likelihood's raw channels. A voxel-space version of the
convolutional VAEs of medical imaging (e.g. MONAI's `VarAutoEncoder` with spatial_dims=3), without
normalisation layers, like the 2-D network. Default channels 16-32-64: at 32³ a forward pass is
about 9 M multiply-adds per volume, which a CPU trains in minutes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vaelab.models.blocks import ACTIVATIONS
from vaelab.models.spec import NetSpec

DEFAULT_HIDDEN = (16, 32, 64)


def volume_sizes(spatial: tuple[int, ...], n_layers: int) -> list[tuple[int, ...]]:
    """Feature-map sizes after each stride-2 conv (kernel 3, padding 1): ceil(s / 2) per axis."""
    sizes = [tuple(int(s) for s in spatial)]
    for _ in range(n_layers):
        sizes.append(tuple((s + 1) // 2 for s in sizes[-1]))
    return sizes


class Conv3dEncoder(nn.Module):
    """x (B, C, D, H, W) [+ one-hot label] -> (B, encoder_out), e.g. [mean | log_var]."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        hidden, act = list(spec.hidden), ACTIVATIONS[spec.activation]
        layers: list[nn.Module] = []
        for c_in, c_out in zip([spec.channels, *hidden[:-1]], hidden):
            layers += [nn.Conv3d(c_in, c_out, 3, stride=2, padding=1), act()]
        self.convs = nn.Sequential(*layers)
        last = volume_sizes(spec.spatial, len(hidden))[-1]
        self.head = nn.Linear(hidden[-1] * math.prod(last) + spec.cond_dim, spec.encoder_out)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = self.convs(x).flatten(1)  # (B, C_last·d·h·w)
        if cond is not None:
            h = torch.cat([h, cond], dim=1)
        return self.head(h)  # (B, encoder_out)


class Conv3dDecoder(nn.Module):
    """z (..., D) [+ one-hot label] -> raw output (..., P·C, D, H, W) at the exact input size."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        hidden, act = list(spec.hidden), ACTIVATIONS[spec.activation]
        sizes = list(reversed(volume_sizes(spec.spatial, len(hidden))))  # from the last feature map up
        channels = list(reversed(hidden))
        self.start_shape = (channels[0], *sizes[0])
        self.dense = nn.Sequential(nn.Linear(spec.latent_dim + spec.cond_dim, channels[0] * math.prod(sizes[0])),
                                   act())
        layers: list[nn.Module] = []
        outs = [*channels[1:], spec.decoder_channels]
        for i, (c_in, c_out) in enumerate(zip(channels, outs)):
            # (s) -> (2s - 1 + p): output_padding p in {0, 1} per axis picks the size the encoder saw.
            padding = tuple(t - 2 * s + 1 for s, t in zip(sizes[i], sizes[i + 1]))
            layers.append(nn.ConvTranspose3d(c_in, c_out, 3, stride=2, padding=1, output_padding=padding))
            if i + 1 < len(channels):
                layers.append(act())
        self.convs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=-1)
        lead = z.shape[:-1]  # (B,) or (K, B)
        h = self.dense(z.reshape(-1, z.shape[-1])).unflatten(-1, self.start_shape)  # (N, C_last, d, h, w)
        out = self.convs(h)  # (N, P·C, D, H, W)
        return out.reshape(*lead, *out.shape[1:])
