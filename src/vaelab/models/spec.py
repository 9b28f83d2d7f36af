"""What every architecture is built from: one `NetSpec`, computed by the VAE from its config.

An encoder maps x (B, C, *S) [+ a one-hot label] to (B, encoder_out): the parameters of the
posterior (2·D for a diagonal Gaussian: mean and log-variance; more for a flow's context). A
decoder maps z (..., D) [+ label] to the likelihood's raw output (..., decoder_channels, *S),
where decoder_channels = C × the likelihood's parameters per channel (1 for Bernoulli logits or a
Gaussian mean, 2 for a discretized logistic's mean and log-scale, ...). S is (H, W) for images
and (D, H, W) for volumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vaelab.config import ModelConfig


@dataclass(frozen=True)
class NetSpec:
    """Sizes an encoder/decoder pair is built for (see the module docstring)."""

    image_shape: tuple[int, ...]  # (C, H, W) or (C, D, H, W)
    hidden: tuple[int, ...]  # widths (mlp) or channels per stage (conv, resnet, ...)
    latent_dim: int
    cond_dim: int  # one-hot label width for a conditional model, else 0
    activation: str
    encoder_out: int  # encoder output width: the posterior's parameters
    decoder_channels: int  # decoder output channels: the likelihood's raw parameters
    config: ModelConfig  # the whole model config, for architecture-specific options

    @property
    def channels(self) -> int:
        """Image channels C."""
        return self.image_shape[0]

    @property
    def spatial(self) -> tuple[int, ...]:
        """(H, W) or (D, H, W)."""
        return tuple(self.image_shape[1:])
