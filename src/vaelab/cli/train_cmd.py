"""`vaelab train`, `vaelab demo` and `vaelab config`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelab.cli.options import add_train_flags, build_config, flag_overrides, to_toml
from vaelab.config import RunConfig
from vaelab.presets import PRESETS


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `train`, `demo` and `config` subcommands."""
    p = sub.add_parser("train", help="train a VAE and write a run folder",
                       description="Train a VAE. Flags override --config, which overrides --preset.")
    p.add_argument("--out", help="run folder (default runs/<dataset>-<timestamp>)")
    p.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named set-up (see the Training docs)")
    p.add_argument("--config", metavar="FILE",
                   help="a TOML or JSON config with [data] [model] [train] tables (RUN/config.json repeats RUN)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    add_train_flags(p)
    p.set_defaults(func=run_train)

    d = sub.add_parser("demo", help="train the paper's VAE on the bundled digits (offline, < 1 min)",
                       description="Train the paper's set-up (MLP, 2-D latent, MSE) on scikit-learn's bundled "
                                   "8×8 digits and write a run folder with every figure.")
    d.add_argument("--out", help="run folder (default runs/demo-<timestamp>)")
    d.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    d.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"passes over the data (default {DEMO_EPOCHS})")
    d.add_argument("--quiet", action="store_true", help="no progress output")
    d.set_defaults(func=run_demo)

    c = sub.add_parser("config", help="print the default (or a preset's / file's) configuration",
                       description="Print the configuration `vaelab train` would use with the same options: "
                                   "`vaelab config --show --format toml > exp.toml` starts a config file.")
    c.add_argument("--show", action="store_true", help="print the resolved config (the default action)")
    c.add_argument("--format", choices=("json", "toml"), default="json",
                   help="json (the config.json layout, default) or toml (a file for --config)")
    c.add_argument("--preset", choices=sorted(PRESETS), help="start from a named set-up (as vaelab train --preset)")
    c.add_argument("--config", metavar="FILE", help="a TOML or JSON config file to resolve (as vaelab train --config)")
    add_train_flags(c)
    c.set_defaults(func=run_config)


DEMO_EPOCHS = 60
DEMO_GAUSSIAN_STD = 0.15


def run_train(args: argparse.Namespace) -> int:
    """`vaelab train`: build the config (defaults < preset < file < flags), train or resume, summarise."""
    from vaelab.runtime import flush_denormals

    # On before torch starts worker threads (they inherit it, see vaelab.runtime); off again when
    # the command ends, also on an error, so an in-process caller of main() keeps IEEE subnormals.
    with flush_denormals():
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from vaelab.training import resume, train

    # train() and resume() check every input (config, optional packages, data, the run folder and
    # its lock) before they write anything.
    if args.resume:
        overrides = flag_overrides(args)
        unexpected = sorted(set(overrides) - {"train.epochs"})
        if unexpected or args.preset or args.config:
            raise_config("--resume continues a run as configured; only --epochs may be given with it")
        run_dir = resume(args.resume, progress=not args.quiet, epochs=overrides.get("train.epochs"))
    else:
        cfg = build_config(args.preset, args.config, flag_overrides(args))
        run_dir = train(cfg, args.out, force=args.force, progress=not args.quiet)
    from vaelab.distributed import is_main_process

    if is_main_process():  # under torchrun, rank 0 reports for all
        _print_summary(run_dir)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """`vaelab demo`: the paper's set-up on the bundled digits, with a stronger reconstruction weight."""
    from vaelab.runs import default_run_dir
    from vaelab.runtime import flush_denormals
    from vaelab.training import train

    cfg = build_config(None, None, {
        "data.dataset": "digits", "model.arch": "mlp", "model.latent_dim": 2, "model.likelihood": "gaussian",
        "model.hidden": [256, 128], "train.epochs": args.epochs, "train.batch_size": 64,
        # 64 pixels give a summed MSE too weak against the KL (the posterior collapses); a smaller
        # gaussian std weights the MSE by 1/(2·0.15²) ≈ 22, which keeps the 2-D latent in use.
        "model.gaussian_std": DEMO_GAUSSIAN_STD,
    })
    out = args.out or default_run_dir("demo")
    with flush_denormals():  # before torch starts worker threads, off again after (see run_train)
        run_dir = train(cfg, out, force=args.force, progress=not args.quiet)
    _print_summary(run_dir)
    return 0


def run_config(args: argparse.Namespace) -> int:
    """`vaelab config --show`: print the resolved config as JSON or as a TOML config file."""
    cfg = build_config(args.preset, args.config, flag_overrides(args))
    print(to_toml(cfg) if args.format == "toml" else cfg.to_json(), end="" if args.format == "toml" else "\n")
    return 0


def raise_config(message: str) -> None:
    """Raise `ConfigError(message)` (imported late: the CLI's start-up stays light)."""
    from vaelab.errors import ConfigError

    raise ConfigError(message)


def _print_summary(run_dir: Path) -> None:
    from vaelab.runs import read_metrics

    metrics = read_metrics(Path(run_dir) / "metrics.jsonl")
    last = metrics[-1] if metrics else {}
    cfg = RunConfig.load(Path(run_dir) / "config.json")
    print(f"run folder: {run_dir}")
    if last:
        stopped = (f" (early stopping: {cfg.train.early_stopping} epochs without a better validation loss)"
                   if cfg.train.early_stopping and last["epoch"] < cfg.train.epochs else "")
        print(f"final validation loss: {last['val_loss']:.4f} nats/image "
              f"(recon {last['val_recon']:.4f}, kl {last['val_kl']:.4f}; {cfg.model.likelihood} likelihood) "
              f"after {last['epoch']} epochs{stopped}")
        best = next((r for r in metrics if r["epoch"] == last.get("best_epoch")), None)
        if cfg.train.keep == "best" and best is not None:
            print(f"model.safetensors holds epoch {best['epoch']}, the best: validation loss {best['val_loss']:.4f}")
    if cfg.weights == "ema":
        print(f"model.safetensors holds the moving average of the weights (decay {cfg.train.ema_decay})")
    print(f"figures: {Path(run_dir) / 'figures'}")
