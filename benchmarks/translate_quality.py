"""Image to image on MNIST and CIFAR-10: denoising (noise std 0.1) and 2x super-resolution.

For each task this trains a Probabilistic U-Net (`--task translate --arch unet`) on a `--degrade`d
copy of the dataset, then runs `vaelab eval`'s evaluation (vaelab.translate.evaluate) on the test
split: PSNR/SSIM of the mean prediction and of the best of K samples against the identity and the
classical baselines (a Gaussian filter and non-local means, tuned on the validation split, for
denoising; bicubic upsampling, which is the input itself, for super-resolution), the calibration
of the uncertainty, and the training time on this machine. It prints the CPU model, one block per
task and a summary table, and writes RESULTS.json (and each run folder) under --out.

    python benchmarks/translate_quality.py                          # all four tasks (about 1.5 h on 2 cores)
    python benchmarks/translate_quality.py --quick                  # a smoke test: tiny subsets, seconds
    python benchmarks/translate_quality.py --tasks mnist-denoise --train-images 20000 --epochs 2

`--train-images N` trains on the first N images of the training split (the whole test split, or
the first --eval-images of it, is still evaluated); every number printed says what it used.
Data: ../shared/datasets/mnist (IDX) and ../shared/datasets/cifar10-jpeg/train (a JPEG folder:
--dataset folder --image-size 32 --channels 3; its test split is 10 % of those 50 000 images).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

# ../shared/datasets from the repository root (a worktree one level deeper looks one level up).
SHARED = next((base / "shared" / "datasets" for base in (REPO.parent, REPO.parent.parent)
               if (base / "shared" / "datasets").is_dir()), REPO.parent / "shared" / "datasets")
TASKS = {
    "mnist-denoise": {"dataset": "mnist", "data_dir": SHARED / "mnist", "degrade": {"noise": 0.1}},
    "mnist-sr2": {"dataset": "mnist", "data_dir": SHARED / "mnist", "degrade": {"downsample": 2}},
    "cifar-denoise": {"dataset": "folder", "data_dir": SHARED / "cifar10-jpeg" / "train", "degrade": {"noise": 0.1},
                      "image_size": 32, "channels": 3},
    "cifar-sr2": {"dataset": "folder", "data_dir": SHARED / "cifar10-jpeg" / "train", "degrade": {"downsample": 2},
                  "image_size": 32, "channels": 3},
}


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_task(name: str, args: argparse.Namespace, out: Path) -> dict:
    import torch

    import vaelab
    from vaelab.data import ImageData, load_data
    from vaelab.translate.evaluate import evaluate_run

    spec = TASKS[name]
    raw = {"data": {"dataset": spec["dataset"], "data_dir": str(spec["data_dir"]), "degrade": spec["degrade"],
                    **{k: spec[k] for k in ("image_size", "channels") if k in spec}},
           "model": {"task": "translate", "arch": "unet", "hidden": args.hidden, "latent_dim": args.latent_dim,
                     "gaussian_std": args.gaussian_std, "inject_stages": args.inject_stages},
           "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": 0,
                     "threads": args.threads}}
    cfg = vaelab.RunConfig.from_dict(raw)
    data = load_data(cfg.data)
    full_train = len(data.train)
    if args.train_images and args.train_images < full_train:  # the first N training images
        data = ImageData(data.name, data.train.take(slice(0, args.train_images)),
                         data.val.take(slice(0, min(len(data.val), args.val_images))), data.test, data.class_names)
    run = out / name
    if run.exists():
        shutil.rmtree(run)
    started = time.perf_counter()
    vaelab.train(cfg, run, data=data, progress=not args.quiet, force=True)
    train_seconds = time.perf_counter() - started
    model = vaelab.load(run)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    result = evaluate_run(model, num_samples=args.samples, iw_samples=args.iw_samples, batch_size=100,
                          max_images=args.eval_images or None, progress=not args.quiet, data=data)
    result.update(task=name, train_images=len(data.train), epochs=args.epochs, train_seconds=round(train_seconds, 1),
                  seconds_per_epoch=round(train_seconds / args.epochs, 1), hidden=args.hidden,
                  latent_dim=args.latent_dim, gaussian_std=args.gaussian_std,
                  parameters=sum(p.numel() for p in model.parameters()), run=str(run))
    if args.figures:
        Path(args.figures).mkdir(parents=True, exist_ok=True)
        shutil.copy(run / "figures" / "translations.png", Path(args.figures) / f"translate-{name}.png")
    return result


def summary(rows: list[dict]) -> str:
    head = (f"{'task':<15}{'train imgs':>11}{'epochs':>7}{'s/epoch':>9}{'model':>8}{'best-K':>8}{'identity':>9}"
            f"{'gauss':>7}{'nlm':>7}{'gain':>7}{'SSIM m/id':>12}{'corr':>6}{'±2std':>7}{'rescaled':>9}")
    lines = [head]
    def p(r: dict, name: str) -> str:
        value = r["baselines"].get(name, {}).get("psnr")
        return "-" if value is None else f"{value:.2f}"

    for r in rows:
        b = r["baselines"]
        c = r["calibration"]
        lines.append(f"{r['task']:<15}{r['train_images']:>11}{r['epochs']:>7}{r['seconds_per_epoch']:>9.0f}"
                     f"{r['psnr']:>8.2f}{r['psnr_best_of_samples']:>8.2f}{p(r, 'identity'):>9}{p(r, 'gaussian'):>7}"
                     f"{p(r, 'nlm'):>7}{r['gain_over_classical_db']:>+7.2f}"
                     f"{r['ssim']:>6.3f}/{b['identity']['ssim']:.3f}{c['std_error_correlation']:>6.2f}"
                     f"{100 * c['within_2std']:>6.1f}%{100 * c['within_2std_rescaled']:>8.1f}%")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--out", default="runs/translate-bench", help="where the runs and RESULTS.json go")
    parser.add_argument("--figures", help="copy each run's figures/translations.png here (e.g. docs/images)")
    parser.add_argument("--train-images", type=int, default=20000, help="first N training images (0 = all)")
    parser.add_argument("--val-images", type=int, default=1000, help="validation images, with --train-images")
    parser.add_argument("--eval-images", type=int, default=0, help="first N test images (0 = the whole test split)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", default="16,32,64", help="U-Net channels per level")
    parser.add_argument("--latent-dim", type=int, default=6, help="z dimensions (Kohl et al. 2018 use 6)")
    parser.add_argument("--gaussian-std", type=float, default=0.05, help="std of the fixed Gaussian likelihood")
    parser.add_argument("--inject-stages", type=int, default=1)
    parser.add_argument("--samples", type=int, default=8, help="K samples per test input")
    parser.add_argument("--iw-samples", type=int, default=10, help="K of the likelihood bound (not the point here)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--quick", action="store_true", help="tiny subsets and 1 epoch: checks the script runs")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    args.hidden = [int(v) for v in args.hidden.split(",")]
    if args.quick:
        args.train_images, args.val_images, args.eval_images, args.epochs, args.samples = 256, 64, 64, 1, 4
    import torch

    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"python {platform.python_version()}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.tasks.split(","):
        if name not in TASKS:
            parser.error(f"unknown task {name}; choose from {', '.join(TASKS)}")
        print(f"== {name}: {TASKS[name]['degrade']}, hidden {args.hidden}, latent {args.latent_dim}, "
              f"{args.train_images or 'all'} training images x {args.epochs} epochs", flush=True)
        result = run_task(name, args, out)
        rows.append(result)
        from vaelab.translate.evaluate import format_translation

        print(format_translation({**result, "seconds": result["eval_seconds"]}))
        print(f"  training: {result['train_seconds']:.0f} s ({result['seconds_per_epoch']:.0f} s per epoch of "
              f"{result['train_images']} images), {result['parameters']} parameters", flush=True)
        (out / "RESULTS.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
