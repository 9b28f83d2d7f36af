"""`vaelab export RUN --format onnx|torchscript [--part decoder|encoder|both] [--out DIR]`."""

from __future__ import annotations

import argparse

PART_CHOICES = {"decoder": ("decoder",), "encoder": ("encoder",), "both": ("decoder", "encoder")}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `export` subcommand."""
    p = sub.add_parser(
        "export", help="export a run's decoder/encoder to ONNX or TorchScript",
        description="Export a trained model for serving without vaelab. The decoder maps z (B, D) [and labels y "
                    "(B,) for conditional models] to the likelihood's parameter and the expected image; the "
                    "encoder maps images (B, C, H, W) in [0, 1] to the posterior mean and log-variance. The batch "
                    "size is dynamic. Each file is checked against vaelab's own output; see DIR/export.json.")
    p.add_argument("run", metavar="RUN", help="a run folder (with config.json and model.safetensors)")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"),
                   help="onnx (needs pip install 'vaelab[export]') or torchscript")
    p.add_argument("--part", default="both", choices=sorted(PART_CHOICES), help="what to export (default both)")
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN/export); earlier exports there are "
                                                "replaced")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Export and print one line per written file with its check result."""
    from pathlib import Path

    from vaelab.export import EXPORT_DIR, export_run, require_format
    from vaelab.runlock import run_lock_for_output

    parts = PART_CHOICES[args.part]
    require_format(args.format)  # missing packages: refused before the run's lock is taken
    target = Path(args.out) if args.out else Path(args.run) / EXPORT_DIR
    with run_lock_for_output(args.run, target, "vaelab export"):  # one writer per run folder
        out, manifest = export_run(args.run, args.format, parts, args.out)
    for file, info in manifest["files"].items():
        if info["format"] != args.format or info["part"] not in parts:
            continue  # an earlier export kept in the same folder
        inputs = ", ".join(f"{n} {tuple(d['shape'])}" for n, d in info["inputs"].items())
        outputs = ", ".join(f"{n} {tuple(d['shape'])}" for n, d in info["outputs"].items())
        print(f"{info['part']}: {out / file}  ({inputs} -> {outputs}; max |diff| vs vaelab "
              f"{info['max_abs_diff']:.2g})")
    print(f"manifest: {out / 'export.json'}")
    return 0
