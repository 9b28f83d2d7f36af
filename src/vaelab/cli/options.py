"""The table of training flags: each `--flag` is one dotted config key (also its TOML key).

Precedence, lowest first: dataclass defaults < the dataset kind's defaults (`presets.dataset_defaults`:
folder, npz, dicom and nifti data) < `--preset` < `--config FILE` < explicit flags.
A config file is TOML (`[data]`, `[model]`, `[train]` tables whose keys are the dataclass field
names, e.g. `[model] latent_dim = 8`) or JSON of the same shape, so a run's own `config.json`
is a valid config file and `vaelab train --config RUN/config.json` repeats that run.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from vaelab.config import CONFIG_VERSION, DataConfig, RunConfig, TrainConfig, upgrade_raw
from vaelab.errors import ConfigError
from vaelab.presets import PRESETS, dataset_defaults

SECTIONS = ("data", "model", "train")
# A saved run config carries these; they are facts about the run, not settings to carry over
# (the data decides image_shape, num_classes and input_channels again when the repeated run starts,
# ema_decay decides weights).
RUN_FACTS = ("version", "vaelab_version", "weights", "model.image_shape", "model.num_classes", "model.input_channels")


def int_list(text: str) -> list[int]:
    """`--hidden 512,256` -> [512, 256]."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def segments(text: str) -> list[list[float]]:
    """`--lr-segments 3:1,9:0.5` -> [[3.0, 1.0], [9.0, 0.5]] (epochs:multiplier, one after the other)."""
    try:
        pairs = [[float(a) for a in item.split(":")] for item in text.replace(" ", "").split(",") if item]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected EPOCHS:MULTIPLIER pairs separated by commas, got '{text}'")
    return pairs


def float_pair(text: str) -> list[float]:
    """`--adam-betas 0.9,0.999` -> [0.9, 0.999]."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers, got '{text}'") from None
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers, got '{text}'")
    return values


@dataclass(frozen=True)
class Flag:
    """One `--flag`: its dotted config key, how its text is parsed, and its help line."""

    flag: str
    key: str  # dotted config key, e.g. "model.latent_dim"
    type: Optional[Callable[[str], Any]] = None
    help: str = ""
    choices: Optional[tuple[str, ...]] = None
    is_switch: bool = False  # a boolean flag with a --no- form
    metavar: Optional[str] = None
    const: Optional[str] = None  # the value when the flag is given without one (its value is optional)


def degrade_spec(text: str) -> dict[str, float]:
    """`--degrade noise=0.1,blur=1.5,downsample=2,jpeg=30` -> {"noise": 0.1, ...} (a DegradeConfig)."""
    from vaelab.data.degrade import parse_degrade
    from vaelab.errors import ConfigError as _ConfigError

    try:
        return parse_degrade(text)
    except _ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


TRAIN_FLAGS: tuple[Flag, ...] = (
    Flag("--task", "model.task", str, "generate (a VAE of the images, default) or translate (image to image: "
         "the Probabilistic U-Net, with --arch unet and paired data)", ("generate", "translate")),
    Flag("--dataset", "data.dataset", str, "digits (offline default), mnist, fashion-mnist, folder, npz, "
         "dicom, nifti (pip install 'vaelab[medical]'), shapes (procedural dSprites, with factor labels), "
         "pairs (translate: --input-dir and --target-dir)",
         ("digits", "mnist", "fashion-mnist", "folder", "npz", "dicom", "nifti", "shapes", "pairs")),
    Flag("--input-dir", "data.input_dir", str, "pairs: folder of input images (matched to targets by relative path)"),
    Flag("--target-dir", "data.target_dir", str, "pairs: folder of target images"),
    Flag("--degrade", "data.degrade", degrade_spec,
         "translate: degraded copies of the dataset's images are the inputs, drawn afresh each time: any of "
         "noise=STD (Gaussian, on [0, 1]), blur=SIGMA (px), downsample=F (then bicubic up), jpeg=QUALITY",
         metavar="noise=0.1,blur=1.5,downsample=2,jpeg=30"),
    Flag("--data-dir", "data.data_dir", str, "folder with the IDX files (mnist), the images (folder) or the "
         "scans (dicom, nifti; searched recursively)"),
    Flag("--data-path", "data.data_path", str, "the .npz file (npz)"),
    Flag("--image-size", "data.image_size", int, "folder/dicom/nifti: resize images to S×S (default 28; 64 for "
         "dicom/nifti)"),
    Flag("--channels", "data.channels", int, "folder/dicom/nifti: 1 (grey, default) or 3 (RGB)"),
    Flag("--shapes-subsample", "data.shapes_subsample", int, "shapes: train on a seeded random subset of N of the "
         "737,280 images (seeded by --split-seed; default 0 = all)", metavar="N"),
    Flag("--binarize", "data.binarize", str, "none (grey values), dynamic (resampled each use), static",
         ("none", "dynamic", "static")),
    Flag("--val-fraction", "data.val_fraction", float, "share of the training images held out (default 0.1)"),
    Flag("--split-seed", "data.split_seed", int, "seed of the train/validation split"),
    Flag("--intensity-window", "data.intensity_window", float_pair,
         "folder: map 16-bit/float intensities LOW..HIGH to 0..255, clipping outside (default: each image's "
         "min..max); dicom/nifti: the window in modality units, HU for CT (default: each series' 0.5th..99.5th "
         "percentiles); a negative LOW needs '=': --intensity-window=-160,240", metavar="LOW,HIGH"),
    Flag("--cache", "data.cache", None, "folder/dicom/nifti: decode once into the decoded-image cache in "
         "$VAELAB_DATA/decoded or ~/.cache/vaelab/decoded and memory-map it (default on)", is_switch=True),
    Flag("--slice-axis", "data.slice_axis", int, "nifti: voxel axis 0, 1 or 2 to cut 2-D slices along "
         "(default: the axis closest to axial)"),
    Flag("--dimensions", "data.dimensions", int, "dicom/nifti: 2 = every slice is one image (default); 3 = every "
         "volume (a NIfTI file or time point, a DICOM series) is one sample, resampled to --volume-size "
         "(train it with --arch conv3d)", metavar="2|3"),
    Flag("--volume-size", "data.volume_size", int_list, "--dimensions 3: resample every volume to D,H,W voxels "
         "(default 32,32,32; the first axis is the one closest to axial)", metavar="D,H,W"),
    Flag("--keep-empty-slices", "data.keep_empty_slices", None, "dicom/nifti: keep slices that are one constant "
         "value after windowing (skipped by default)", is_switch=True),
    Flag("--allow-mixed", "data.allow_mixed", None, "dicom: allow several modalities (e.g. CT and MR) in one "
         "dataset", is_switch=True),
    Flag("--class-folders", "data.class_folders", None, "dicom/nifti: the top-level sub-folders of --data-dir are "
         "class labels (default); --no-class-folders ignores them (e.g. PATIENT/STUDY/SERIES exports)",
         is_switch=True),
    Flag("--train-classes", "data.train_classes", int_list,
         "train (and validate) on these labels only, e.g. 0 or 0,3; the test split keeps every class "
         "(anomaly detection: train on the normal classes)", metavar="K[,K...]"),
    Flag("--arch", "model.arch", str, "mlp (the paper's; the default; images and volumes), conv (stride-2 "
         "convolutions), resnet (residual blocks; the folder/npz default), conv3d (3-D convolutions, for "
         "--dimensions 3 volumes) or unet (--task translate)", ("mlp", "conv", "resnet", "conv3d", "unet")),
    Flag("--conv-layout", "model.conv_layout", str,
         "conv: transposed (default: strided convs down, transposed convs up, 0.29 M parameters at 28×28) or "
         "resize (the layout of runs with config version 1: 256-wide dense layers, resize + conv up, 1.26 M)",
         ("transposed", "resize")),
    Flag("--latent-dim", "model.latent_dim", int, "latent dimensions (default 2; folder/npz: 64)"),
    Flag("--hidden", "model.hidden", int_list, "mlp layer widths / conv channels / resnet channels per stage, "
         "e.g. 512,256; unet: channels per level, its length the depth (default 32,64,128)"),
    Flag("--blocks", "model.blocks", int, "resnet: residual blocks per stage (default 1)"),
    Flag("--inject-stages", "model.inject_stages", int, "unet: decoder stages from the output that receive z "
         "(1 = only the final 1x1 convolutions, as in Kohl et al. 2018)"),
    Flag("--activation", "model.activation", str, "relu, tanh, elu, gelu", ("relu", "tanh", "elu", "gelu")),
    Flag("--likelihood", "model.likelihood", str, "gaussian (the default; the paper's MSE with the fixed std), "
         "bernoulli (BCE on logits), logistic (discretized logistic on 8-bit values) or logistic-mixture",
         ("gaussian", "bernoulli", "logistic", "logistic-mixture")),
    Flag("--gaussian-std", "model.gaussian_std", float,
         "std of the gaussian likelihood (default 1/sqrt(2)); the starting std when learned"),
    Flag("--gaussian-variance", "model.gaussian_variance", str,
         "gaussian std: fixed (--gaussian-std; the default), learned (one per channel, trained) or optimal "
         "(the sigma-VAE: the MSE in closed form; the folder/npz default)", ("fixed", "learned", "optimal")),
    Flag("--mixture-components", "model.mixture_components", int,
         "logistic-mixture: logistics per pixel (default 10)"),
    Flag("--conditional", "model.conditional", None, "condition encoder and decoder on the label", is_switch=True),
    Flag("--prior", "model.prior", str, "p(z): normal (N(0, I), default), mog (a learned mixture of Gaussians) or "
         "vamp (the VampPrior, Tomczak & Welling 2018)", ("normal", "mog", "vamp")),
    Flag("--prior-components", "model.prior_components", int,
         "K: mixture components (mog) or pseudo-inputs (vamp); default 500"),
    Flag("--posterior", "model.posterior", str, "q(z|x): diagonal (default) or iaf (diagonal Gaussian + inverse "
         "autoregressive flow, Kingma et al. 2016)", ("diagonal", "iaf")),
    Flag("--flow-steps", "model.flow_steps", int, "IAF steps for --posterior iaf (default 2)"),
    Flag("--flow-hidden", "model.flow_hidden", int, "width of each IAF step's MADE layers and of the context "
         "vector h (0 = max(4 x latent-dim, 64))"),
    Flag("--latent-layers", "model.latent_layers", int, "stochastic layers: 1 (default) or L >= 2 for the "
         "hierarchical VAE with Ladder-VAE top-down inference"),
    Flag("--layer-dims", "model.layer_dims", int_list, "hierarchical VAE: size of each stochastic layer, bottom "
         "first, e.g. 64,32; alone it sets --latent-layers to its length (default: --latent-dim for every layer)"),
    Flag("--ladder-hidden", "model.ladder_hidden", int_list, "hierarchical VAE: widths of the deterministic MLP "
         "between consecutive stochastic layers (default 256)"),
    Flag("--epochs", "train.epochs", int, "passes over the training split"),
    Flag("--batch-size", "train.batch_size", int, "images per step (default 128)"),
    Flag("--lr", "train.lr", float, "learning rate (default 1e-3; the peak rate of a schedule)"),
    Flag("--optimizer", "train.optimizer", str, "adam (default; vaelab's lean Adam), adamw, sgd or rmsprop "
         "(torch.optim)", ("adam", "adamw", "sgd", "rmsprop")),
    Flag("--adam-betas", "train.adam_betas", float_pair, "Adam/AdamW betas, e.g. 0.9,0.999"),
    Flag("--adam-eps", "train.adam_eps", float, "Adam/AdamW epsilon"),
    Flag("--weight-decay", "train.weight_decay", float, "weight decay (default: the optimizer's, 0.01 for adamw, "
         "else 0; adam: an L2 penalty, adamw: decoupled)"),
    Flag("--momentum", "train.momentum", float, "sgd/rmsprop momentum (default 0)"),
    Flag("--lr-schedule", "train.lr_schedule", str, "constant (default), cosine (to --min-lr), step (x --lr-decay "
         "every --lr-step epochs), plateau (x --lr-decay when the validation loss stalls), piecewise "
         "(--lr-segments; the IWAE presets)", ("constant", "cosine", "step", "plateau", "piecewise")),
    Flag("--warmup-epochs", "train.warmup_epochs", float, "ramp the learning rate linearly from 0 over this many "
         "epochs (per step; default 0)", metavar="W"),
    Flag("--min-lr", "train.min_lr", float, "cosine: the rate it decays to; plateau: its floor (default 0)"),
    Flag("--lr-decay", "train.lr_decay", float, "step, plateau: factor of each decay (default 0.1)"),
    Flag("--lr-step", "train.lr_step", int, "step: epochs between decays", metavar="N"),
    Flag("--lr-patience", "train.lr_patience", int, "plateau: epochs without a better validation loss that are "
         "tolerated before a decay (default 5)", metavar="N"),
    Flag("--lr-segments", "train.lr_segments", segments, "piecewise: EPOCHS:MULTIPLIER,... one after the other, "
         "e.g. 3:1,9:0.5 (implies --lr-schedule piecewise)", metavar="E:M,..."),
    Flag("--ema-decay", "train.ema_decay", float, "keep an exponential moving average of the weights (e.g. 0.999); "
         "model.safetensors and evaluation then use it (default 0 = off)", metavar="D"),
    Flag("--early-stopping", "train.early_stopping", int, "stop after N epochs without a better validation loss "
         "(default 0 = off)", metavar="N"),
    Flag("--keep", "train.keep", str, "which weights model.safetensors holds: last (default) or best "
         "(lowest validation loss)", ("last", "best")),
    Flag("--seed", "train.seed", int, "random seed (same seed on CPU -> same weights)"),
    Flag("--beta", "train.beta", float, "weight of the KL term (default 1)"),
    Flag("--kl-warmup", "train.kl_warmup_epochs", float, "ramp the KL weight from 0 over this many epochs"),
    Flag("--objective", "train.objective", str, "elbo (default), iwae, or beta-tc (beta-TCVAE: the KL split into "
         "index-code MI, total correlation and dimension-wise KL)", ("elbo", "iwae", "beta-tc")),
    Flag("--tc-weight", "train.tc_weight", float, "beta-tc: weight of the total correlation (default 6, Chen et al. "
         "2018; the other two terms weigh 1)", metavar="B"),
    Flag("--iw-samples-train", "train.iw_samples_train", int, "importance samples K for --objective iwae"),
    Flag("--free-bits", "train.free_bits", float, "free bits λ (Kingma et al. 2016): no latent dimension's "
         "batch-mean KL is pushed below λ nats (0 = off; --objective elbo)"),
    Flag("--grad-clip", "train.grad_clip", float, "clip the global gradient norm (0 = off)"),
    Flag("--checkpoint-every", "train.checkpoint_every", int, "also checkpoint every N steps (0 = epoch ends)"),
    Flag("--device", "train.device", str, "auto, cpu or cuda", ("auto", "cpu", "cuda")),
    Flag("--precision", "train.precision", str, "fp32 (default) or bf16 matmuls (float32 weights and loss)",
         ("fp32", "bf16")),
    Flag("--step", "train.step", str, "auto (default): the hand-derived MLP/ELBO step where it applies; "
         "fused; autograd", ("auto", "fused", "autograd")),
    Flag("--compile", "train.compile", None, "torch.compile the model (falls back to eager)", is_switch=True),
    Flag("--threads", "train.threads", int, "CPU threads (0 = PyTorch's default)"),
    Flag("--tensorboard", "train.tensorboard", None,
         "also log losses, KL per dimension, lr and images to RUN/tensorboard (pip install 'vaelab[tensorboard]')",
         is_switch=True),
    Flag("--mlflow", "train.mlflow", str, "also track the run with MLflow: config, per-epoch metrics, the run "
         "folder as artifacts; to ./mlruns or the tracking URI given (pip install 'vaelab[mlflow]')",
         metavar="URI", const="mlruns"),
)


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """Add every TRAIN_FLAGS entry; defaults are SUPPRESS so only given flags appear."""
    group = parser.add_argument_group("run configuration (each flag = one config key)")
    for f in TRAIN_FLAGS:
        dest = "cfg__" + f.key.replace(".", "__")
        if f.is_switch:
            group.add_argument(f.flag, dest=dest, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=f.help)
        else:
            metavar = f.metavar or (None if f.choices else f.flag.strip("-").upper().replace("-", "_"))
            optional = {"nargs": "?", "const": f.const} if f.const is not None else {}
            group.add_argument(f.flag, dest=dest, type=f.type, choices=f.choices, default=argparse.SUPPRESS,
                               help=f.help, metavar=metavar, **optional)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The explicitly given flags as {dotted key: value}."""
    return {k[5:].replace("__", "."): v for k, v in vars(args).items() if k.startswith("cfg__")}


def _flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, dict) and f"{prefix}{k}" not in TABLE_KEYS:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _table_keys() -> frozenset[str]:
    """Dotted keys whose value is itself a settings table (a nested dataclass, e.g. data.degrade)."""
    import typing

    keys = set()
    for section in SECTIONS:
        sub = type(getattr(RunConfig(), section))
        hints = typing.get_type_hints(sub)
        for f in dataclasses.fields(sub):
            if any(dataclasses.is_dataclass(a) for a in (hints[f.name], *typing.get_args(hints[f.name]))):
                keys.add(f"{section}.{f.name}")
    return frozenset(keys)


TABLE_KEYS = _table_keys()


def known_keys() -> list[str]:
    """Every settable dotted key, e.g. 'model.latent_dim' (the run facts excluded)."""
    keys = []
    for section in SECTIONS:
        sub = type(getattr(RunConfig(), section))
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(sub)]
    return [k for k in keys if k not in RUN_FACTS]


def _unknown_key_error(key: str, where: str) -> ConfigError:
    """One line naming the bad key, with the closest real key when there is one."""
    return _unknown_keys_error([key], where)


def _unknown_keys_error(keys: list[str], where: str) -> ConfigError:
    """One line naming every bad key, each with the closest real key when there is one."""
    return ConfigError("; ".join(f"unknown config key '{key}' in {where}{_key_hint(key)}" for key in keys)
                       + "; keys are the fields of [data], [model], [train] (see vaelab config --show)")


def _key_hint(key: str) -> str:
    """' (did you mean 'model.latent_dim'?)' for a misspelt key, else ''."""
    keys = known_keys()
    by_flag = {f.flag.lstrip("-"): f.key for f in TRAIN_FLAGS}
    name = key.rpartition(".")[2]
    # Users often write the flag's spelling (latent-dim, kl-warmup) or forget the table.
    guess = by_flag.get(name) or by_flag.get(name.replace("_", "-"))
    if guess is None:
        close = difflib.get_close_matches(key.replace("-", "_"), keys, n=1, cutoff=0.75)
        close = close or [k for k in keys if k.endswith("." + name.replace("-", "_"))]
        guess = close[0] if close else None
    return f" (did you mean '{guess}'?)" if guess else ""


def read_config_file(path: str) -> dict[str, Any]:
    """A TOML or JSON config file -> {dotted key: value}. Sections [data] [model] [train] nest.

    Unknown keys are refused here, naming the file; values are checked with everything else
    when the config is built (see `build_config`).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text()
        if p.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10: the same parser as the `tomli` package
                import tomli as tomllib

            raw = tomllib.loads(text)
        else:
            raw = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - tomllib and json raise different types; report both alike
        kind = "TOML" if p.suffix.lower() == ".toml" else "JSON"
        raise ConfigError(f"cannot parse {p} as {kind}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must hold a table/object of settings")
    flat = _flatten(upgrade_raw(raw))  # an older file in today's layout (see config.upgrade_raw)
    version = flat.get("version", CONFIG_VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > CONFIG_VERSION:
        raise ConfigError(f"{p} has config version {version}, newer than this vaelab understands "
                          f"({CONFIG_VERSION}); upgrade vaelab to use it")
    for key in RUN_FACTS:
        flat.pop(key, None)
    allowed = set(known_keys())
    unknown = [key for key in flat if key not in allowed]
    if unknown:  # every unknown key at once, in one line
        raise _unknown_keys_error(unknown, str(p))
    return flat


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        if not name or section not in SECTIONS:
            raise _unknown_key_error(key, "the settings")
        nested.setdefault(section, {})[name] = value
    return nested


def with_dataset_defaults(flat: dict[str, Any]) -> dict[str, Any]:
    """`flat` settings over the defaults of the dataset kind they name (`presets.DATASET_DEFAULTS`).

    A default `model.gaussian_variance` is only taken for the Gaussian likelihood and without an
    explicit `model.gaussian_std` (a std given is a fixed std)."""
    dataset = flat.get("data.dataset", DataConfig().dataset)
    defaults = dataset_defaults(dataset, flat.get("data.dimensions", DataConfig().dimensions))
    if flat.get("model.likelihood", defaults.get("model.likelihood")) != "gaussian" or "model.gaussian_std" in flat:
        defaults.pop("model.gaussian_variance", None)
    return {**defaults, **flat}


def build_config(preset: Optional[str], config_file: Optional[str], overrides: dict[str, Any]) -> RunConfig:
    """Defaults < the dataset kind's defaults < preset < config file < flags -> a validated RunConfig.

    Two rules tie the schedule keys of the layers together: piecewise segments (`lr_segments`)
    given in a layer above the one choosing `lr_schedule` select `piecewise`, and a layer that
    chooses another `lr_schedule` drops the segments of the layers below it (`--preset
    iwae-paper-vae --lr-schedule cosine` trains with a cosine, not the preset's segments).
    """
    layers: list[dict[str, Any]] = []
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}'; choose from {', '.join(PRESETS)}")
        layers.append(dict(PRESETS[preset]))
    from_file = read_config_file(config_file) if config_file is not None else None
    if from_file is not None:
        layers.append(from_file)
    layers.append(dict(overrides))
    merged = _merge_schedule_layers(layers)
    without_file = _merge_schedule_layers([layer for layer in layers if layer is not from_file])
    merged, without_file = with_dataset_defaults(merged), with_dataset_defaults(without_file)
    try:
        return RunConfig.from_dict(_nest(merged))
    except ConfigError as exc:
        if config_file is None or not _builds(without_file):
            raise
        # The same settings without the file are fine, so the file holds the bad value: say so.
        raise ConfigError(f"{exc} (in {config_file})") from None


def _merge_schedule_layers(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the layers (lowest first) with the schedule rules of `build_config`.

    Piecewise segments are written for a number of epochs: a later layer that only changes the
    epochs stretches them, keeping the shape (the IWAE presets' 3280 passes -> --epochs E).
    """
    merged: dict[str, Any] = {}
    segments_layer = schedule_layer = -1
    segments_epochs = None  # the epochs the segments were written for
    for index, layer in enumerate(layers):
        merged.update(layer)
        if "train.lr_schedule" in layer:
            schedule_layer = index
        if "train.lr_segments" in layer:
            segments_layer = index
            segments_epochs = merged.get("train.epochs", TrainConfig().epochs)
    if segments_layer > schedule_layer and merged.get("train.lr_segments"):
        merged["train.lr_schedule"] = "piecewise"
    elif schedule_layer > segments_layer and merged.get("train.lr_schedule") != "piecewise":
        merged.pop("train.lr_segments", None)
        segments_epochs = None
    segments, epochs = merged.get("train.lr_segments"), merged.get("train.epochs", TrainConfig().epochs)
    if segments and segments_epochs and isinstance(epochs, (int, float)) and epochs != segments_epochs:
        scale = epochs / segments_epochs
        merged["train.lr_segments"] = [[length * scale, mult] for length, mult in segments]
    return merged


def _builds(flat: dict[str, Any]) -> bool:
    try:
        RunConfig.from_dict(_nest(flat))
    except ConfigError:
        return False
    return True


def to_toml(cfg: RunConfig) -> str:
    """The settable part of `cfg` as a TOML config file ([data], [model], [train] tables).

    TOML has no null: unset optional values are written as comments, which read back as unset.
    """
    lines: list[str] = [f"# vaelab config (version {CONFIG_VERSION}); use with: vaelab train --config FILE"]
    settings = cfg.to_dict()
    allowed = set(known_keys())
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for name, value in settings[section].items():
            if f"{section}.{name}" not in allowed:
                continue
            if value is None:
                lines.append(f"# {name} = (unset)")
            else:
                lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write the non-finite number {value!r} to a config")
        return repr(value)  # Python's shortest round-trip form (e.g. 1e-08) is valid TOML
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string literal is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # a nested settings table, written inline
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")
