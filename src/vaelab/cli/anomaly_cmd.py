"""`vaelab anomaly RUN`: score images for anomaly, with every score, its baselines and its uncertainty.

Scores a split of the run's dataset (default test) or image files (--images) against the normal
training images, and writes DIR/scores.csv, DIR/anomaly.json, DIR/roc.png (with labels) and
DIR/maps/ (default DIR = RUN/anomaly). The work is `vaelab.anomaly.analyse`; this module turns
flags and files into its arguments and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Optional

from vaelab.cli.options import int_list
from vaelab.errors import ConfigError, DataError, RunError

DEFAULT_DIR = "anomaly"
SPLITS = ("test", "val", "train")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `anomaly` subcommand."""
    from vaelab.anomaly.names import DEFAULT_BOOTSTRAP, DEFAULT_IW_SAMPLES, DEFAULT_MAPS, SCORE_NAMES

    p = sub.add_parser(
        "anomaly", help="anomaly scores, baselines, AUROC with intervals, and anomaly maps",
        description="Score the images of a split (or --images files) for anomaly against the run's normal "
                    "training images: every VAE score and two baselines that need no model, detection "
                    "metrics with bootstrap intervals when the normal classes are known, and per-pixel maps. "
                    "Writes DIR/scores.csv, DIR/anomaly.json, DIR/roc.png and DIR/maps/.")
    p.add_argument("run", metavar="RUN", help="a run folder written by vaelab train (e.g. with --train-classes)")
    p.add_argument("--split", default="test", help="the split to score: test (default), val or train")
    p.add_argument("--normal-classes", type=int_list, metavar="K[,K...]",
                   help="the classes that are normal (every other class is an anomaly); default: the run's "
                        "--train-classes, if any. Needs a labelled split")
    p.add_argument("--images", nargs="+", metavar="FILE",
                   help="score these image files instead of a split (converted to the model's size and channels)")
    p.add_argument("--masks", metavar="DIR",
                   help="ground-truth masks of the --images files, matched by name (a.png -> DIR/a.png or "
                        "DIR/a_mask.png; non-zero = anomalous): adds pixel AUROC and the best Dice")
    p.add_argument("--iw-samples", type=int, default=DEFAULT_IW_SAMPLES, metavar="K",
                   help=f"importance samples K of nll = -L_K (default {DEFAULT_IW_SAMPLES})")
    p.add_argument("--out", metavar="DIR", help=f"output folder (default RUN/{DEFAULT_DIR}; replaced on a rerun)")
    p.add_argument("--maps", type=int, default=DEFAULT_MAPS, metavar="N",
                   help=f"draw anomaly maps of the N most anomalous split images (default {DEFAULT_MAPS}; "
                        "every --images file gets one)")
    p.add_argument("--rank-by", default="nll", choices=SCORE_NAMES, metavar="SCORE",
                   help="the score that ranks 'most anomalous' for --maps (default nll)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="B",
                   help=f"bootstrap resamples of each AUROC's 95%% interval (default {DEFAULT_BOOTSTRAP}; 0 = none)")
    p.add_argument("--reference-size", type=int, default=0, metavar="N",
                   help="use a seeded subset of N normal training images as the reference (default 0: all)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the posterior draws and the bootstrap")
    p.add_argument("--batch-size", type=int, default=250, metavar="B", help="images per batch (default 250)")
    p.add_argument("--data-dir", help="where the run's dataset is now, if it moved since training")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto (default), cpu or cuda")
    p.add_argument("--json", action="store_true", help="print anomaly.json instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run_anomaly)


def _check_flags(args: argparse.Namespace) -> None:
    """Every flag checked before anything is loaded or written."""
    if args.split not in SPLITS:
        raise ConfigError(f"--split must be test, val or train, got '{args.split}'")
    for flag, value, low, high in (("--iw-samples", args.iw_samples, 1, 100_000), ("--maps", args.maps, 0, 10_000),
                                   ("--bootstrap", args.bootstrap, 0, 1_000_000),
                                   ("--reference-size", args.reference_size, 0, 10**9),
                                   ("--batch-size", args.batch_size, 1, 100_000), ("--seed", args.seed, 0, 2**63 - 1)):
        if not low <= value <= high:
            raise ConfigError(f"{flag} must be between {low} and {high}, got {value}")
    if args.images and args.normal_classes:
        raise ConfigError("--normal-classes needs labelled images; --images files have no labels "
                          "(score a split of the run's dataset to measure detection)")
    if args.masks and not args.images:
        raise ConfigError("--masks are matched by name to --images files; give the images with --images")
    for path in args.images or ():
        if not Path(path).is_file():
            raise DataError(f"image file not found: {path}")
    if args.masks and not Path(args.masks).is_dir():
        raise DataError(f"mask folder not found: {args.masks}")
    names = [Path(p).stem for p in args.images or ()]
    if len(set(names)) != len(names):
        raise ConfigError("--images files must have distinct names (their maps and masks are matched by name)")
    if args.normal_classes and (len(set(args.normal_classes)) != len(args.normal_classes)
                                or min(args.normal_classes) < 0):
        raise ConfigError(f"--normal-classes must be distinct labels >= 0, got {args.normal_classes}")


def _load_data(cfg, data_dir: Optional[str]):
    from vaelab.data import load_data

    data_cfg = dataclasses.replace(cfg.data)
    if data_dir:  # the run's dataset moved: point at its new place
        if data_cfg.dataset == "npz":
            data_cfg.data_path = data_dir
        else:
            data_cfg.data_dir = data_dir
    try:
        return load_data(data_cfg)
    except DataError as exc:
        raise DataError(f"{exc} (vaelab anomaly needs the run's dataset: the normal training images are the "
                        "reference; give its location with --data-dir)") from None


def _normal_classes(args: argparse.Namespace, cfg, data, split) -> Optional[list[int]]:
    """--normal-classes, else the run's --train-classes (for a labelled split); checked against the data."""
    classes = args.normal_classes
    if classes is None and not args.images and split.labels is not None and cfg.data.train_classes:
        classes = list(cfg.data.train_classes)
    if classes is None:
        return None
    if split.labels is None:
        raise DataError(f"--normal-classes needs labels; the {args.split} split of {data.name} has none")
    unknown = [c for c in classes if not 0 <= c < max(data.num_classes, 1)]
    if unknown:
        raise DataError(f"--normal-classes: {data.name} has no class {unknown[0]} (classes 0..{data.num_classes - 1})")
    return sorted(classes)


def _reference_images(args: argparse.Namespace, data, normal: Optional[list[int]]):
    """The normal training images (the run's training split, restricted to the normal classes, a
    seeded subset with --reference-size), how many there were before subsampling, and for each
    training image its row in the reference (-1: not in it), so that scoring the training split
    leaves each image out of its own nearest-neighbour search."""
    import torch

    labels = data.train.labels
    rows = torch.arange(len(data.train))
    if normal is not None:
        rows = torch.isin(labels, torch.tensor(normal)).nonzero().squeeze(1)
        if len(rows) == 0:
            raise DataError(f"the training split has no image of the normal classes {','.join(map(str, normal))}")
    available = len(rows)
    if args.reference_size and args.reference_size < available:
        pick = torch.randperm(available, generator=torch.Generator().manual_seed(args.seed))[:args.reference_size]
        rows = rows[pick.sort().values]
    position = torch.full((len(data.train),), -1, dtype=torch.int64)
    position[rows] = torch.arange(len(rows))
    return data.train.images.index_select(0, rows), available, position


def _load_files(model, paths: list[str]):
    """Image files -> uint8 (N, C, H, W) at the model's size and channels."""
    import numpy as np
    import torch

    from vaelab.data.images import load_image

    c, h, w = model.image_shape if len(model.image_shape) == 3 else (None, None, None)
    if c is None or h != w:
        raise DataError(f"image files can only be scored by models of square 2-D images; this one takes "
                        f"{tuple(model.image_shape)}")
    return torch.from_numpy(np.stack([load_image(p, h, c) for p in paths]))


def _load_masks(args: argparse.Namespace, model) -> dict[int, Any]:
    from vaelab.anomaly.maps import find_masks, load_mask

    found = find_masks(args.masks, args.images)
    if not found:
        raise DataError(f"no mask in {args.masks} matches an --images file by name (a.png -> a.png or a_mask.png)")
    spatial = tuple(model.image_shape[1:])
    return {i: load_mask(found[p], spatial) for i, p in enumerate(args.images) if p in found}


def run_anomaly(args: argparse.Namespace) -> int:
    """Carry out `vaelab anomaly` with the parsed `args`; return the exit code."""
    _check_flags(args)
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise RunError(f"run folder not found: {run_dir}")
    out = Path(args.out) if args.out else run_dir / DEFAULT_DIR

    import torch

    import vaelab
    from vaelab import __version__
    from vaelab.anomaly.analysis import AnomalyOptions, analyse, write_analysis
    from vaelab.anomaly.report import files_table, metrics_table, prepare_output_dir
    from vaelab.anomaly.scores import complexity_note
    from vaelab.training import pick_device

    model = vaelab.load(run_dir, device=pick_device(args.device))
    if model.conditional:
        raise ConfigError(f"{run_dir} is a conditional model; anomaly scores need an unconditional one (a "
                          "conditional VAE needs the label of an image it has never seen)")
    cfg = model.run_config
    data = _load_data(cfg, args.data_dir)
    if tuple(data.image_shape) != tuple(model.image_shape):
        raise RunError(f"the data's images are {data.image_shape}, the model expects {tuple(model.image_shape)}")
    split = data.split(args.split)
    normal = _normal_classes(args, cfg, data, split)
    reference, available, position = _reference_images(args, data, normal)
    masks = _load_masks(args, model) if args.masks else None
    if args.images:
        images, labels, ids, id_column = _load_files(model, args.images), None, list(args.images), "file"
    else:
        images, labels, ids, id_column = split.images, split.labels, list(range(len(split))), "index"
    if normal is not None:
        anomalous = ~torch.isin(labels, torch.tensor(normal))
        if anomalous.all() or not anomalous.any():
            if args.normal_classes is None:  # only defaulted from --train-classes: score without metrics
                normal = None
            else:
                kind = "normal" if anomalous.all() else "anomalous"
                raise DataError(f"the {args.split} split has no {kind} image with normal classes "
                                f"{','.join(map(str, normal))}: detection cannot be measured")
    options = AnomalyOptions(iw_samples=args.iw_samples, batch_size=args.batch_size, seed=args.seed,
                             bootstrap=args.bootstrap, maps=args.maps, rank_by=args.rank_by)
    progress = not args.quiet and not args.json
    what = f"{len(images)} image file(s)" if args.images else f"{len(images)} {args.split} images"
    if progress:
        classes = f" (normal classes {','.join(map(str, normal))})" if normal is not None else ""
        print(f"scoring {what}{classes} against {len(reference)} normal training images, K = {args.iw_samples} ...",
              flush=True)
    started = time.perf_counter()
    from vaelab.runlock import run_lock_for_output

    # Every input checked above; writing inside RUN takes the run folder's lock (vaelab.runlock):
    # a second writer (a training, another analysis) is refused before anything changes.
    with run_lock_for_output(run_dir, out, "vaelab anomaly"):
        prepare_output_dir(out)  # before the work: a folder we may not write into fails fast
        result = analyse(model, images, reference, labels=None if labels is None else labels.numpy(),
                         normal_classes=normal, ids=ids, id_column=id_column, masks=masks, options=options,
                         exclude=position if args.split == "train" and not args.images else None,
                         progress=progress)
        info = {"run": str(run_dir), "split": None if args.images else args.split, "dataset": cfg.data.dataset,
                "likelihood": cfg.model.likelihood, "binarize": cfg.data.binarize, "iw_samples": args.iw_samples,
                "train_classes": list(cfg.data.train_classes) or None,
                "reference": {"split": "train", "classes": normal, "images": len(reference),
                              "available": available, "subsampled": len(reference) < available},
                "complexity": complexity_note(model), "seed": args.seed,
                "total_seconds": round(time.perf_counter() - started, 2), "vaelab_version": __version__}
        payload = write_analysis(result, out, info, rank_by=args.rank_by)
    if args.json:
        from vaelab.anomaly.report import to_json

        print(json.dumps(to_json(payload), indent=2))
        return 0
    print(_header(result, args, what, normal))
    if result.metrics is not None:
        print(metrics_table(result.metrics))
    elif result.percentiles is not None:
        print(files_table([str(i) for i in result.ids], result.scores, result.percentiles))
    else:
        print("  no labels: scores only (give --normal-classes to measure detection); see scores.csv")
    if result.pixel is not None:
        print(_pixel_lines(result.pixel))
    if not args.quiet:
        extras = ", roc.png" if result.metrics is not None else ""
        print(f"wrote {out}: scores.csv, anomaly.json{extras}, maps/ ({len(result.mapped)} figures) "
              f"in {time.perf_counter() - started:.1f} s")
    return 0


def _header(result, args: argparse.Namespace, what: str, normal: Optional[list[int]]) -> str:
    if result.metrics is None:
        return f"{what}: scores (higher = more anomalous), percentiles among normal training images"
    m = result.metrics
    return (f"{what}: {m['num_normal']} normal (classes {','.join(map(str, normal))}), {m['num_anomalous']} "
            f"anomalous; AUROC with {m['bootstrap']['resamples']} bootstrap resamples (seed {args.seed})")


def _pixel_lines(pixel: dict[str, Any]) -> str:
    rows = [f"  pixel metrics over {pixel['images']} masked image(s):"]
    for kind in ("residual", "weighted", "intensity"):
        if kind in pixel:
            m = pixel[kind]
            if m.get("pixel_auroc") is None:
                rows.append(f"    {kind:<12}{m.get('note', '-')}")
            else:
                rows.append(f"    {kind:<12}pixel AUROC {m['pixel_auroc']:.3f}   best Dice {m['best_dice']:.3f}")
    return "\n".join(rows)
