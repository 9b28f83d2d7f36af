"""The paper's fully connected encoder and decoder.

Encoder: flatten (B, C, *S) -> (B, C·∏S) [+ one-hot label] -> hidden layers -> (B, encoder_out).
Decoder: (B, D) [+ one-hot label] -> hidden layers reversed -> (B, P·C·∏S) -> (B, P·C, *S),
with P·C = `spec.decoder_channels`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vaelab.models.blocks import ACTIVATIONS
from vaelab.models.spec import NetSpec


def _stack(sizes: list[int], activation: str) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
    return layers


class MLPEncoder(nn.Module):
    """x (B, C, *S) [+ one-hot label] -> (B, encoder_out), e.g. [mean | log_var]."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        n_pixels = math.prod(spec.image_shape)
        self.body = nn.Sequential(*_stack([n_pixels + spec.cond_dim, *spec.hidden], spec.activation))
        self.head = nn.Linear(spec.hidden[-1], spec.encoder_out)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = x.flatten(1)  # (B, C·H·W)
        if cond is not None:
            h = torch.cat([h, cond], dim=1)
        return self.head(self.body(h))  # (B, encoder_out)


class MLPDecoder(nn.Module):
    """z (..., D) [+ one-hot label] -> raw output (..., P·C, *S)."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.out_shape = (spec.decoder_channels, *spec.spatial)
        sizes = [spec.latent_dim + spec.cond_dim, *reversed(spec.hidden)]
        self.body = nn.Sequential(*_stack(sizes, spec.activation))
        self.head = nn.Linear(sizes[-1], math.prod(self.out_shape))

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=-1)
        out = self.head(self.body(z))  # (..., P·C·H·W)
        return out.unflatten(-1, self.out_shape)  # (..., P·C, H, W)
