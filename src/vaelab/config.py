"""Typed run configuration: `DataConfig`, `ModelConfig`, `TrainConfig` inside one `RunConfig`.

Every run writes its resolved `RunConfig` to `config.json`; a trained model is rebuilt from that
file plus `model.safetensors` alone. Loading validates every field (type, range, known choice)
and reports each problem in one clear line, so a hand-edited or foreign config never reaches
the model code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from vaelab.errors import ConfigError

# Bumped whenever the meaning of a saved field changes; configs from a newer version are refused,
# older ones are upgraded on load (`upgrade_raw`). Version 2: `train.lr_schedule` names the
# schedule (constant, cosine, ...); version 1's piecewise list [[epochs, multiplier], ...] moved
# to `train.lr_segments`. Version 3: `model.conv_layout`, whose absence in an older conv config
# means the only layout there was then, "resize".
CONFIG_VERSION = 3
MAX_SEED = 2**63  # torch, numpy and Python all accept seeds in 0..2**63-1
# `vaelab eval`'s importance samples (here, not in vaelab.evaluate, so the CLI can show them
# without importing torch): K = 5000 is the standard for reported likelihoods (Burda et al. 2015).
DEFAULT_IW_SAMPLES = 5000
MAX_IW_SAMPLES = 1_000_000

# A hand-edited or hostile config must not make `VAE(...)` allocate until the machine dies.
MAX_PARAMETERS = 2_000_000_000
# --dataset shapes (vaelab.data.shapes): the dSprites factor grid, 3 x 6 x 40 x 32 x 32 images.
SHAPES_IMAGES = 737_280
SHAPES_MIN_IMAGES = 10  # enough for a test, a validation and a training image
# --objective beta-tc: the weight of the total correlation (Chen et al. 2018 use 6 on dSprites).
DEFAULT_TC_WEIGHT = 6.0

DatasetName = Literal["digits", "mnist", "fashion-mnist", "folder", "npz", "dicom", "nifti", "shapes", "pairs"]
Binarize = Literal["none", "dynamic", "static"]
ArchName = Literal["mlp", "conv", "resnet", "unet"]  # models/__init__.py ARCHITECTURES; unet: --task translate
# What a run learns: generate = a VAE of the images; translate = an image-to-image model, the
# Probabilistic U-Net (models/punet.py) of the target given an input image.
Task = Literal["generate", "translate"]
LikelihoodName = Literal["gaussian", "bernoulli", "logistic", "logistic-mixture"]  # likelihoods.py LIKELIHOODS
# How the gaussian likelihood's std is set (likelihoods.py GAUSSIAN_VARIANCES): fixed = gaussian_std;
# learned = a parameter trained with the network; optimal = the sigma-VAE's closed form (Rybkin et al. 2021).
GaussianVariance = Literal["fixed", "learned", "optimal"]
PriorName = Literal["normal", "mog", "vamp"]  # models/priors.py PRIORS
PosteriorName = Literal["diagonal", "iaf"]  # models/posterior.py POSTERIORS
Activation = Literal["relu", "tanh", "elu", "gelu"]
ConvLayout = Literal["transposed", "resize"]  # models/conv.py DECODER_STAGES
Objective = Literal["elbo", "iwae", "beta-tc"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "bf16"]
StepKind = Literal["auto", "fused", "autograd"]
OptimizerName = Literal["adam", "adamw", "sgd", "rmsprop"]
# Learning-rate schedules (vaelab.schedules): per epoch, after an optional linear warm-up.
ScheduleName = Literal["constant", "cosine", "step", "plateau", "piecewise"]
KeepWeights = Literal["last", "best"]
WeightsKind = Literal["raw", "ema"]
# Channels of the resnet's last feature map, the one the linear layer to the code sees (models/resnet.py).
RESNET_BOTTLENECK = 32
# What the hand-derived step in vaelab.fused covers (checked again there, with the process count).
FUSED_ACTIVATIONS = ("relu", "tanh", "elu")
MAX_LATENT_LAYERS = 16
DEFAULT_LADDER_HIDDEN = [256]  # the deterministic MLP between stochastic layers (models/hierarchical.py)


def fused_step_fits(cfg: RunConfig, world_size: int = 1) -> bool:
    """Whether the hand-derived step (vaelab.fused) covers this set-up: an mlp on the elbo, one of
    FUSED_ACTIVATIONS, float32, no --compile, one process (DDP averages gradients through
    autograd's hooks), and the plain model: N(0, I) prior, diagonal posterior, one stochastic layer,
    no free bits. The one test both the config check and the training loop use."""
    return (cfg.model.arch == "mlp" and cfg.train.objective == "elbo" and cfg.model.activation in FUSED_ACTIVATIONS
            and cfg.model.prior == "normal" and cfg.model.posterior == "diagonal" and cfg.model.stochastic_layers == 1
            and cfg.train.free_bits == 0.0
            and (cfg.model.likelihood == "bernoulli"
                 or (cfg.model.likelihood == "gaussian" and cfg.model.gaussian_variance == "fixed"))
            and cfg.train.precision == "fp32" and not cfg.train.compile and world_size == 1)


def _raise_problems(problems: list[str]) -> None:
    """One ConfigError (one line) listing every problem found, if any."""
    if problems:
        raise ConfigError("; ".join(problems))


@dataclass
class DegradeConfig:
    """A synthetic degradation (`--degrade noise=0.1,blur=1.5,downsample=2,jpeg=30`): the clean
    images become the targets and their degraded copies the inputs of an image-to-image run.

    Applied in this order (vaelab/data/degrade.py), afresh each time an image is used: Gaussian
    blur of σ = `blur` pixels; downsampling by `downsample` (antialiased bicubic) and bicubic
    upsampling back to the original size; additive Gaussian noise of std `noise` on [0, 1] pixel
    values; clipping to [0, 1]; JPEG at quality `jpeg`. A zero (or downsample 1) leaves a step out.
    """

    noise: float = 0.0  # std of additive Gaussian noise on [0, 1] pixels
    blur: float = 0.0  # σ of a Gaussian blur, in pixels
    downsample: float = 1.0  # factor of the downsampling before bicubic upsampling (1 = none)
    jpeg: int = 0  # JPEG quality 1..100 (0 = no JPEG step)

    def problems(self) -> list[str]:
        """One message per bad field (empty: valid)."""
        problems: list[str] = []
        if not 0.0 <= self.noise <= 1.0:
            problems.append(f"degrade noise must be in [0, 1], got {self.noise}")
        if not 0.0 <= self.blur <= 50.0:
            problems.append(f"degrade blur must be in [0, 50] pixels, got {self.blur}")
        if not 1.0 <= self.downsample <= 64.0:
            problems.append(f"degrade downsample must be in [1, 64], got {self.downsample}")
        if not 0 <= self.jpeg <= 100:
            problems.append(f"degrade jpeg must be a quality in 1..100 (0 = off), got {self.jpeg}")
        if not problems and self.is_identity:
            problems.append("degrade changes nothing: give at least one of noise, blur, downsample > 1, jpeg")
        return problems

    @property
    def is_identity(self) -> bool:
        """True when no step is on (the input would equal the target)."""
        return self.noise == 0 and self.blur == 0 and self.downsample == 1 and self.jpeg == 0


@dataclass
class DataConfig:
    """Where the images come from and how they are presented to the model."""

    dataset: DatasetName = "digits"
    data_dir: Optional[str] = None  # mnist / fashion-mnist IDX files, or the image folder
    data_path: Optional[str] = None  # npz file
    image_size: Optional[int] = None  # folder: resize to this (default 28)
    channels: Optional[int] = None  # folder: 1 or 3 (default 1)
    binarize: Binarize = "none"
    val_fraction: float = 0.1  # share of the training split held out for validation
    split_seed: int = 0  # fixes the train/validation split and the static binarisation
    # folder: map 16-bit / float intensities [low, high] -> 0..255 (clipped); None = min..max per image.
    # dicom / nifti: the window in modality units (HU for CT); None = per-series robust percentiles.
    intensity_window: Optional[list[float]] = None
    # Keep only these labels in the training and validation splits (the test split keeps every
    # class): train on "normal" classes for anomaly detection. Empty = every class.
    train_classes: list[int] = field(default_factory=list)
    cache: bool = True  # folder / dicom / nifti: decode once into the decoded-image cache (data/cache.py)
    slice_axis: Optional[int] = None  # nifti: voxel axis to slice along; None = the one closest to axial
    keep_empty_slices: bool = False  # dicom / nifti: keep slices that are one constant value after windowing
    allow_mixed: bool = False  # dicom: allow several modalities (CT, MR, ...) in one dataset
    class_folders: bool = True  # dicom / nifti: the top-level sub-folders of data_dir are class labels
    # shapes: a seeded random subset of this many of the 737,280 images (0 = all of them)
    shapes_subsample: int = 0
    # pairs (--task translate): input and target images matched by their path relative to each folder
    input_dir: Optional[str] = None
    target_dir: Optional[str] = None
    # --task translate on an ordinary dataset: its images are the targets, degraded copies the inputs
    degrade: Optional[DegradeConfig] = None

    def validate(self) -> None:
        """Check every field; raise one ConfigError listing every bad one."""
        _raise_problems(self.problems())

    def problems(self) -> list[str]:
        """One message per bad field (empty: the section is valid)."""
        problems: list[str] = []
        if self.intensity_window is not None and (
                len(self.intensity_window) != 2 or not self.intensity_window[0] < self.intensity_window[1]):
            problems.append(f"intensity_window must be [low, high] with low < high, got {self.intensity_window}")
        if self.image_size is not None and not 4 <= self.image_size <= 1024:
            problems.append(f"image_size must be between 4 and 1024, got {self.image_size}")
        if self.slice_axis is not None and self.slice_axis not in (0, 1, 2):
            problems.append(f"slice_axis must be 0, 1 or 2, got {self.slice_axis}")
        if self.channels is not None and self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, got {self.channels}")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.split_seed < MAX_SEED:
            problems.append(f"split_seed must be in 0..2**63-1, got {self.split_seed}")
        if any(c < 0 for c in self.train_classes) or len(set(self.train_classes)) != len(self.train_classes):
            problems.append(f"train_classes must be distinct labels >= 0, got {self.train_classes}")
        if self.shapes_subsample and not SHAPES_MIN_IMAGES <= self.shapes_subsample <= SHAPES_IMAGES:
            problems.append(f"shapes_subsample must be 0 (all {SHAPES_IMAGES:,} images) or in "
                            f"{SHAPES_MIN_IMAGES}..{SHAPES_IMAGES}, got {self.shapes_subsample}")
        elif self.shapes_subsample and self.dataset != "shapes":
            problems.append(f"shapes_subsample is for --dataset shapes, not {self.dataset}")
        if self.dataset == "pairs" and (self.input_dir is None or self.target_dir is None):
            problems.append("--dataset pairs needs --input-dir A and --target-dir B")
        if self.dataset != "pairs" and (self.input_dir is not None or self.target_dir is not None):
            problems.append("--input-dir and --target-dir are for --dataset pairs")
        if self.degrade is not None:
            problems += self.degrade.problems()
            if self.dataset == "pairs":
                problems.append("--degrade makes inputs from clean images; --dataset pairs already has its inputs")
        return problems


@dataclass
class ModelConfig:
    """The network: architecture, latent size, likelihood p(x|z), optional label conditioning."""

    arch: ArchName = "mlp"
    latent_dim: int = 2  # size of the latent code z; the paper's Fig. 2 plots a 2-D latent space
    # mlp: hidden layer widths; conv: channels of the stride-2 convs; resnet: channels per stage.
    # Empty = the architecture's default (mlp 512,256; conv 32,64,128; resnet 32,64,128), written
    # out in full when training starts.
    hidden: list[int] = field(default_factory=list)
    blocks: int = 1  # resnet: residual blocks per stage (1 keeps a first run on a CPU affordable)
    activation: Activation = "relu"
    # conv: "transposed" = stride-2 convs down, one dense layer each side, stride-2 transposed
    # convs up (0.29 M parameters at 32,64,128 / latent 16 / 28×28); "resize" = the layout of
    # config version 1: 256-wide dense layers, nearest-neighbour resize + conv up (1.26 M).
    conv_layout: ConvLayout = "transposed"
    likelihood: LikelihoodName = "gaussian"  # gaussian = the paper's MSE criterion
    # Fixed std of the gaussian likelihood (and the starting std of a learned one). 1/sqrt(2) makes
    # -log p(x|z) = sum of squared errors + a constant, i.e. exactly the paper's summed-MSE criterion.
    gaussian_std: float = 1 / math.sqrt(2)
    gaussian_variance: GaussianVariance = "fixed"
    mixture_components: int = 10  # logistic-mixture: logistics per pixel (PixelCNN++ uses 10 on CIFAR-10)
    conditional: bool = False  # condition encoder and decoder on the label (CVAE)
    prior: PriorName = "normal"  # p(z): normal = N(0, I), mog = learned Gaussian mixture, vamp = VampPrior
    prior_components: int = 500  # K of the mog / vamp prior (Tomczak & Welling 2018 use 500 pseudo-inputs)
    posterior: PosteriorName = "diagonal"  # q(z|x): diagonal Gaussian, or iaf = + inverse autoregressive flow
    flow_steps: int = 2  # IAF steps after the diagonal Gaussian (--posterior iaf)
    flow_hidden: int = 0  # width of each IAF step's MADE layers and of the context h; 0 = max(4·D, 64)
    # Stochastic layers: 1 = the VAE; L >= 2 = the hierarchical VAE (models/hierarchical.py) with
    # layer sizes `layer_dims` (bottom first; empty = latent_dim for every layer; given alone, its
    # length is L) and deterministic MLPs of widths `ladder_hidden` between consecutive layers.
    latent_layers: int = 1
    layer_dims: list[int] = field(default_factory=list)
    ladder_hidden: list[int] = field(default_factory=lambda: list(DEFAULT_LADDER_HIDDEN))
    # generate: a VAE of the images; translate: p(target | input image), the Probabilistic U-Net
    # (--arch unet), whose prior p(z | input) is a network (models/punet.py).
    task: Task = "generate"
    # unet: decoder stages, counted from the output, that receive z (1 = only the final 1×1
    # convolutions, as in Kohl et al. 2018; n > 1 also the last n - 1 up-sampling stages)
    inject_stages: int = 1
    # Filled in from the data when training starts; saved so the model can be rebuilt alone.
    image_shape: Optional[list[int]] = None  # [C, H, W], or [C, D, H, W] for volumes
    num_classes: int = 0  # the labelled dataset's number of classes (0: unlabelled)
    input_channels: int = 0  # translate: channels of the input image (the target's are image_shape[0])

    def validate(self) -> None:
        """Check every field; raise one ConfigError listing every bad one."""
        _raise_problems(self.problems())

    def problems(self) -> list[str]:
        """One message per bad field (empty: the section is valid)."""
        problems: list[str] = []
        if not 1 <= self.latent_dim <= 4096:
            problems.append(f"latent_dim must be between 1 and 4096, got {self.latent_dim}")
        if len(self.hidden) > 16 or any(h < 1 or h > 65536 for h in self.hidden):
            problems.append(f"hidden must be at most 16 sizes in 1..65536, got {self.hidden}")
        if not 0.0 < self.gaussian_std <= 100.0:
            problems.append(f"gaussian_std must be in (0, 100], got {self.gaussian_std}")
        if not 1 <= self.blocks <= 32:
            problems.append(f"blocks must be between 1 and 32, got {self.blocks}")
        if not 1 <= self.mixture_components <= 64:
            problems.append(f"mixture_components must be between 1 and 64, got {self.mixture_components}")
        if self.gaussian_variance != "fixed" and self.likelihood != "gaussian":
            problems.append(f"gaussian_variance {self.gaussian_variance!r} needs --likelihood gaussian "
                            f"(the likelihood is {self.likelihood!r})")
        if self.image_shape is not None:
            if len(self.image_shape) not in (3, 4) or self.image_shape[0] not in (1, 3) or min(self.image_shape) < 1 \
                    or max(self.image_shape[1:]) > 4096:
                problems.append(f"image_shape must be [C, H, W] or [C, D, H, W] with C in (1, 3) and sizes in "
                                f"1..4096, got {self.image_shape}")
            elif not problems and approx_parameters(self) > MAX_PARAMETERS:  # needs valid sizes
                problems.append(f"this model would have about {approx_parameters(self):.3g} parameters "
                                f"(limit {MAX_PARAMETERS:.0e}); use smaller hidden sizes, latent_dim or images")
        if not 0 <= self.num_classes <= 100_000:
            problems.append(f"num_classes must be in 0..100000, got {self.num_classes}")
        problems += self._research_problems()
        if self.input_channels not in (0, 1, 3):
            problems.append(f"input_channels must be 1 or 3 (0 = unset), got {self.input_channels}")
        if not 1 <= self.inject_stages <= 17:
            problems.append(f"inject_stages must be between 1 and 17, got {self.inject_stages}")
        elif self.arch == "unet" and self.hidden and self.inject_stages > len(self.hidden):
            problems.append(f"inject_stages {self.inject_stages} is more than the U-Net's {len(self.hidden)} "
                            f"levels (--hidden)")
        translate = self.task == "translate"
        if translate != (self.arch == "unet"):
            problems.append("--task translate trains --arch unet (and --arch unet is for --task translate)")
        if translate and self.conditional:
            problems.append("--task translate conditions on the input image; leave out --conditional")
        if translate and (self.prior != "normal" or self.posterior != "diagonal" or self.latent_layers != 1):
            problems.append("--task translate has its own prior network p(z | input) and a diagonal posterior; "
                            "leave --prior, --posterior and --latent-layers at their defaults")
        if translate and self.image_shape is not None and len(self.image_shape) != 3:
            problems.append("--task translate works on 2-D images (C, H, W)")
        return problems

    def _research_problems(self) -> list[str]:
        """Checks of the learned priors, the flow posterior and the hierarchical VAE."""
        problems: list[str] = []
        if not 1 <= self.prior_components <= 10_000:
            problems.append(f"prior_components must be in 1..10000, got {self.prior_components}")
        if not 1 <= self.flow_steps <= 64:
            problems.append(f"flow_steps must be in 1..64, got {self.flow_steps}")
        if not 0 <= self.flow_hidden <= 65536:
            problems.append(f"flow_hidden must be in 0..65536 (0 = automatic), got {self.flow_hidden}")
        if self.prior == "vamp" and self.conditional:
            problems.append("--prior vamp encodes label-free pseudo-inputs; it does not combine with --conditional")
        if not 1 <= self.latent_layers <= MAX_LATENT_LAYERS:
            problems.append(f"latent_layers must be in 1..{MAX_LATENT_LAYERS}, got {self.latent_layers}")
        elif len(self.layer_dims) == 1:
            problems.append("layer_dims is for 2 or more stochastic layers; use --latent-dim for one layer")
        elif len(self.layer_dims) > MAX_LATENT_LAYERS:
            problems.append(f"layer_dims may hold at most {MAX_LATENT_LAYERS} sizes, got {len(self.layer_dims)}")
        elif self.layer_dims and self.latent_layers not in (1, len(self.layer_dims)):
            problems.append(f"layer_dims needs one size per stochastic layer ({self.latent_layers}), "
                            f"got {self.layer_dims}")
        if any(not 1 <= d <= 4096 for d in self.layer_dims):
            problems.append(f"layer_dims must be sizes in 1..4096, got {self.layer_dims}")
        if not 1 <= len(self.ladder_hidden) <= 16 or any(not 1 <= h <= 65536 for h in self.ladder_hidden):
            problems.append(f"ladder_hidden must be 1 to 16 sizes in 1..65536, got {self.ladder_hidden}")
        if self.stochastic_layers > 1 and self.posterior != "diagonal":
            problems.append("the hierarchical VAE (--latent-layers >= 2) has its own top-down posterior; "
                            "use --posterior diagonal")
        return problems

    @property
    def stochastic_layers(self) -> int:
        """L: the number of stochastic layers (`layer_dims`' length when given, else `latent_layers`)."""
        return len(self.layer_dims) if self.layer_dims else self.latent_layers

    def layer_sizes(self) -> list[int]:
        """Sizes of the stochastic layers z_1 (bottom, next to the pixels) .. z_L (top)."""
        return list(self.layer_dims) if self.layer_dims else [self.latent_dim] * self.latent_layers


@dataclass
class TrainConfig:
    """Optimisation: optimiser, schedule, epochs, batch, objective, weights kept, safety and speed switches."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    # adam = vaelab.optim.Adam (torch.optim.Adam with weight decay); adamw, sgd, rmsprop = torch.optim.
    optimizer: OptimizerName = "adam"
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    adam_eps: float = 1e-8  # adam, adamw
    # None = the optimiser's own default (adamw 0.01, the others 0), written out when training starts.
    weight_decay: Optional[float] = None
    momentum: float = 0.0  # sgd, rmsprop
    seed: int = 0
    beta: float = 1.0  # weight on the KL term (beta-VAE when != 1)
    kl_warmup_epochs: float = 0.0  # linearly ramp the KL weight from 0 to beta over this many epochs
    objective: Objective = "elbo"
    iw_samples_train: int = 1  # K for --objective iwae
    # Free bits (Kingma et al. 2016): each latent dimension's batch-mean KL enters the loss as
    # max(free_bits, KL) nats (see objectives.free_bits_kl); 0 = off.
    free_bits: float = 0.0
    # --objective beta-tc: loss = recon + MI + tc_weight * TC + dim-KL (Chen et al. 2018; vaelab.total_correlation)
    tc_weight: float = DEFAULT_TC_WEIGHT
    # The learning rate of each epoch (vaelab.schedules), after `warmup_epochs` of linear warm-up.
    lr_schedule: ScheduleName = "constant"
    warmup_epochs: float = 0.0  # ramp the rate linearly from 0 over this many epochs (per step)
    min_lr: float = 0.0  # cosine: the rate it ends at; plateau: the rate it never goes below
    lr_decay: float = 0.1  # step, plateau: the factor each decay multiplies the rate by
    lr_step: int = 0  # step: epochs between decays
    lr_patience: int = 5  # plateau: epochs without a better validation loss before a decay
    # piecewise: [[epochs, lr_multiplier], ...], segment after segment (the IWAE-paper presets).
    lr_segments: list[list[float]] = field(default_factory=list)
    ema_decay: float = 0.0  # exponential moving average of the weights; 0 = off (vaelab.ema)
    early_stopping: int = 0  # stop after this many epochs without a better validation loss; 0 = off
    keep: KeepWeights = "last"  # which epoch's weights model.safetensors holds
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = only at epoch ends
    device: Device = "auto"
    precision: Precision = "fp32"  # bf16 matmuls are a speed lever, off by default
    # How gradients are computed: "fused" = the hand-derived MLP/ELBO step (vaelab.fused),
    # "autograd" = loss.backward(); "auto" = fused wherever it applies.
    step: StepKind = "auto"
    compile: bool = False  # torch.compile the model (fails soft)
    threads: int = 0  # torch intra-op threads; 0 = leave PyTorch's default
    tensorboard: bool = False  # also log scalars and images to <run>/tensorboard (vaelab.tracking)
    # MLflow tracking URI (a path = a local file store); "" = off (vaelab.mlflow_tracking).
    mlflow: str = ""

    def validate(self) -> None:
        """Check every field; raise one ConfigError listing every bad one."""
        _raise_problems(self.problems())

    def problems(self) -> list[str]:
        """One message per bad field (empty: the section is valid)."""
        problems: list[str] = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not (0.0 < self.lr <= 10.0) or not math.isfinite(self.lr):
            problems.append(f"lr must be in (0, 10], got {self.lr}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            problems.append(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if not 0.0 < self.adam_eps < 1.0:
            problems.append(f"adam_eps must be in (0, 1), got {self.adam_eps}")
        if not (0.0 <= self.beta <= 1000.0):
            problems.append(f"beta must be in [0, 1000], got {self.beta}")
        if self.kl_warmup_epochs < 0:
            problems.append(f"kl_warmup_epochs must be >= 0, got {self.kl_warmup_epochs}")
        if not 1 <= self.iw_samples_train <= 10000:
            problems.append(f"iw_samples_train must be in 1..10000, got {self.iw_samples_train}")
        if not 0.0 <= self.free_bits <= 100.0:
            problems.append(f"free_bits must be in [0, 100] nats, got {self.free_bits}")
        elif self.free_bits > 0 and self.objective != "elbo":
            problems.append("--free-bits changes the ELBO's KL term; it needs --objective elbo")
        problems += self._tc_problems()
        problems += self._optimizer_problems() + self._schedule_problems()
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.early_stopping < 0:
            problems.append(f"early_stopping must be >= 0, got {self.early_stopping}")
        if self.grad_clip < 0:
            problems.append(f"grad_clip must be >= 0, got {self.grad_clip}")
        if self.checkpoint_every < 0:
            problems.append(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.threads < 0:
            problems.append(f"threads must be >= 0, got {self.threads}")
        if not 0 <= self.seed < MAX_SEED:
            problems.append(f"seed must be in 0..2**63-1, got {self.seed}")
        return problems

    def _tc_problems(self) -> list[str]:
        problems: list[str] = []
        if not 0.0 <= self.tc_weight <= 1000.0:
            problems.append(f"tc_weight must be in [0, 1000], got {self.tc_weight}")
        elif self.objective != "beta-tc" and self.tc_weight != DEFAULT_TC_WEIGHT:
            problems.append(f"--tc-weight is for --objective beta-tc, not {self.objective}")
        if self.objective == "beta-tc" and self.beta != 1.0:
            problems.append("--objective beta-tc weighs its terms itself (index-code MI and dimension-wise KL by 1, "
                            "the total correlation by --tc-weight); leave --beta at 1 (--kl-warmup still ramps all "
                            "three)")
        return problems

    def _optimizer_problems(self) -> list[str]:
        problems: list[str] = []
        if self.weight_decay is not None and not 0.0 <= self.weight_decay <= 10.0:
            problems.append(f"weight_decay must be in [0, 10], got {self.weight_decay}")
        if not 0.0 <= self.momentum < 1.0:
            problems.append(f"momentum must be in [0, 1), got {self.momentum}")
        elif self.momentum and self.optimizer not in ("sgd", "rmsprop"):
            problems.append(f"momentum is for --optimizer sgd or rmsprop; {self.optimizer} uses adam_betas")
        return problems

    def _schedule_problems(self) -> list[str]:
        problems: list[str] = []
        if not 0.0 <= self.warmup_epochs < max(self.epochs, 1):
            problems.append(f"warmup_epochs must be >= 0 and fewer than the {self.epochs} epochs, "
                            f"got {self.warmup_epochs}")
        if not 0.0 <= self.min_lr < self.lr and self.lr_schedule in ("cosine", "plateau"):
            problems.append(f"min_lr must be >= 0 and below lr ({self.lr}), got {self.min_lr}")
        elif self.min_lr < 0:
            problems.append(f"min_lr must be >= 0, got {self.min_lr}")
        if not 0.0 < self.lr_decay < 1.0:
            problems.append(f"lr_decay must be in (0, 1), got {self.lr_decay}")
        if self.lr_step < 0 or (self.lr_schedule == "step" and self.lr_step < 1):
            problems.append(f"--lr-schedule step needs lr_step >= 1 (epochs between decays), got {self.lr_step}")
        if self.lr_patience < 0:
            problems.append(f"lr_patience must be >= 0, got {self.lr_patience}")
        bad_segments = [item for item in self.lr_segments if len(item) != 2 or item[0] <= 0 or item[1] <= 0]
        if bad_segments:
            problems.append(f"lr_segments entries must be [epochs > 0, multiplier > 0], got {bad_segments[0]}")
        if self.lr_schedule == "piecewise" and not self.lr_segments:
            problems.append("--lr-schedule piecewise needs lr_segments [[epochs, multiplier], ...]")
        if self.lr_segments and self.lr_schedule != "piecewise":
            problems.append(f"lr_segments are for lr_schedule 'piecewise', not {self.lr_schedule!r}")
        return problems


@dataclass
class RunConfig:
    """Everything that defines a run; written to `<run>/config.json`."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    version: int = CONFIG_VERSION  # the config format (CONFIG_VERSION); a newer one is refused
    vaelab_version: str = ""  # the vaelab release that wrote the run
    # What model.safetensors holds: the trained parameters ("raw") or their moving average ("ema",
    # with train.ema_decay > 0). Filled in when training starts; the checkpoint keeps the raw ones.
    weights: WeightsKind = "raw"

    def validate(self) -> RunConfig:
        """Check every field of every section; raise one ConfigError listing every bad one."""
        problems = self.data.problems() + self.model.problems() + self.train.problems()
        if self.model.conditional and self.model.num_classes == 1:
            problems.append("a conditional model needs a labelled dataset with at least 2 classes")
        if self.train.objective == "beta-tc" and (self.model.prior != "normal"
                                                  or self.model.posterior != "diagonal"
                                                  or self.model.stochastic_layers != 1
                                                  or self.model.task != "generate"):
            problems.append("--objective beta-tc splits the KL per latent dimension: it needs --prior normal, "
                            "--posterior diagonal and one stochastic layer")
        if self.weights == "ema" and not self.train.ema_decay:
            problems.append("weights 'ema' needs train.ema_decay > 0")
        translate_data = self.data.dataset == "pairs" or self.data.degrade is not None
        if translate_data and self.model.task != "translate":
            problems.append("--dataset pairs and --degrade give image pairs: train them with --task translate "
                            "--arch unet")
        if self.model.task == "translate" and self.data.binarize != "none":
            problems.append("--task translate works on grey values; leave --binarize at none")
        if self.train.step == "fused" and not fused_step_fits(self):
            problems.append(f"--step fused needs --arch mlp, --objective elbo, --activation one of "
                            f"{', '.join(FUSED_ACTIVATIONS)}, --likelihood bernoulli or gaussian with "
                            f"--gaussian-variance fixed, --precision fp32, no --compile, --prior normal, "
                            f"--posterior diagonal, one stochastic layer and no --free-bits; "
                            f"use --step auto or autograd")
        _raise_problems(problems)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The config as plain nested dicts (JSON-able)."""
        return asdict(self)

    def to_json(self) -> str:
        """The config as indented JSON (what config.json holds)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, raw: Any) -> RunConfig:
        """Build and validate a config from parsed JSON/TOML; one clear error per problem."""
        if not isinstance(raw, dict):
            raise ConfigError("config must be a JSON object")
        version = raw.get("version", CONFIG_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigError(f"config 'version' must be a positive integer, got {version!r}")
        if version > CONFIG_VERSION:
            raise ConfigError(
                f"config version {version} is newer than this vaelab understands ({CONFIG_VERSION}); "
                "upgrade vaelab to load it"
            )
        problems: list[str] = []  # type errors and unknown keys, collected over every section
        cfg = _build(cls, upgrade_raw(raw), "", problems)
        try:
            cfg.validate()  # the range checks, on the fields that had the right type
        except ConfigError as exc:
            problems.append(str(exc))
        _raise_problems(problems)
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read and validate a config.json; one clear ConfigError per problem."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(raw)


def upgrade_raw(raw: dict[str, Any]) -> dict[str, Any]:
    """A parsed config of an older version in today's layout (a copy; `raw` is left alone).

    - `train.lr_schedule` held the piecewise list [[epochs, multiplier], ...] up to version 1; it
      becomes `train.lr_segments` with `lr_schedule = "piecewise"` ("constant" when empty). A
      list under `lr_schedule` is recognised whatever the file says its version is (TOML files
      written by hand often carry none).
    - Before version 3 a conv model had one layout, "resize" (the default now, "transposed", is
      a different network): a conv config of version 1 or 2 without `conv_layout` gets "resize",
      so old run folders load, resume and evaluate the network they trained.
    A file without a version is taken to be current. The result says the current version (a
    resumed run rewrites its config.json in today's format).
    """
    upgraded = dict(raw)
    version = raw.get("version")
    old = isinstance(version, int) and not isinstance(version, bool) and version < CONFIG_VERSION
    if old:
        upgraded["version"] = CONFIG_VERSION  # written back in today's layout
    train = raw.get("train")
    if isinstance(train, dict) and isinstance(train.get("lr_schedule"), list):
        upgraded["train"] = dict(train)
        segments = upgraded["train"].pop("lr_schedule")
        upgraded["train"]["lr_schedule"] = "piecewise" if segments else "constant"
        if not upgraded["train"].get("lr_segments"):
            upgraded["train"]["lr_segments"] = segments
    model = raw.get("model")
    if old and version < 3 and isinstance(model, dict) and model.get("arch") == "conv" and "conv_layout" not in model:
        upgraded["model"] = {**model, "conv_layout": "resize"}
    return upgraded


def _build(cls: type, raw: dict, prefix: str, problems: list[str]) -> Any:
    """Check `raw` against the dataclass `cls` and construct it, recursively.

    Every unknown key and every value of the wrong type is appended to `problems` (not raised),
    and such a field keeps its default, so one pass names every bad field of every section.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    odd = [k for k in raw if not isinstance(k, str)]
    if odd:
        problems.append(f"config keys must be strings, got {odd[0]!r} in '{prefix.rstrip('.') or 'config'}'")
    problems += [f"unknown config key {prefix + key!r}"  # repr: a key may hold anything
                 for key in sorted(k for k in raw if isinstance(k, str) and k not in names)]
    kwargs = {}
    for name in names:
        if name in raw:
            try:
                kwargs[name] = _coerce(raw[name], hints[name], f"{prefix}{name}", problems)
            except ConfigError as exc:
                problems.append(str(exc))
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str, problems: list[str]) -> Any:
    """Check one value against its type hint (Literal, Optional, list, dataclass, scalars).

    A bad value raises ConfigError; a nested dataclass collects its own problems in `problems`.
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config '{where}' must be an object")
        return _build(hint, value, where + ".", problems)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"config '{where}' must be one of {choices}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where, problems)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config '{where}' must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config '{where}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config '{where}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config '{where}' must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"config '{where}' must be a finite number, got {_short(value)}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config '{where}' must be a string, got {value!r}")
        return value
    return value


def likelihood_param_channels(model: ModelConfig) -> int:
    """Raw decoder channels per image channel that `model.likelihood` needs (an upper bound for
    likelihoods not listed here; the classes in likelihoods.py hold the exact number)."""
    per_channel = {"bernoulli": 1, "gaussian": 1, "logistic": 2, "logistic-mixture": 4 * model.mixture_components}
    return per_channel.get(model.likelihood, 16)


def approx_parameters(model: ModelConfig) -> float:
    """An upper-bound estimate of the model's parameter count, from the config alone (no allocation).

    mlp: its dense layers, counted exactly (+1 per layer). unet: its 3x3 convolutions counted as
    4x4, two per level in each of its three contracting paths and its expanding path. Other
    architectures: convolutions as
    4x4 (4x4x4 for volumes) kernels between consecutive channel counts, four per stage both ways
    (resnet: its 2·blocks convs per stage, the convs between stages and at both ends, each
    way), plus dense layers between the last feature map (each stage halving every spatial
    size, rounding up; resnet's first stage keeps the full size) and the latent code via a dense
    width counted as 512 (directly, for the conv layout "transposed"; resnet: its two linear
    layers between the code and the 32-channel bottleneck, counted exactly). Plus the learned
    prior, the flow and the hierarchical VAE's ladder (`_component_parameters`).
    """
    if model.image_shape is None:
        return 0.0
    c, *spatial = (float(v) for v in model.image_shape)
    defaults = {"mlp": [512.0, 256.0]}
    hidden = [float(v) for v in model.hidden] or defaults.get(model.arch, [32.0, 64.0, 128.0])
    extra = float(model.num_classes if model.conditional else 0)
    latent = float(model.latent_dim)
    out = c * likelihood_param_channels(model)  # raw decoder channels
    pixels = math.prod(spatial)
    encoder_out, decoder_in = _latent_widths(model)
    components = _component_parameters(model, c * pixels)
    if model.arch == "mlp":
        encoder = [c * pixels + extra, *hidden, encoder_out]
        decoder = [decoder_in + extra, *reversed(hidden), out * pixels]
        return components + sum((a + 1) * (b + 1) for widths in (encoder, decoder) for a, b in zip(widths, widths[1:]))
    kernel = 4.0 ** len(spatial)
    if model.arch == "unet":  # three contracting paths (U-Net, prior, posterior), one expanding, the 1x1 head
        c_in = float(model.input_channels or c)
        ins = [c_in + c, *hidden[:-1]]  # the posterior sees input and target
        contracting = 3.0 * sum(kernel * ((a + 1) * b + (b + 1) * b) for a, b in zip(ins, hidden))
        expanding = sum(kernel * ((b_next + b + latent + 1) * b + (b + 1) * b) for b, b_next in zip(hidden, hidden[1:]))
        head = (hidden[0] + latent + 1) * hidden[0] + (hidden[0] + 1) * (hidden[0] + out)
        return contracting + expanding + head + 2.0 * (hidden[-1] + 1) * 2 * latent
    channels = [max(c, out), *hidden]
    if model.arch == "resnet":  # per side: 2·blocks convs per stage, the convs between stages, stem/head, 1x1
        blocks = sum(2 * model.blocks * kernel * (h + 1) * h for h in hidden)
        between = sum(kernel * (max(a, b) + 1) * max(a, b) for a, b in zip(hidden, hidden[1:]))
        edges = kernel * (hidden[0] + 1) * max(c, out) + (hidden[-1] + 1) * RESNET_BOTTLENECK
        convs = 2.0 * (blocks + between + edges)
    else:
        convs = 4.0 * sum(kernel * (a + 1) * b for a, b in zip(channels, channels[1:]))
    feature = list(spatial)
    for _ in hidden[1:] if model.arch == "resnet" else hidden:  # resnet: the first stage keeps the full size
        feature = [math.ceil(f / 2) for f in feature]
    flat = hidden[-1] * math.prod(feature)
    if model.arch == "resnet":  # one linear layer each way between the code and the 32-channel bottleneck
        bottleneck = RESNET_BOTTLENECK * math.prod(feature)
        dense = (bottleneck + extra + 1) * (max(encoder_out, 2 * latent) + extra) + (latent + extra + 1) * bottleneck
    elif model.arch == "conv" and model.conv_layout == "transposed":  # flat <-> latent, no hidden dense layer
        dense = (flat + extra + 1) * (max(encoder_out, 2 * latent) + extra) + (latent + extra + 1) * flat
    else:
        dense = (flat + extra + 1) * 512 + 513 * (max(encoder_out, 2 * latent) + extra)
    return 2.0 * (convs + dense) + components


def _flow_width(model: ModelConfig) -> float:
    return float(model.flow_hidden or max(4 * model.latent_dim, 64))  # as models/iaf.py


def _latent_widths(model: ModelConfig) -> tuple[float, float]:
    """(encoder output width, decoder input width) of the model's networks."""
    if model.stochastic_layers > 1:  # the ladder's first feature, and z_1 into the decoder
        return float(model.ladder_hidden[-1]), float(model.layer_sizes()[0])
    extra = _flow_width(model) if model.posterior == "iaf" else 0.0
    return 2.0 * model.latent_dim + extra, float(model.latent_dim)


def _component_parameters(model: ModelConfig, pixels: float) -> float:
    """Parameters outside the encoder and decoder: learned prior, flow steps, ladder networks."""
    sizes = [float(d) for d in model.layer_sizes()]
    top = sizes[-1]
    k = float(model.prior_components)
    total = {"mog": k * (2 * top + 1), "vamp": k * pixels}.get(model.prior, 0.0)
    if model.posterior == "iaf" and model.stochastic_layers == 1:
        d, h = float(model.latent_dim), _flow_width(model)
        total += model.flow_steps * ((d + 1) * h + h * h + (h + 1) * h + (h + 1) * 2 * d)
    if model.stochastic_layers > 1:
        ladder = [float(w) for w in model.ladder_hidden]
        width = ladder[-1]

        def dense(widths: list[float]) -> float:
            return sum((a + 1) * b for a, b in zip(widths, widths[1:]))

        total += sum((width + 1) * 2 * d for d in sizes)  # the q heads
        total += (len(sizes) - 1) * dense([width, *ladder])  # bottom-up
        total += sum(dense([sizes[i + 1], *reversed(ladder), 2 * sizes[i]]) for i in range(len(sizes) - 1))  # down
    return total


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
