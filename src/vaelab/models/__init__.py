"""Architectures, priors, posteriors and the model families that combine them with a likelihood.

`ARCHITECTURES` maps `--arch` to an (encoder class, decoder class, default hidden sizes) entry;
`PRIORS` (models/priors.py) maps `--prior`, `POSTERIORS` (models/posterior.py) `--posterior`.
Adding one is adding one entry. Encoders and decoders are built from one `NetSpec`
(models/spec.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vaelab.config import ModelConfig
from vaelab.errors import ConfigError
from vaelab.models.conv import ConvDecoder, ConvEncoder
from vaelab.models.conv3d import DEFAULT_HIDDEN as CONV3D_DEFAULT_HIDDEN
from vaelab.models.conv3d import Conv3dDecoder, Conv3dEncoder
from vaelab.models.mlp import MLPDecoder, MLPEncoder
from vaelab.models.posterior import POSTERIORS, DiagonalGaussian
from vaelab.models.priors import PRIORS
from vaelab.models.resnet import ResNetDecoder, ResNetEncoder
from vaelab.models.spec import NetSpec
from vaelab.models.unet import DEFAULT_HIDDEN as UNET_DEFAULT_HIDDEN


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
    "resnet": Architecture(ResNetEncoder, ResNetDecoder, (32, 64, 128)),
    "conv3d": Architecture(Conv3dEncoder, Conv3dDecoder, CONV3D_DEFAULT_HIDDEN, spatial_dims=(3,)),  # volumes
}

# Default hidden sizes of architectures outside ARCHITECTURES (those of other model families).
FAMILY_DEFAULT_HIDDEN: dict[str, tuple[int, ...]] = {"unet": UNET_DEFAULT_HIDDEN}


def default_hidden(arch: str) -> tuple[int, ...]:
    """The hidden sizes `arch` is built with when --hidden is not given."""
    return ARCHITECTURES[arch].default_hidden if arch in ARCHITECTURES else FAMILY_DEFAULT_HIDDEN[arch]


from vaelab.models.vae import VAE  # noqa: E402, I001  (needs ARCHITECTURES)
from vaelab.models.hierarchical import HierarchicalVAE  # noqa: E402  (builds on VAE)
from vaelab.models.punet import ProbabilisticUNet  # noqa: E402  (needs VAE's result types)

# Model families: one class each, built from a ModelConfig; `model_family` says which a config
# describes. Every family has the VAE's API (encode -> posterior, decode -> likelihood parameter,
# prior, likelihood, elbo_terms, log_terms, log_weights, sample, reconstruct), so training,
# evaluation and the latent tools serve them all. translate: the Probabilistic U-Net, whose
# condition y is the input image and whose prior p(z | y) is a network.
MODELS: dict[str, type[nn.Module]] = {"vae": VAE, "hierarchical": HierarchicalVAE, "translate": ProbabilisticUNet}


def model_family(cfg: ModelConfig) -> str:
    """The `MODELS` key of the model `cfg` describes."""
    if cfg.task == "translate":
        return "translate"
    if cfg.stochastic_layers > 1:
        return "hierarchical"  # --latent-layers L >= 2 (models/hierarchical.py)
    return "vae"


def family_of(model: nn.Module) -> str:
    """The `MODELS` key of a built model (its class)."""
    exact = [name for name, cls in MODELS.items() if type(model) is cls]  # a HierarchicalVAE is also a VAE
    return exact[0] if exact else next(name for name, cls in MODELS.items() if isinstance(model, cls))


def require_family(model: nn.Module, family: str, command: str) -> None:
    """A one-line ConfigError when `command` (e.g. 'vaelab sample') gets a model of another family."""
    have = family_of(model)
    if not isinstance(model, MODELS[family]):  # a subclass serves its base's commands (hierarchical: vae)
        hint = FAMILY_COMMANDS.get(have, "")
        raise ConfigError(f"{command} works on {family} runs; this is a {have} run{hint}")


# What to use instead, per family, in `require_family`'s message.
FAMILY_COMMANDS = {"translate": " (use vaelab translate, vaelab eval or vaelab explore)",
                   "vae": " (train one with --task translate --arch unet)"}


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model `cfg` describes, freshly initialised (the seed decides its weights)."""
    return MODELS[model_family(cfg)](cfg)


def use_fast_memory_format(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Lay a model with 2-D convolutions out channels-last (NHWC) for a CPU; returns it.

    oneDNN runs convolutions on channels-last tensors without reordering each input and output
    into its blocked layout: measured 1.3-1.5x less time per convolution (forward and backward)
    and per decoded image in L_K on 2 Ice Lake cores (benchmarks/train_speed.py --arch conv
    --levers, benchmarks/eval_speed.py --arch conv). Values are unchanged; only the strides of
    the 4-D weights change (inputs follow inside each convolution). MLPs are left alone.
    """
    has_conv = any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())
    if has_conv and torch.device(device).type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


__all__ = ["ARCHITECTURES", "Architecture", "DiagonalGaussian", "HierarchicalVAE", "MODELS", "NetSpec", "POSTERIORS",
           "PRIORS", "ProbabilisticUNet", "VAE", "build_model", "default_hidden", "family_of", "model_family",
           "require_family", "use_fast_memory_format"]
