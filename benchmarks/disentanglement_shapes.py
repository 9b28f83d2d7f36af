"""beta-TCVAE against beta-VAE at the same beta on `--dataset shapes` (Chen et al. 2018, Sec. 6).

Trains, for each seed, a beta-VAE (`--objective elbo --beta B`) and a beta-TCVAE (`--objective
beta-tc --tc-weight B`) with the same architecture, data and schedule, scores each with
`vaelab disentanglement`, and prints one row per run plus the mean ± standard deviation over
seeds (markdown). Chen et al. train an MLP (1200-1200 encoder, 1200-1200-1200 decoder) with a
10-d latent on all 737,280 dSprites images; this script defaults to a smaller MLP and a subset so
that it fits a CPU budget, and prints the fraction of that schedule it trained.

    python benchmarks/disentanglement_shapes.py --out runs/tcvae            # the documented table
    python benchmarks/disentanglement_shapes.py --quick --out /tmp/tcvae    # a check that it runs

Run it under the shared CPU lock on a shared machine: `flock /tmp/vaelab-cpu.lock python ...`.
Existing run folders are reused (trained runs are not trained again; an unfinished one resumes).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from vaelab.cli import main as vaelab
from vaelab.config import SHAPES_IMAGES

METRICS = ("mig", "factor_vae", "dci_disentanglement", "sap")
# Chen et al. 2018 do not state their dSprites schedule in the text; disentanglement_lib
# (Locatello et al. 2019) trains each model for 300,000 steps of 64 images: 19.2 M images.
REFERENCE_IMAGES = 300_000 * 64


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train_and_score(run: Path, objective: list[str], common: list[str], seed: int, images: int) -> dict:
    if not (run / "model.safetensors").is_file():
        argv = ["train", *common, *objective, "--seed", str(seed), "--out", str(run), "--quiet"]
        if (run / "checkpoint.safetensors").is_file():
            argv = ["train", "--resume", str(run), "--quiet"]
        started = time.perf_counter()
        if vaelab(argv) != 0:
            sys.exit(f"training {run} failed")
        print(f"trained {run} in {time.perf_counter() - started:.0f} s", flush=True)
    if vaelab(["disentanglement", str(run), "--images", str(images), "--seed", "0"]) != 0:
        sys.exit(f"vaelab disentanglement {run} failed")
    result = json.loads((run / "disentanglement.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    result["train_seconds"] = sum(r["seconds"] for r in rows)
    result["val_loss"] = rows[-1]["val_loss"]
    result["val_kl"] = rows[-1]["val_kl"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the run folders")
    parser.add_argument("--beta", type=float, default=6.0, help="beta of beta-VAE = TC weight of beta-TCVAE")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--subsample", type=int, default=100_000, help="--shapes-subsample")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--hidden", default="512,256")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=15_000, help="vaelab disentanglement --images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a tiny version: checks that the script runs")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.subsample, args.epochs, args.hidden, args.images = 2, 2000, 1, "64", 500
    out = Path(args.out)
    common = ["--dataset", "shapes", "--shapes-subsample", str(args.subsample), "--likelihood", "bernoulli",
              "--latent-dim", "10", "--hidden", args.hidden, "--batch-size", str(args.batch_size), "--epochs",
              str(args.epochs), "--threads", str(args.threads)]
    objectives = {"beta-VAE": ["--objective", "elbo", "--beta", f"{args.beta:g}"],
                  "beta-TCVAE": ["--objective", "beta-tc", "--tc-weight", f"{args.beta:g}"]}
    results: dict[str, list[dict]] = {name: [] for name in objectives}
    for seed in range(args.seeds):
        for name, flags in objectives.items():
            run = out / f"{name.lower()}-seed{seed}"
            results[name].append(train_and_score(run, flags, common, seed, args.images))

    train_images = round(args.subsample * 0.9 * 0.9)
    fraction = train_images * args.epochs / REFERENCE_IMAGES
    print(f"\nCPU: {cpu_model()}; torch threads {args.threads}; beta = {args.beta:g}; {args.subsample:,} of the "
          f"{SHAPES_IMAGES:,} images ({train_images:,} for training) x {args.epochs} epochs = "
          f"{train_images * args.epochs / 1e6:.2f} M images, {100 * fraction:.1f} % of disentanglement_lib's "
          f"300k steps x 64\n")
    print("| model | seed | " + " | ".join(METRICS) + " | val loss | val KL | train s |")
    print("|---" * (len(METRICS) + 5) + "|")
    for name, runs in results.items():
        for seed, r in enumerate(runs):
            cells = " | ".join(f"{r['metrics'][m]:.3f}" for m in METRICS)
            print(f"| {name} | {seed} | {cells} | {r['val_loss']:.1f} | {r['val_kl']:.1f} | {r['train_seconds']:.0f} |")
    for name, runs in results.items():
        cells = []
        for m in METRICS:
            values = [r["metrics"][m] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        losses = [r["val_loss"] for r in runs]
        print(f"| **{name}** mean ± sd | {len(runs)} seeds | " + " | ".join(cells)
              + f" | {statistics.mean(losses):.1f} | | |")


if __name__ == "__main__":
    main()
