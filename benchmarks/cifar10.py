"""CIFAR-10 (the JPEG copy): test bits/dim, PSNR and SSIM of a trained run, and its figures.

Trains with `vaelab train --dataset folder --data-dir <cifar>/train --image-size 32 --channels 3
<flags>` (unless `--run` names a run to score), then scores the model on the *official* 10,000
test images of `<cifar>/test` (not the folder dataset's own held-out tenth of the training folder):
bits/dim (exact for the discretized logistics, the uniform-dequantization bound for a Gaussian),
-L_K and -ELBO in nats, PSNR and SSIM of decode(E_q[z]) against the inputs (vaelab.evaluate,
the same pass as `vaelab eval`), and the training time from metrics.jsonl. With `--figures DIR`
it writes DIR/<name>-reconstructions.png (a seeded random sample of the test images above their
reconstructions) and DIR/<name>-samples.png (decoded prior draws).

The images are lossy JPEGs (about quality 75) of CIFAR-10: bits/dim on them is lower than on the
original lossless images and only roughly comparable with published CIFAR-10 numbers.

    python benchmarks/cifar10.py --name resnet --flags "--arch resnet --likelihood logistic-mixture --epochs 5"
    python benchmarks/cifar10.py --name conv --flags "--arch conv --latent-dim 64 --likelihood gaussian --epochs 3"
    python benchmarks/cifar10.py --run runs/cifar-resnet --iw-samples 100 --figures docs/images
    python benchmarks/cifar10.py --quick      # 100 training and 50 test images, 1 epoch: a check that it runs
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# ../shared next to the checkout (a worktree one level deeper finds it one level up)
CIFAR = next((d / "shared" / "datasets" / "cifar10-jpeg" for d in (REPO.parent, REPO.parent.parent)
              if (d / "shared" / "datasets" / "cifar10-jpeg").is_dir()),
             REPO.parent / "shared" / "datasets" / "cifar10-jpeg")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's description elsewhere)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def official_test(folder: Path, n: int, seed: int = 0):
    """The images of the test folder (all 10,000 or a seeded random `n` of them) as one Split."""
    import numpy as np

    from vaelab.data.base import Split
    from vaelab.data.folder import scan_folder
    from vaelab.data.images import load_image

    files, labels, _ = scan_folder(folder)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[: min(n, len(files))]
    order = order.sort().values.tolist()
    images = np.stack([load_image(files[i], 32, 3) for i in order])
    return Split(torch.from_numpy(images), torch.tensor([labels[i] for i in order]))


def train_capped(command: list[str], run: Path, max_minutes: float | None) -> None:
    """Run `vaelab train` (the `command`); past `max_minutes`, kill it and finish the run at the
    last completed epoch (`vaelab train --resume RUN --epochs E` writes the weights and figures),
    so a time budget still ends in a scored run that `--resume --epochs N` can continue."""
    proc = subprocess.Popen(command)
    try:
        proc.wait(timeout=None if max_minutes is None else max_minutes * 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        from vaelab.checkpoint import CHECKPOINT_FILE, checkpoint_position

        if not (run / CHECKPOINT_FILE).is_file():
            raise SystemExit(f"time limit of {max_minutes} min reached before training started") from None
        done = max(1, (checkpoint_position(run / CHECKPOINT_FILE) or {}).get("epoch", 0))
        print(f"time limit of {max_minutes} min reached: the run ends at epoch {done} (finishing it if needed)",
              flush=True)
        subprocess.run([sys.executable, "-m", "vaelab", "train", "--resume", str(run), "--epochs", str(done),
                        "--quiet"], check=True)
        return
    if proc.returncode:
        raise SystemExit(f"vaelab train failed with exit code {proc.returncode}")


def small_copy(source: Path, target: Path, per_class: int) -> Path:
    """A folder with the first `per_class` images of each class of `source` (for --quick)."""
    for cls in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:per_class]:
            shutil.copy(f, target / cls.name / f.name)
    return target


def write_figures(model, test, out_dir: Path, name: str, seed: int) -> list[Path]:
    """Reconstructions of 16 seeded-random test images (two rows of inputs above their
    reconstructions) and 64 prior samples, as PNG grids."""
    from vaelab.data.batches import to_float
    from vaelab.plots import figure_indices, save_grid

    out_dir.mkdir(parents=True, exist_ok=True)
    idx = figure_indices(len(test), 16, seed)
    x = to_float(test.images[idx])
    recon = model.reconstruct(x)
    rows = torch.cat([x[:8], recon[:8], x[8:], recon[8:]])
    paths = [save_grid(rows, out_dir / f"{name}-reconstructions.png", nrow=8)]
    samples = model.sample(64, generator=torch.Generator().manual_seed(seed))
    paths.append(save_grid(samples, out_dir / f"{name}-samples.png", nrow=8))
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", default=str(CIFAR), help="the folder holding train/ and test/")
    p.add_argument("--run", help="score this run instead of training one")
    p.add_argument("--out", help="where to train the run (default runs/cifar10-<name>)")
    p.add_argument("--name", default="run", help="a short name for the printed lines and the figures")
    p.add_argument("--flags", default="", help="vaelab train flags for the run (quoted, one string)")
    p.add_argument("--test-images", type=int, default=10_000, help="official test images to score (default all)")
    p.add_argument("--iw-samples", type=int, default=10, help="K of the bound L_K (default 10)")
    p.add_argument("--batch-size", type=int, default=50, help="test images per batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-minutes", type=float, help="stop training after this long and finish the epoch in progress "
                   "from its last checkpoint (every 25 steps)")
    p.add_argument("--figures", help="write <name>-reconstructions.png and <name>-samples.png here")
    p.add_argument("--quick", action="store_true", help="tiny data, one epoch: a check that the script runs")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cifar = Path(args.cifar)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {args.threads} threads", flush=True)

    import vaelab
    from vaelab.evaluate import evaluate_split
    from vaelab.runs import read_metrics

    tmp = Path(tempfile.mkdtemp(prefix="vaelab-cifar-"))
    try:
        train_dir, n_test = cifar / "train", args.test_images
        flags = shlex.split(args.flags)
        if args.quick:
            train_dir, n_test = small_copy(cifar / "train", tmp / "train", 10), 50
            flags = ["--arch", "resnet", "--hidden", "8,16", "--blocks", "1", "--epochs", "1", "--batch-size", "16"]
        default_out = tmp / "run" if args.quick else Path(f"runs/cifar10-{args.name}")
        run = Path(args.run) if args.run else Path(args.out or default_out)
        if not args.run:
            if args.max_minutes is not None and "--checkpoint-every" not in flags:
                # A kill at the time limit then loses at most 25 steps: the run is finished from the
                # last mid-epoch checkpoint, not by training its first epoch again from step 0 (one
                # epoch of the ResNet on 50,000 images can itself take longer than the budget).
                flags = [*flags, "--checkpoint-every", "25"]
            command = [sys.executable, "-m", "vaelab", "train", "--dataset", "folder", "--data-dir", str(train_dir),
                       "--image-size", "32", "--channels", "3", "--threads", str(args.threads), *flags,
                       "--out", str(run), "--quiet"]
            print("$ " + " ".join(shlex.quote(c) for c in command[2:]), flush=True)
            started = time.perf_counter()
            train_capped(command, run, args.max_minutes)
            print(f"train command: {time.perf_counter() - started:.0f} s wall", flush=True)
        metrics = read_metrics(run / "metrics.jsonl")
        model = vaelab.load(run)
        cfg = model.run_config.model
        test = official_test(cifar / "test", n_test)
        started = time.perf_counter()
        r = evaluate_split(model, test, iw_samples=args.iw_samples, batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        train_seconds = sum(m["seconds"] for m in metrics)
        params = sum(t.numel() for t in model.parameters())
        print(f"[{args.name}] {run}: {cfg.arch} hidden {cfg.hidden} blocks {cfg.blocks}, latent {cfg.latent_dim}, "
              f"{cfg.likelihood}" + (f" ({cfg.gaussian_variance} std)" if cfg.likelihood == "gaussian" else "")
              + (f" K={cfg.mixture_components}" if cfg.likelihood == "logistic-mixture" else "")
              + f", {params / 1e6:.2f}M parameters")
        print(f"[{args.name}] trained {len(metrics)} epochs ({metrics[-1]['step'] if metrics else 0} steps) in "
              f"{train_seconds:.0f} s ({train_seconds / 60:.1f} min); last val loss {metrics[-1]['val_loss']:.1f} "
              f"(kl {metrics[-1]['val_kl']:.1f})" if metrics else f"[{args.name}] no metrics")
        kind = {"exact": "exact", "bound": "upper bound (dequantization)"}.get(r["bits_per_dim_kind"], "-")
        print(f"[{args.name}] official test images: {r['num_images']}; bits/dim {r['bits_per_dim']:.4f} ({kind}); "
              f"nll -L_{args.iw_samples} {r['nll']:.1f} ± {r['nll_std_error']:.1f} nats; neg_elbo {r['neg_elbo']:.1f} "
              f"(kl {r['kl']:.1f}); psnr {r['psnr']:.2f} dB; ssim {r['ssim']:.4f}; active units "
              f"{r['active_units']}/{r['latent_dim']}; {seconds:.0f} s to score", flush=True)
        if r["bits_per_dim_kind"] == "exact":
            bits_se = r["nll_std_error"] / (3072 * math.log(2))
            print(f"[{args.name}] bits/dim standard error over images: {bits_se:.4f}")
        result = {k: v for k, v in r.items() if k != "unit_variances"}
        print(f"[{args.name}] json: " + json.dumps({"run": str(run), "train_seconds": train_seconds,
                                                    "epochs": len(metrics), **result}))
        if args.figures:
            for path in write_figures(model, test, Path(args.figures), args.name, seed=0):
                print(f"[{args.name}] wrote {path}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
