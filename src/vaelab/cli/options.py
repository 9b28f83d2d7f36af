"""The table of training flags: each `--flag` is one dotted config key (also its TOML key).

Precedence, lowest first: dataclass defaults < `--preset` < `--config FILE` < explicit flags.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from vaelab.config import RunConfig
from vaelab.errors import ConfigError
from vaelab.presets import PRESETS


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def float_pair(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers, got '{text}'") from None
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers, got '{text}'")
    return values


@dataclass(frozen=True)
class Flag:
    flag: str
    key: str  # dotted config key, e.g. "model.latent_dim"
    type: Optional[Callable[[str], Any]] = None
    help: str = ""
    choices: Optional[tuple[str, ...]] = None
    is_switch: bool = False  # a boolean flag with a --no- form


TRAIN_FLAGS: tuple[Flag, ...] = (
    Flag("--dataset", "data.dataset", str, "digits (offline default), mnist, fashion-mnist, folder, npz",
         ("digits", "mnist", "fashion-mnist", "folder", "npz")),
    Flag("--data-dir", "data.data_dir", str, "folder with the IDX files (mnist) or the images (folder)"),
    Flag("--data-path", "data.data_path", str, "the .npz file (npz)"),
    Flag("--image-size", "data.image_size", int, "folder: resize images to S×S (default 28)"),
    Flag("--channels", "data.channels", int, "folder: 1 (grey, default) or 3 (RGB)"),
    Flag("--binarize", "data.binarize", str, "none (grey values), dynamic (resampled each use), static",
         ("none", "dynamic", "static")),
    Flag("--val-fraction", "data.val_fraction", float, "share of the training images held out (default 0.1)"),
    Flag("--split-seed", "data.split_seed", int, "seed of the train/validation split"),
    Flag("--arch", "model.arch", str, "mlp (the paper's) or conv", ("mlp", "conv")),
    Flag("--latent-dim", "model.latent_dim", int, "latent dimensions (default 2)"),
    Flag("--hidden", "model.hidden", int_list, "mlp layer widths / conv channels, e.g. 512,256"),
    Flag("--activation", "model.activation", str, "relu, tanh, elu, gelu", ("relu", "tanh", "elu", "gelu")),
    Flag("--likelihood", "model.likelihood", str, "gaussian (the paper's MSE) or bernoulli (BCE on logits)",
         ("gaussian", "bernoulli")),
    Flag("--gaussian-std", "model.gaussian_std", float, "std of the gaussian likelihood (default 1/sqrt(2))"),
    Flag("--conditional", "model.conditional", None, "condition encoder and decoder on the label", is_switch=True),
    Flag("--epochs", "train.epochs", int, "passes over the training split"),
    Flag("--batch-size", "train.batch_size", int, "images per step (default 128)"),
    Flag("--lr", "train.lr", float, "Adam learning rate (default 1e-3)"),
    Flag("--adam-betas", "train.adam_betas", float_pair, "Adam betas, e.g. 0.9,0.999"),
    Flag("--adam-eps", "train.adam_eps", float, "Adam epsilon"),
    Flag("--seed", "train.seed", int, "random seed (same seed on CPU -> same weights)"),
    Flag("--beta", "train.beta", float, "weight of the KL term (default 1)"),
    Flag("--kl-warmup", "train.kl_warmup_epochs", float, "ramp the KL weight from 0 over this many epochs"),
    Flag("--objective", "train.objective", str, "elbo (default) or iwae", ("elbo", "iwae")),
    Flag("--iw-samples-train", "train.iw_samples_train", int, "importance samples K for --objective iwae"),
    Flag("--grad-clip", "train.grad_clip", float, "clip the global gradient norm (0 = off)"),
    Flag("--checkpoint-every", "train.checkpoint_every", int, "also checkpoint every N steps (0 = epoch ends)"),
    Flag("--device", "train.device", str, "auto, cpu or cuda", ("auto", "cpu", "cuda")),
    Flag("--precision", "train.precision", str, "fp32 (default) or bf16 autocast", ("fp32", "bf16")),
    Flag("--compile", "train.compile", None, "torch.compile the model (falls back to eager)", is_switch=True),
    Flag("--threads", "train.threads", int, "CPU threads (0 = PyTorch's default)"),
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
            group.add_argument(f.flag, dest=dest, type=f.type, choices=f.choices, default=argparse.SUPPRESS,
                               help=f.help, metavar=None if f.choices else f.flag.strip("-").upper().replace("-", "_"))


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The explicitly given flags as {dotted key: value}."""
    return {k[5:].replace("__", "."): v for k, v in vars(args).items() if k.startswith("cfg__")}


def _flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_config_file(path: str) -> dict[str, Any]:
    """A TOML or JSON config file -> {dotted key: value}. Sections [data] [model] [train] nest."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            raw = tomllib.loads(p.read_text())
        else:
            raw = json.loads(p.read_text())
    except Exception as exc:  # noqa: BLE001 - tomllib and json raise different types; report both alike
        raise ConfigError(f"cannot parse {p}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must hold a table/object of settings")
    flat = _flatten(raw)
    # A saved run config carries these; they are not settings to carry over.
    for key in ("version", "vaelab_version", "model.image_shape", "model.num_classes"):
        flat.pop(key, None)
    return flat


def build_config(preset: Optional[str], config_file: Optional[str], overrides: dict[str, Any]) -> RunConfig:
    """Defaults < preset < config file < flags -> a validated RunConfig."""
    merged: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}'; choose from {', '.join(PRESETS)}")
        merged.update(PRESETS[preset])
    if config_file is not None:
        merged.update(read_config_file(config_file))
    preset_epochs = merged.get("train.epochs")
    merged.update(overrides)
    # A preset's learning-rate schedule is stretched to a changed number of epochs.
    schedule = merged.get("train.lr_schedule")
    if schedule and "train.lr_schedule" not in overrides and "train.epochs" in overrides and preset_epochs:
        scale = overrides["train.epochs"] / preset_epochs
        merged["train.lr_schedule"] = [[length * scale, mult] for length, mult in schedule]
    nested: dict[str, Any] = {}
    for key, value in merged.items():
        section, _, name = key.partition(".")
        if not name:
            raise ConfigError(f"unknown config key '{key}'")
        if section not in ("data", "model", "train"):
            raise ConfigError(f"unknown config section '{section}' in key '{key}'")
        nested.setdefault(section, {})[name] = value
    return RunConfig.from_dict(nested)
