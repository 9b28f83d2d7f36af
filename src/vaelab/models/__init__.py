"""Architectures and the VAE that combines an encoder, a decoder and a likelihood.

`ARCHITECTURES` maps `--arch` to an (encoder class, decoder class, default hidden sizes) entry;
adding an architecture is adding one entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vaelab.models.conv import ConvDecoder, ConvEncoder
from vaelab.models.mlp import MLPDecoder, MLPEncoder
from vaelab.models.posterior import DiagonalGaussian


@dataclass(frozen=True)
class Architecture:
    """One `--arch` entry: its encoder and decoder classes and default hidden sizes."""

    encoder: type[nn.Module]
    decoder: type[nn.Module]
    default_hidden: tuple[int, ...]


ARCHITECTURES: dict[str, Architecture] = {
    "mlp": Architecture(MLPEncoder, MLPDecoder, (512, 256)),
    "conv": Architecture(ConvEncoder, ConvDecoder, (32, 64, 128)),
}

from vaelab.models.vae import VAE  # noqa: E402  (needs ARCHITECTURES)

__all__ = ["ARCHITECTURES", "Architecture", "DiagonalGaussian", "VAE"]
