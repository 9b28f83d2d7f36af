"""`vaelab translate RUN --images FILES...`: an image-to-image run's predictions, samples and uncertainty.

For each input file, into OUT/<name>/ (default OUT = RUN/translations): the mean prediction, the
samples, the std map and a figure (input | mean | samples | std map | target); see
`vaelab.translate.io` for the files and their formats.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vaelab.errors import ConfigError, RunError

DEFAULT_SAMPLES = 8
FIGURE_SLICES = 6  # rows of figure.png for a multi-slice input (evenly spaced slices)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `translate` subcommand."""
    p = sub.add_parser("translate", help="image to image: predictions, samples and uncertainty maps of a translate run",
                       description="Translate image files with a --task translate run: for each input, write the "
                                   "mean prediction, the samples, the per-pixel std map (PNG and float TIFF) and a "
                                   "figure input | mean | samples | std | target into OUT/<name>/.")
    p.add_argument("run", metavar="RUN", help="a run folder trained with --task translate")
    p.add_argument("--images", nargs="+", required=True, metavar="FILE",
                   help="input images (converted to the run's channels and size)")
    p.add_argument("--targets", nargs="+", metavar="FILE",
                   help="the target of each input, in the same order: shown in the figure, scored by PSNR/SSIM")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, metavar="K",
                   help=f"samples z ~ p(z | input) per input (default {DEFAULT_SAMPLES})")
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN/translations)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto (default), cpu or cuda")
    p.add_argument("--json", action="store_true", help="print what was written (and the scores) as JSON")
    p.set_defaults(func=run_translate)


def run_translate(args: argparse.Namespace) -> int:
    """Carry out `vaelab translate`; return the exit code."""
    if not 1 <= args.samples <= 1000:
        raise ConfigError(f"--samples must be between 1 and 1000, got {args.samples}")
    if args.targets is not None and len(args.targets) != len(args.images):
        raise ConfigError(f"--targets gives {len(args.targets)} file(s) for {len(args.images)} --images; "
                          f"give one target per input, in the same order")
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise RunError(f"run folder not found: {run_dir}")
    import vaelab
    from vaelab.models import require_family
    from vaelab.runlock import run_lock_for_output
    from vaelab.training import pick_device
    from vaelab.translate.io import output_folders, read_images

    model = vaelab.load(run_dir, device=pick_device(args.device))
    require_family(model, "translate", "vaelab translate")
    cfg = model.run_config
    sources = [Path(p) for p in args.images]
    inputs = read_images(sources, model.input_shape, cfg.data)  # every file checked before anything is written
    targets = read_images(args.targets, model.image_shape, cfg.data) if args.targets else [None] * len(inputs)
    for source, x, target in zip(sources, inputs, targets):
        if target is not None and len(target) != len(x):
            raise ConfigError(f"{source} holds {len(x)} images but its target holds {len(target)}")
    out = Path(args.out) if args.out else run_dir / "translations"
    with run_lock_for_output(run_dir, out, "vaelab translate"):  # one writer per run folder (vaelab.runlock)
        report = _translate_all(model, args, sources, output_folders(sources, out), inputs, targets)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def _translate_all(model, args: argparse.Namespace, sources, folders, inputs, targets) -> list[dict]:
    """Translate and write every input (every input checked already); the report of what was written."""
    import torch

    from vaelab.image_metrics import psnr, ssim
    from vaelab.translate.figures import translation_figure
    from vaelab.translate.io import writers_for

    generator = torch.Generator().manual_seed(args.seed)
    report = []
    for source, folder, x, target in zip(sources, folders, inputs, targets):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create {folder}: {exc.strerror or exc}") from None
        result = model.translate(x.to(model.device), args.samples, generator)
        mean, samples, std = result.mean.float().cpu(), result.samples.float().cpu(), result.std.float().cpu()
        write, write_std = writers_for(source, model.run_config.data)
        files = write(folder / "input", x) + write(folder / "mean", mean)
        for k in range(args.samples):
            files += write(folder / f"sample-{k + 1:02d}", samples[k])
        files += write_std(folder / "std", std)
        entry = {"input": str(source), "folder": str(folder), "files": [str(f) for f in files]}
        if target is not None:
            files += write(folder / "target", target)
            entry.update(psnr=float(psnr(mean, target).mean()), ssim=float(ssim(mean, target).mean()),
                         input_psnr=float(psnr(x, target).mean()) if x.shape == target.shape else None)
        title = f"{source.name}: input, mean, samples, std" + (", target" if target is not None else "")
        rows = torch.linspace(0, len(x) - 1, min(len(x), FIGURE_SLICES)).round().long().unique()  # a scan: a few slices
        labels = [f"slice {int(r) + 1}" for r in rows] if len(x) > 1 else []
        figure = translation_figure(x[rows], mean[rows], samples[:, rows], std[rows], folder / "figure.png",
                                    targets=None if target is None else target[rows], row_labels=labels, title=title)
        entry["figure"] = str(figure)
        report.append(entry)
        if not args.json:
            scores = ""
            if target is not None:
                base = f", input {entry['input_psnr']:.2f} dB" if entry["input_psnr"] is not None else ""
                scores = f"  (mean vs target: PSNR {entry['psnr']:.2f} dB{base}, SSIM {entry['ssim']:.4f})"
            print(f"{source} -> {folder}/{scores}")
    return report
