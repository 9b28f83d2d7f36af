"""Architectures, priors, posteriors and the VAE that combines them with a likelihood.

`ARCHITECTURES` maps `--arch` to an (encoder class, decoder class, default hidden sizes) entry;
`PRIORS` (models/priors.py) maps `--prior`, `POSTERIORS` (models/posterior.py) `--posterior`.
Adding one is adding one entry. Encoders and decoders are built from one `NetSpec`
(models/spec.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vaelab.models.conv import ConvDecoder, ConvEncoder
from vaelab.models.mlp import MLPDecoder, MLPEncoder
from vaelab.models.posterior import POSTERIORS, DiagonalGaussian
from vaelab.models.priors import PRIORS
from vaelab.models.spec import NetSpec


@dataclass(frozen=True)
class Architecture:
    """One `--arch` entry: its encoder and decoder classes (each built from a `NetSpec`), default
    hidden sizes, and the numbers of spatial dims it handles (2: images (C, H, W), 3: volumes)."""

    encoder: type[nn.Module]
    decoder: type[nn.Module]
    default_hidden: tuple[int, ...]
    spatial_dims: tuple[int, ...] = (2,)


ARCHITECTURES: dict[str, Architecture] = {
    "mlp": Architecture(MLPEncoder, MLPDecoder, (512, 256), spatial_dims=(2, 3)),
    "conv": Architecture(ConvEncoder, ConvDecoder, (32, 64, 128)),
}

from vaelab.models.vae import VAE  # noqa: E402  (needs ARCHITECTURES)

__all__ = ["ARCHITECTURES", "Architecture", "DiagonalGaussian", "NetSpec", "POSTERIORS", "PRIORS", "VAE"]
