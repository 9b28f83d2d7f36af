"""The paper's fully connected encoder and decoder.

Encoder: flatten (B, C, H, W) -> (B, C*H*W) [+ one-hot label] -> hidden layers -> (B, 2*D).
Decoder: (B, D) [+ one-hot label] -> hidden layers reversed -> (B, C*H*W) -> (B, C, H, W).
"""

from __future__ import annotations

import torch
from torch import nn

from vaelab.models.blocks import ACTIVATIONS


def _stack(sizes: list[int], activation: str) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
    return layers


class MLPEncoder(nn.Module):
    """x (B, C, H, W) [+ one-hot label] -> (B, 2*D) = [mean | log_var]."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: list[int], latent_dim: int, cond_dim: int,
                 activation: str) -> None:
        super().__init__()
        n_pixels = image_shape[0] * image_shape[1] * image_shape[2]
        self.body = nn.Sequential(*_stack([n_pixels + cond_dim, *hidden], activation))
        self.head = nn.Linear(hidden[-1], 2 * latent_dim)  # -> [mean | log_var]

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = x.flatten(1)  # (B, C*H*W)
        if cond is not None:
            h = torch.cat([h, cond], dim=1)
        return self.head(self.body(h))  # (B, 2*D)


class MLPDecoder(nn.Module):
    """z (..., D) [+ one-hot label] -> raw output (..., C, H, W)."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: list[int], latent_dim: int, cond_dim: int,
                 activation: str) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        n_pixels = image_shape[0] * image_shape[1] * image_shape[2]
        sizes = [latent_dim + cond_dim, *reversed(hidden)]
        self.body = nn.Sequential(*_stack(sizes, activation))
        self.head = nn.Linear(sizes[-1], n_pixels)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=-1)
        out = self.head(self.body(z))  # (B, C*H*W)
        return out.unflatten(-1, self.image_shape)  # (B, C, H, W)
