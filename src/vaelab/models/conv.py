"""Convolutional encoder and decoder for any image size and channel count.

Encoder: `len(hidden)` stride-2 3×3 convolutions (each halves H and W, rounding up), flatten,
[+ one-hot label], a dense layer, then (B, encoder_out). The decoder mirrors it, upsampling to the
*exact* sizes the encoder saw (nearest-neighbour resize + 3×3 conv), so odd sizes such as
28 -> 14 -> 7 -> 4 come back as 4 -> 7 -> 14 -> 28 with no cropping.
"""

from __future__ import annotations

import torch
from torch import nn

from vaelab.models.blocks import ACTIVATIONS
from vaelab.models.spec import NetSpec

DENSE = 256  # width of the dense layer between the conv stack and the latent


def spatial_sizes(height: int, width: int, n_layers: int) -> list[tuple[int, int]]:
    """Feature-map sizes after each stride-2 conv (padding 1): ceil(s / 2) per layer."""
    sizes = [(height, width)]
    for _ in range(n_layers):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class ConvEncoder(nn.Module):
    """x (B, C, H, W) [+ one-hot label] -> (B, encoder_out), e.g. [mean | log_var]."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        c, h, w = spec.image_shape
        hidden, cond_dim = list(spec.hidden), spec.cond_dim
        act = ACTIVATIONS[spec.activation]
        layers: list[nn.Module] = []
        for c_in, c_out in zip([c, *hidden[:-1]], hidden):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), act()]
        self.convs = nn.Sequential(*layers)
        fh, fw = spatial_sizes(h, w, len(hidden))[-1]
        self.dense = nn.Sequential(nn.Linear(hidden[-1] * fh * fw + cond_dim, DENSE), act())
        self.head = nn.Linear(DENSE, spec.encoder_out)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = self.convs(x).flatten(1)  # (B, C_last*h*w)
        if cond is not None:
            h = torch.cat([h, cond], dim=1)
        return self.head(self.dense(h))  # (B, encoder_out)


class ConvDecoder(nn.Module):
    """z (..., D) [+ one-hot label] -> raw output (..., P·C, H, W) at the exact input size."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        _, h, w = spec.image_shape
        hidden, cond_dim, latent_dim = list(spec.hidden), spec.cond_dim, spec.latent_dim
        act = ACTIVATIONS[spec.activation]
        sizes = spatial_sizes(h, w, len(hidden))  # [(H, W), ..., (h_last, w_last)]
        self.start_shape = (hidden[-1], *sizes[-1])
        self.dense = nn.Sequential(
            nn.Linear(latent_dim + cond_dim, DENSE), act(),
            nn.Linear(DENSE, hidden[-1] * sizes[-1][0] * sizes[-1][1]), act(),
        )
        layers: list[nn.Module] = []
        channels = list(reversed(hidden))  # e.g. [128, 64, 32]
        for i, c_in in enumerate(channels):
            c_out = channels[i + 1] if i + 1 < len(channels) else channels[-1]
            target = sizes[len(hidden) - 1 - i]  # the size this stage restores
            layers += [nn.Upsample(size=target, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1), act()]
        layers.append(nn.Conv2d(channels[-1], spec.decoder_channels, 3, padding=1))  # raw output, no activation
        self.convs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=-1)
        lead = z.shape[:-1]  # allow (K, B, D) inputs as well as (B, D)
        h = self.dense(z.reshape(-1, z.shape[-1])).unflatten(-1, self.start_shape)  # (N, C_last, h, w)
        out = self.convs(h)  # (N, P·C, H, W)
        return out.reshape(*lead, *out.shape[1:])
