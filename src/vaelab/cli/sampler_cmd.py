"""`vaelab fit-sampler RUN --gmm K`: fit a Gaussian mixture to the training codes of a run.

Encodes the run's training split (posterior means, binarised as in training), fits a K-component
Gaussian mixture (Ghosh et al. 2020; see `vaelab.samplers`) and writes RUN/sampler.safetensors and
RUN/sampler.json. `vaelab sample RUN --sampler gmm` then draws from it, and `vaelab eval` reports
the FID of its samples as `fid_gmm`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from vaelab.errors import ConfigError, DataError, RunError


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand(s) to the `vaelab` parser."""
    p = sub.add_parser("fit-sampler", help="fit a Gaussian mixture to a run's training codes (vaelab sample "
                                           "--sampler gmm)",
                       description="Fit a K-component Gaussian mixture to the posterior means of the run's "
                                   "training images (Ghosh et al. 2020) and save it in the run folder as "
                                   "sampler.safetensors + sampler.json (no pickle).")
    p.add_argument("run", metavar="RUN", help="a run folder written by vaelab train")
    p.add_argument("--gmm", type=int, required=True, metavar="K", help="number of mixture components (the paper: 10)")
    p.add_argument("--covariance", choices=("full", "diag"), default="full",
                   help="full (default) or diagonal covariance per component")
    p.add_argument("--max-images", type=int, metavar="N", help="fit to a seeded subset of N training images "
                                                                 "(default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset, the binarisation and EM's start")
    p.add_argument("--data-dir", metavar="DIR", help="where the run's dataset is now, if it moved")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="default cpu")
    p.set_defaults(func=run_fit_sampler)


def run_fit_sampler(args: argparse.Namespace) -> int:
    """Carry out `vaelab fit-sampler` with the parsed `args`; return the exit code."""
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise RunError(f"run folder not found: {run_dir}")
    if args.gmm < 1:
        raise ConfigError(f"--gmm must be at least 1, got {args.gmm}")
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images must be at least 1, got {args.max_images}")
    if not 0 <= args.seed < 2**63:
        raise ConfigError(f"--seed must be in 0..2**63-1, got {args.seed}")

    from vaelab.data import load_data
    from vaelab.runlock import run_lock
    from vaelab.runs import load
    from vaelab.samplers import SAMPLER_META, SAMPLER_WEIGHTS, fit_gmm, training_codes
    from vaelab.training import pick_device

    model = load(run_dir, pick_device(args.device))
    cfg = model.run_config
    data_cfg = dataclasses.replace(cfg.data)
    if args.data_dir:
        if data_cfg.dataset == "npz":
            data_cfg.data_path = args.data_dir
        else:
            data_cfg.data_dir = args.data_dir
    try:
        data = load_data(data_cfg)  # as in training: a static binarisation is applied here
    except DataError as exc:
        raise DataError(f"{exc} (fit-sampler encodes the run's training images; give their location with "
                        f"--data-dir)") from None
    codes = training_codes(model, data, dynamic_binarize=cfg.data.binarize == "dynamic",
                           max_images=args.max_images, seed=args.seed)
    sampler = fit_gmm(codes, args.gmm, args.covariance, seed=args.seed)
    sampler.meta["images"] = int(codes.shape[0])
    # Every input has been checked: the run's one-writer lock for the write (vaelab.runlock).
    with run_lock(run_dir, "vaelab fit-sampler"):
        try:
            sampler.save(run_dir)
        except OSError as exc:
            raise RunError(f"cannot write the sampler into {run_dir}: {exc.strerror or exc}") from None
    meta = sampler.meta
    print(f"fitted {args.gmm} {args.covariance}-covariance components to {meta['num_codes']} training codes "
          f"(mean log-likelihood {meta['mean_log_likelihood']:.3f} per code, "
          f"{'converged' if meta['converged'] else 'not converged'} after {meta['iterations']} EM steps)")
    print(f"wrote {run_dir / SAMPLER_WEIGHTS} and {run_dir / SAMPLER_META}; sample it with "
          f"vaelab sample {run_dir} --sampler gmm")
    return 0
