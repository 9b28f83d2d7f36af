"""Convolutional encoder and decoder for any image size and channel count, in two layouts.

Both layouts encode with `len(hidden)` stride-2 3×3 convolutions (each halves H and W, rounding
up: 28 -> 14 -> 7 -> 4) and decode back to the *exact* sizes the encoder saw, so odd sizes come
back as 4 -> 7 -> 14 -> 28 with no cropping. `ModelConfig.conv_layout` picks the rest:

- `transposed` (the default): flatten [+ one-hot label] -> one dense layer -> (B, encoder_out);
  the decoder maps z with one dense layer onto the last feature map and upsamples with stride-2
  3×3 transposed convolutions (output_padding 0 or 1 restores each exact size), the last one
  straight to the likelihood's raw channels. The size of MONAI's `VarAutoEncoder` (channels
  32-64-128, latent 16, 28×28: 0.29 M parameters, ~4.9 M multiply-adds per image forward), without
  its instance norm: measured in benchmarks/conv_layouts.py, it trains as well without it, faster.
- `resize` (the only layout before config version 3; old run folders resolve to it): a 256-wide
  dense layer on each side, and a decoder that upsamples by nearest-neighbour resize + 3×3
  convolution, then a last 3×3 convolution at full resolution (1.26 M parameters, ~18 M
  multiply-adds per image forward on 28×28 at latent 16: the full-resolution 32->32 convolution
  alone is 7.2 M).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vaelab.models.blocks import ACTIVATIONS
from vaelab.models.spec import NetSpec

DENSE = 256  # width of the dense layer between the conv stack and the latent (`resize` layout)


def spatial_sizes(height: int, width: int, n_layers: int) -> list[tuple[int, int]]:
    """Feature-map sizes after each stride-2 conv (padding 1): ceil(s / 2) per layer."""
    sizes = [(height, width)]
    for _ in range(n_layers):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def _dense_width(spec: NetSpec) -> int:
    """Width of the hidden dense layer on each side of the latent (0: none)."""
    return DENSE if spec.config.conv_layout == "resize" else 0


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
        flat = hidden[-1] * fh * fw + cond_dim
        width = _dense_width(spec)
        # `resize`: flat -> 256 -> encoder_out; `transposed`: flat -> encoder_out.
        self.dense = nn.Sequential(nn.Linear(flat, width), act()) if width else nn.Identity()
        self.head = nn.Linear(width or flat, spec.encoder_out)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = self.convs(x).flatten(1)  # (B, C_last*h*w)
        if cond is not None:
            h = torch.cat([h, cond], dim=1)
        return self.head(self.dense(h))  # (B, encoder_out)


def _resize_stages(channels: list[int], sizes: list[tuple[int, int]], out_channels: int,
                   act: type[nn.Module]) -> list[nn.Module]:
    """`resize`: per stage nearest-neighbour resize to the size it restores + 3×3 conv + act,
    then a 3×3 conv at full resolution to the raw output (no activation)."""
    layers: list[nn.Module] = []
    for i, c_in in enumerate(channels):
        c_out = channels[i + 1] if i + 1 < len(channels) else channels[-1]
        layers += [nn.Upsample(size=sizes[i + 1], mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1), act()]
    layers.append(nn.Conv2d(channels[-1], out_channels, 3, padding=1))
    return layers


class OutputConvTranspose2d(nn.ConvTranspose2d):
    """The decoder's last transposed convolution, to the likelihood's few raw channels.

    oneDNN's transposed convolution vectorises over output channels, so with 1-3 of them it runs at
    a fraction of its speed: on 2 Ice Lake cores the 32 -> 1 layer of the MNIST decoder took as long
    as the 128 -> 64 one with 20x its multiply-adds. In inference mode on a CPU (L_K, sampling, the
    explorer) this layer is therefore computed as one GEMM, x (N·H·W, C_in) @ W (C_in, k·k·C_out),
    whose k·k shifted blocks are added into the output at stride s (col2im): ~3x faster for 1-2
    channels (benchmarks/eval_speed.py --levers). Training keeps oneDNN (autograd through the
    strided adds is slower there), and the values agree to float rounding (tests/test_conv_layouts.py).
    The parameters are the ConvTranspose2d's own: checkpoints do not change.
    """

    GEMM_MAX_CHANNELS = 3  # measured faster up to here; 6 and more channels were slower
    use_gemm = True  # class switch for the benchmark's lever (eval_speed.py --levers)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (output_size is not None or not self.use_gemm or x.device.type != "cpu" or x.dim() != 4
                or self.out_channels > self.GEMM_MAX_CHANNELS or not torch.is_inference_mode_enabled()
                or self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros"):
            return super().forward(x, output_size)
        return _conv_transpose_gemm(x, self)


def _conv_transpose_gemm(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """conv(x) for a ConvTranspose2d (groups 1, dilation 1) as one GEMM + col2im; x (N, C_in, H, W)
    in any memory format -> (N, C_out, H_out, W_out), channels-last."""
    n, c_in, h, w = x.shape
    _, c_out, kh, kw = conv.weight.shape  # (C_in, C_out, kh, kw)
    (sh, sw), (ph, pw), (oh, ow) = conv.stride, conv.padding, conv.output_padding
    cols = x.permute(0, 2, 3, 1).reshape(n * h * w, c_in) @ conv.weight.permute(0, 2, 3, 1).reshape(c_in, -1)
    cols = cols.view(n, h, w, kh, kw, c_out)
    # the output before cropping the padding: input pixel (i, j) tap (a, b) lands at (i·s + a, j·s + b)
    full = x.new_zeros(n, (h - 1) * sh + kh + oh, (w - 1) * sw + kw + ow, c_out)
    for a in range(kh):
        for b in range(kw):
            full[:, a : a + sh * (h - 1) + 1 : sh, b : b + sw * (w - 1) + 1 : sw] += cols[:, :, :, a, b]
    out = full[:, ph : full.shape[1] - ph, pw : full.shape[2] - pw]  # (N, H_out, W_out, C_out)
    if conv.bias is not None:
        out = out + conv.bias
    return out.permute(0, 3, 1, 2)


def _transposed_stages(channels: list[int], sizes: list[tuple[int, int]], out_channels: int,
                       act: type[nn.Module]) -> list[nn.Module]:
    """`transposed`: per stage a stride-2 3×3 transposed conv (+ act but after the last); a
    (h, w) map becomes (2h - 1 + p_h, 2w - 1 + p_w), and output_padding p in {0, 1} picks the size
    the encoder saw."""
    layers: list[nn.Module] = []
    outs = [*channels[1:], out_channels]
    for i, (c_in, c_out) in enumerate(zip(channels, outs)):
        (h, w), (th, tw) = sizes[i], sizes[i + 1]
        last = i + 1 == len(channels)
        layers.append((OutputConvTranspose2d if last else nn.ConvTranspose2d)(
            c_in, c_out, 3, stride=2, padding=1, output_padding=(th - 2 * h + 1, tw - 2 * w + 1)))
        if i + 1 < len(channels):
            layers.append(act())
    return layers


# conv_layout -> builder of the decoder's upsampling stages: (channels from the last feature map
# down, e.g. [128, 64, 32]; sizes from the last feature map up, e.g. [(4, 4), (7, 7), (14, 14),
# (28, 28)]; raw output channels; activation) -> layers.
DECODER_STAGES: dict[str, Callable[..., list[nn.Module]]] = {
    "transposed": _transposed_stages,
    "resize": _resize_stages,
}


class ConvDecoder(nn.Module):
    """z (..., D) [+ one-hot label] -> raw output (..., P·C, H, W) at the exact input size."""

    # Latents per L_K chunk (vaelab.evaluate.chunk_samples): on a CPU, 512 keeps a chunk's
    # activations in cache (measured faster per latent than 2048 or 8000 on 2 cores). The chunk
    # size decides how the draws fall, so the `resize` layout keeps the default of the version
    # that trained such runs: their evaluations stay exactly what they were.
    CHUNK_SAMPLES = {"cpu": 512, "cuda": 32768}

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        _, h, w = spec.image_shape
        hidden, cond_dim, latent_dim = list(spec.hidden), spec.cond_dim, spec.latent_dim
        act = ACTIVATIONS[spec.activation]
        sizes = spatial_sizes(h, w, len(hidden))  # [(H, W), ..., (h_last, w_last)]
        self.start_shape = (hidden[-1], *sizes[-1])
        flat = hidden[-1] * sizes[-1][0] * sizes[-1][1]
        width = _dense_width(spec)
        if width:  # `resize`: z -> 256 -> the last feature map
            self.dense = nn.Sequential(nn.Linear(latent_dim + cond_dim, width), act(), nn.Linear(width, flat), act())
        else:
            self.dense = nn.Sequential(nn.Linear(latent_dim + cond_dim, flat), act())
        self.chunk_samples = None if spec.config.conv_layout == "resize" else self.CHUNK_SAMPLES
        stages = DECODER_STAGES[spec.config.conv_layout]
        self.convs = nn.Sequential(*stages(list(reversed(hidden)), list(reversed(sizes)), spec.decoder_channels, act))

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=-1)
        lead = z.shape[:-1]  # allow (K, B, D) inputs as well as (B, D)
        h = self.dense(z.reshape(-1, z.shape[-1])).unflatten(-1, self.start_shape)  # (N, C_last, h, w)
        out = self.convs(h)  # (N, P·C, H, W)
        return out.reshape(*lead, *out.shape[1:])
