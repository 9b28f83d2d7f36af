"""`vaelab eval RUN`: likelihood bound, ELBO, bits/dim, PSNR/SSIM, active units, FID and reconstruction accuracy.

Prints a short table (or JSON with --json) and writes RUN/eval.json. The protocol is in
`vaelab.evaluate` (likelihoods) and `vaelab.fid` (FID). An image-to-image run (--task translate)
is evaluated by `vaelab.translate.evaluate` instead (PSNR/SSIM against baselines, calibration,
GED): `EVALUATIONS` maps each model family to its evaluation.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from vaelab.config import DEFAULT_IW_SAMPLES, MAX_IW_SAMPLES
from vaelab.errors import ConfigError, RunError

EVAL_FILE = "eval.json"
WEIGHTS_FILE = "model.safetensors"  # vaelab.checkpoint.WEIGHTS_FILE (not imported: it imports torch)
# translate runs (vaelab/translate/evaluate.py; here so `vaelab eval --help` needs no torch)
TRANSLATE_SAMPLES, TRANSLATE_IW_SAMPLES = 8, 100
TRANSLATE_FLAGS = ("samples", "targets", "inputs", "max_images")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommand(s) to the `vaelab` parser."""
    p = sub.add_parser("eval", help="evaluate a trained run: L_K likelihood bound, ELBO, bits/dim, PSNR/SSIM, "
                                    "active units, FID",
                       description="Evaluate RUN over a whole split and write RUN/eval.json.")
    p.add_argument("run", metavar="RUN", help="a run folder written by vaelab train")
    p.add_argument("--split", default="test", help="test (default) or val")
    p.add_argument("--iw-samples", metavar="K",
                   help=f"importance samples K of the bound L_K (default {DEFAULT_IW_SAMPLES}, the standard; "
                        f"{TRANSLATE_IW_SAMPLES} for translate runs)")
    p.add_argument("--batch-size", default="100", metavar="B", help="images per batch (default 100)")
    p.add_argument("--no-fid", action="store_true", help="skip the classifier: no FID or reconstruction accuracy")
    p.add_argument("--data-dir", help="where the dataset is now, if it moved since training")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="decoder precision for the bounds: auto (default) = bf16 where the hardware computes it "
                        "natively (within 0.05 nats of fp32, tested), else fp32; the result records which ran")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    g = p.add_argument_group("image-to-image runs (--task translate): PSNR/SSIM against baselines, calibration, GED")
    g.add_argument("--samples", metavar="K", help=f"samples per input (default {TRANSLATE_SAMPLES})")
    g.add_argument("--targets", nargs="+", metavar="DIR",
                   help="folders of targets (one per annotator), matched to the inputs by relative path: the "
                        "generalised energy distance against several targets per input")
    g.add_argument("--inputs", metavar="DIR", help="evaluate the images of DIR (with --targets) instead of a split")
    g.add_argument("--max-images", metavar="N", help="only the first N inputs")
    p.set_defaults(func=run_eval)


def _positive_int(text: str, flag: str, upper: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{flag} must be a whole number, got '{text}'") from None
    if not 1 <= value <= upper:
        raise ConfigError(f"{flag} must be between 1 and {upper}, got {value}")
    return value


def run_eval(args: argparse.Namespace) -> int:
    """Carry out `vaelab eval` with the parsed `args`; return the exit code."""
    for flag, text, upper in (("--iw-samples", args.iw_samples, MAX_IW_SAMPLES), ("--samples", args.samples, 1000),
                              ("--max-images", args.max_images, 10**9)):
        if text is not None:
            _positive_int(text, flag, upper)  # checked before anything is loaded; used per model family
    batch_size = _positive_int(args.batch_size, "--batch-size", 100_000)
    if args.split not in ("test", "val"):
        raise ConfigError(f"--split must be test or val, got '{args.split}'")
    if args.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got '{args.device}'")
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise RunError(f"run folder not found: {run_dir}")

    import vaelab
    from vaelab.models import family_of
    from vaelab.runlock import file_stamp, run_lock
    from vaelab.training import pick_device

    device = pick_device(args.device)
    weights_before = file_stamp(run_dir / WEIGHTS_FILE)
    model = vaelab.load(run_dir, device=device)
    # The model family's evaluation checks every input and loads the data; it returns the step to run.
    evaluate = EVALUATIONS[family_of(model)](model, run_dir, args, batch_size)
    # Every input has been checked: take the run's one-writer lock for the evaluation and eval.json.
    with run_lock(run_dir, "vaelab eval"):
        if file_stamp(run_dir / WEIGHTS_FILE) != weights_before:  # a run finished between load and lock
            model = vaelab.load(run_dir, device=device)
        started = time.perf_counter()
        result, formatter = evaluate(model)
        result["seconds"] = round(time.perf_counter() - started, 2)
        result["run"] = str(run_dir)
        print(json.dumps(result, indent=2) if args.json else formatter(result))
        try:
            from vaelab.checkpoint import atomic_write_text

            atomic_write_text(run_dir / EVAL_FILE, json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            raise RunError(f"cannot write {run_dir / EVAL_FILE}: {exc.strerror or exc}") from None
    if not args.json and not args.quiet:
        print(f"wrote {run_dir / EVAL_FILE}")
    return 0


def _prepare_vae(model, run_dir: Path, args: argparse.Namespace, batch_size: int):
    """A VAE run: the likelihood bound, ELBO, active units, FID and reconstruction accuracy."""
    given = [f"--{name.replace('_', '-')}" for name in TRANSLATE_FLAGS if getattr(args, name) is not None]
    if given:
        raise ConfigError(f"{given[0]} is for image-to-image (--task translate) runs")
    iw_samples = _positive_int(args.iw_samples or str(DEFAULT_IW_SAMPLES), "--iw-samples", MAX_IW_SAMPLES)
    from vaelab.data import load_data
    from vaelab.data.base import apply_static_binarization

    cfg = model.run_config
    data_cfg = replace(cfg.data, binarize="none")
    if args.data_dir:
        data_cfg = replace(data_cfg, data_dir=args.data_dir)
    grey = load_data(data_cfg)  # grey values: the classifier's input and the FID reference
    data = apply_static_binarization(grey, seed=cfg.data.split_seed) if cfg.data.binarize == "static" else grey
    if tuple(grey.image_shape) != tuple(model.image_shape):
        raise RunError(f"the data's images are {grey.image_shape}, the model expects {tuple(model.image_shape)}")
    progress = not args.quiet and not args.json

    def evaluate(model):
        from vaelab.evaluate import evaluate_model
        from vaelab.samplers import load_sampler

        if progress:
            print(f"evaluating {run_dir} on {len(data.split(args.split))} {args.split} images "
                  f"with K = {iw_samples} importance samples ...", flush=True)
        return evaluate_model(model, data, args.split, iw_samples=iw_samples, batch_size=batch_size,
                              fid=not args.no_fid, grey_data=grey, dataset_name=cfg.data.dataset,
                              progress=progress, precision=args.precision,
                              sampler=load_sampler(run_dir, model.latent_dim)), format_result

    return evaluate


def _prepare_translate(model, run_dir: Path, args: argparse.Namespace, batch_size: int):
    """An image-to-image run: PSNR/SSIM of the mean, the best sample and the baselines; calibration; GED."""
    from vaelab.data import load_data

    samples = _positive_int(args.samples or str(TRANSLATE_SAMPLES), "--samples", 1000)
    iw_samples = _positive_int(args.iw_samples or str(TRANSLATE_IW_SAMPLES), "--iw-samples", MAX_IW_SAMPLES)
    max_images = None if args.max_images is None else _positive_int(args.max_images, "--max-images", 10**9)
    if args.inputs is not None and not args.targets:
        raise ConfigError("--inputs DIR needs the targets of its images: --targets B1 [B2 ...]")
    data_cfg = replace(model.run_config.data, data_dir=args.data_dir) if args.data_dir else model.run_config.data
    data = load_data(data_cfg)
    progress = not args.quiet and not args.json

    def evaluate(model):
        from vaelab.translate.evaluate import evaluate_run, format_translation

        if progress:
            print(f"evaluating {run_dir} ({args.inputs or args.split}) with K = {samples} samples per input ...",
                  flush=True)
        return evaluate_run(model, split=args.split, data_dir=args.data_dir, num_samples=samples,
                            iw_samples=iw_samples, batch_size=batch_size, targets=args.targets, inputs=args.inputs,
                            max_images=max_images, progress=progress, data=data), format_translation

    return evaluate


# Model family -> its evaluation: (model, run, args, batch size) -> evaluate(model) -> (result, formatter).
EVALUATIONS = {"vae": _prepare_vae, "hierarchical": _prepare_vae, "translate": _prepare_translate}


def _bits_text(r: dict[str, Any]) -> str:
    """The bits/dim row: the number and whether it is exact or a bound (see vaelab.evaluate)."""
    if r["bits_per_dim"] is None:
        return f"-  ({r['bits_per_dim_note']})"
    label = {"exact": "exact", "bound": "UPPER BOUND"}[r["bits_per_dim_kind"]]
    return f"{r['bits_per_dim']:.4f} {label}: {r['bits_per_dim_note']}"


def format_result(r: dict[str, Any]) -> str:
    """The human-readable table printed by `vaelab eval`."""
    unit = "nats (density)" if r["note"] else "nats"
    rows = [
        (f"nll (-L_{r['iw_samples']})", f"{r['nll']:.3f} {unit} per image (± {r['nll_std_error']:.3f} s.e.)"),
        ("bits_per_dim", _bits_text(r)),
        ("neg_elbo", f"{r['neg_elbo']:.3f} {unit} (recon {r['recon']:.3f} + kl {r['kl']:.3f})"),
        ("psnr", f"{r['psnr']:.2f} dB (decode(E_q[z]) vs inputs, mean over images, peak 1)"),
        ("ssim", f"{r['ssim']:.4f} (Wang et al. 2004, Gaussian window sigma 1.5, mean over images)"),
        ("active_units", f"{r['active_units']} of {r['latent_dim']} (posterior-mean variance > 0.01)"),
    ]
    if r["fid"] is not None:
        rows += [
            ("fid", f"{r['fid']:.3f} ({r['fid_samples']} samples of {r['fid_sampler']} vs {r['split']} images, "
                    f"vaelab classifier features)"),
            ("recon_accuracy", f"{r['recon_accuracy']:.4f} (classifier accuracy on real {r['split']} images "
                               f"{r['classifier_accuracy']:.4f})"),
        ]
    else:
        rows.append(("fid", f"-  ({r.get('fid_skipped', 'skipped')})"))
    if r.get("fid_gmm") is not None:
        rows.append(("fid_gmm", f"{r['fid_gmm']:.3f} (the same, samples of {r['fid_gmm_sampler']})"))
    if r.get("kl_per_layer"):
        rows.append(("kl_per_layer", ", ".join(f"z{i + 1} {v:.3f}" for i, v in enumerate(r["kl_per_layer"]))
                     + " (1 = the bottom layer)"))
    if r["note"]:
        rows.append(("note", r["note"]))
    if not math.isfinite(r["nll"]):
        rows.append(("warning", "the bound is not finite; the model's weights may have diverged"))
    rows.append(("time", f"{r['seconds']:.1f} s ({r['likelihood_seconds']:.1f} s for the likelihoods)"))
    header = f"{r['split']} split: {r['num_images']} images, {r['likelihood']} likelihood, binarize={r['binarize']}"
    return "\n".join([header, *(f"  {label:<20}{value}" for label, value in rows)])
