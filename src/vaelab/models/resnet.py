"""Residual encoder and decoder (pre-activation ResNet blocks, He et al. 2016) for any image size.

A block is x + conv(act(norm(conv(act(norm(x)))))) with 3×3 convolutions. `hidden` gives the
channels of each stage and `blocks` (`--blocks N`) the blocks per stage:

    encoder: 3×3 conv C -> hidden[0]; stage 0 at full size; each later stage starts with a
             stride-2 3×3 conv (halving H and W, rounding up, as models/conv.py) into its
             channels; then norm + act, a 1×1 conv to BOTTLENECK channels, flatten [+ label],
             one linear layer -> (B, encoder_out)
    decoder: the mirror: z [+ label] -> linear -> (BOTTLENECK, h, w) -> 1×1 conv; the stages
             from the last to the first, each later stage ending in a nearest-neighbour resize
             to the *exact* size the encoder saw and a 3×3 conv, so 28 -> 14 -> 7 -> 4 comes back
             as 4 -> 7 -> 14 -> 28; norm + act + 3×3 conv -> (..., P·C, H, W) raw output.

The latent is dense, a vector of `latent_dim` values, like every other architecture's: the
posterior, the priors, the IWAE bound and every latent tool (traversals, the 2-D map, the
explorer's sliders, attribute edits) work on a (B, D) code, `--latent-dim` means the same for
every `--arch`, and any image size works (a spatial latent would tie D to the last feature map's
h·w). The cost is a linear layer between the last feature map and the code; the 1×1 bottleneck
keeps it small.

Normalisation is GroupNorm (Wu & He 2018), not BatchNorm: an image's output does not depend on
the rest of its batch, so K importance samples of one image, a torchrun shard and a whole batch
give the same numbers, and there are no running statistics to differ between training and
evaluation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vaelab.config import RESNET_BOTTLENECK
from vaelab.models.blocks import ACTIVATIONS
from vaelab.models.conv import spatial_sizes
from vaelab.models.spec import NetSpec

# Convolutions run on channels-last tensors: on a CPU (oneDNN) a 3×3 convolution's backward pass is
# about 10x faster than on the default layout (benchmarks/resnet_speed.py); same numbers either way.
CONV_LAYOUT = torch.channels_last
BOTTLENECK = RESNET_BOTTLENECK  # channels of the last feature map that the linear layer to the code sees
MAX_GROUPS = 8  # GroupNorm groups (fewer when the channel count is not a multiple)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= MAX_GROUPS that divides `channels`."""
    groups = math.gcd(channels, MAX_GROUPS)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """x (N, ch, h, w) -> x + conv(act(norm(conv(act(norm(x)))))), the same shape."""

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        act = ACTIVATIONS[activation]
        self.body = nn.Sequential(
            group_norm(channels), act(), nn.Conv2d(channels, channels, 3, padding=1),
            group_norm(channels), act(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _stage(channels: int, blocks: int, activation: str) -> list[nn.Module]:
    return [ResBlock(channels, activation) for _ in range(blocks)]


class ResNetEncoder(nn.Module):
    """x (B, C, H, W) [+ one-hot label] -> (B, encoder_out), e.g. [mean | log_var]."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        c, h, w = spec.image_shape
        hidden, blocks, act = list(spec.hidden), spec.config.blocks, spec.activation
        layers: list[nn.Module] = [nn.Conv2d(c, hidden[0], 3, padding=1)]
        for i, ch in enumerate(hidden):
            if i > 0:  # halve H and W into this stage's channels
                layers.append(nn.Conv2d(hidden[i - 1], ch, 3, stride=2, padding=1))
            layers += _stage(ch, blocks, act)
        layers += [ACTIVATIONS[act](), nn.Conv2d(hidden[-1], BOTTLENECK, 1)]
        self.convs = nn.Sequential(*layers)
        fh, fw = spatial_sizes(h, w, len(hidden) - 1)[-1]
        self.head = nn.Linear(BOTTLENECK * fh * fw + spec.cond_dim, spec.encoder_out)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = self.convs(x.contiguous(memory_format=CONV_LAYOUT)).flatten(1)  # (B, BOTTLENECK·h·w)
        if cond is not None:
            h = torch.cat([h, cond], dim=1)
        return self.head(h)  # (B, encoder_out)


class ResNetDecoder(nn.Module):
    """z (..., D) [+ one-hot label] -> raw output (..., P·C, H, W) at the exact input size."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        _, h, w = spec.image_shape
        hidden, blocks, act = list(spec.hidden), spec.config.blocks, spec.activation
        sizes = spatial_sizes(h, w, len(hidden) - 1)  # [(H, W), ..., (h_last, w_last)]: stage i at sizes[i]
        self.start_shape = (BOTTLENECK, *sizes[-1])
        self.dense = nn.Linear(spec.latent_dim + spec.cond_dim, BOTTLENECK * sizes[-1][0] * sizes[-1][1])
        layers: list[nn.Module] = [nn.Conv2d(BOTTLENECK, hidden[-1], 1)]
        for i in range(len(hidden) - 1, -1, -1):
            layers += _stage(hidden[i], blocks, act)
            if i > 0:  # back to the previous stage's exact size and channels
                layers += [nn.Upsample(size=sizes[i - 1], mode="nearest"),
                           nn.Conv2d(hidden[i], hidden[i - 1], 3, padding=1)]
        layers += [ACTIVATIONS[act](), nn.Conv2d(hidden[0], spec.decoder_channels, 3, padding=1)]
        self.convs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=-1)
        lead = z.shape[:-1]  # allow (K, B, D) inputs as well as (B, D)
        h = self.dense(z.reshape(-1, z.shape[-1])).unflatten(-1, self.start_shape)  # (N, BOTTLENECK, h, w)
        out = self.convs(h.contiguous(memory_format=CONV_LAYOUT)).contiguous()  # (N, P·C, H, W)
        return out.reshape(*lead, *out.shape[1:])
