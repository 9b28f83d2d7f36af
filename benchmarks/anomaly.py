"""Anomaly detection benchmarks: speed, the MNIST one-class protocol, and the input-complexity test.

    python benchmarks/anomaly.py speed                # every score of 10,000 MNIST test images, 2 threads
    python benchmarks/anomaly.py oneclass --out /tmp/oneclass      # Ruff et al. 2018's protocol, 10 digits
    python benchmarks/anomaly.py complexity --out /tmp/complexity  # CIFAR-10 model vs simpler images
    python benchmarks/anomaly.py all --quick --out /tmp/anomaly-quick   # everything, small, to check it runs

speed: a VAE (an MLP 784-512-256-16, Bernoulli; `--run RUN` for a trained one) scores the 10,000
MNIST test images with every score of `vaelab.anomaly.score` (nll = -L_K with K = 100) against
the 54,000 MNIST training images as the normal reference (the largest nearest-neighbour search
of the one-class protocol, 10k × 54k); each part is timed on its own.

oneclass: for each digit d, `vaelab train --train-classes d` (the training images of d only)
and `vaelab anomaly RUN --normal-classes d` on the whole test set; prints the AUROC of every
score and baseline per digit, beside One-Class Deep SVDD's published AUROCs (Ruff et al. 2018,
Table 1). Raw [0, 1] pixels, no global contrast normalisation (the paper's preprocessing).

complexity: the textbook failure of raw likelihoods (Nalisnick et al. 2019) as far as the data
here allow: a VAE trained on CIFAR-10 (the lossy-JPEG copy) scores CIFAR-10 test images (normal)
against simpler images (MNIST digits in colour, blurred and flat CIFAR images) and noise; the
AUROC of the raw nll and of Serrà et al. 2020's corrected `likelihood_ratio`, with the AUROC of
the compressed length alone (`-png bits`: "simpler = more anomalous") to show how much of the
correction is the complexity term. Prints the CPU model; long runs belong under
`flock /tmp/vaelab-cpu.lock`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

# ../shared/datasets next to the checkout (a worktree one level deeper finds it one level up)
SHARED = next((p / "shared" / "datasets" for p in Path(__file__).resolve().parents[1:4]
               if (p / "shared" / "datasets").is_dir()), Path(__file__).resolve().parents[2] / "shared" / "datasets")
MNIST_DIR = SHARED / "mnist"
CIFAR_DIR = SHARED / "cifar10-jpeg"
# One-Class Deep SVDD, MNIST AUROC (%) per normal digit, Ruff et al. 2018 (ICML), Table 1, as
# reprinted in the README of a public re-implementation ("original" row); the paper's own table
# (and its OC-SVM, KDE, IF, DCAE and AnoGAN rows) could not be read here, so they are not shown.
DEEP_SVDD_MNIST = (98.0, 99.7, 91.7, 91.9, 94.9, 88.5, 98.3, 94.6, 93.9, 96.5)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(args: argparse.Namespace) -> None:
    print(f"cpu: {cpu_model()}; torch {torch.__version__}, {args.threads} threads")


# ---- speed -----------------------------------------------------------------------------------


def run_speed(args: argparse.Namespace) -> dict:
    import vaelab
    from vaelab.anomaly import fit_reference, score
    from vaelab.anomaly.baselines import nearest_neighbour_distance
    from vaelab.anomaly.complexity import compressed_bits
    from vaelab.config import DataConfig, ModelConfig
    from vaelab.data import load_data
    from vaelab.models import VAE

    data = load_data(DataConfig(dataset="mnist", data_dir=args.data_dir))
    n = min(args.images, len(data.test))
    test, bank = data.test.images[:n], data.train.images
    if args.quick:
        bank = bank[:5000]
    if args.run:
        model = vaelab.load(args.run)
    else:
        torch.manual_seed(0)
        model = VAE(ModelConfig(hidden=[512, 256], latent_dim=16, likelihood="bernoulli",
                                image_shape=[1, 28, 28])).eval()
    times = {}
    t = time.perf_counter()
    reference = fit_reference(model, bank)
    times["fit_reference (encode the bank, code Gaussian, mean image)"] = time.perf_counter() - t
    t = time.perf_counter()
    table = score(model, test, reference, iw_samples=args.iw_samples)
    times["score(): every score"] = time.perf_counter() - t
    t = time.perf_counter()
    score(model, test, iw_samples=args.iw_samples, scores=["neg_elbo", "nll", "kl", "recon_mse", "recon_mae",
                                                           "recon_1_minus_ssim"])
    times["  of which the model's scores (ELBO, L_K, reconstruction, SSIM)"] = time.perf_counter() - t
    t = time.perf_counter()
    nearest_neighbour_distance(test, bank)
    times[f"  of which nearest neighbour, exact, {n} x {len(bank)}"] = time.perf_counter() - t
    t = time.perf_counter()
    compressed_bits(test)
    times["  of which PNG lengths (likelihood_ratio)"] = time.perf_counter() - t
    print(f"speed: {n} MNIST test images, reference {len(bank)} training images, K = {args.iw_samples}, "
          f"model {'run ' + args.run if args.run else 'fresh MLP 784-512-256-16 bernoulli'}")
    for name, seconds in times.items():
        print(f"  {name:<66}{seconds:8.2f} s")
    assert set(table) == set(__import__("vaelab.anomaly", fromlist=["SCORE_NAMES"]).SCORE_NAMES)
    return {"images": n, "bank": len(bank), "iw_samples": args.iw_samples, "seconds": times}


# ---- the one-class protocol ------------------------------------------------------------------


def run_oneclass(args: argparse.Namespace) -> dict:
    from vaelab.cli import main as vaelab_main

    out = Path(args.out) / "oneclass"
    out.mkdir(parents=True, exist_ok=True)
    digits = [int(d) for d in args.digits.split(",")]
    results, timing = {}, {}
    for d in digits:
        run = out / f"digit{d}"
        started = time.perf_counter()
        if not (run / "model.safetensors").is_file():
            argv = ["train", "--dataset", "mnist", "--data-dir", args.data_dir, "--train-classes", str(d),
                    "--epochs", str(args.epochs), "--batch-size", "64", "--hidden", args.hidden, "--latent-dim",
                    str(args.latent_dim), "--likelihood", args.likelihood, "--seed", str(args.seed),
                    "--out", str(run), "--force", "--quiet", "--threads", str(args.threads)]
            if args.likelihood == "gaussian":
                argv += ["--gaussian-std", str(args.gaussian_std)]
            assert vaelab_main(argv) == 0
        trained = time.perf_counter()
        argv = ["anomaly", str(run), "--normal-classes", str(d), "--iw-samples", str(args.iw_samples),
                "--maps", "8", "--quiet", "--bootstrap", str(args.bootstrap)]
        if args.quick:
            argv += ["--reference-size", "1000"]
        with contextlib.redirect_stdout(io.StringIO()):  # its table is in RUN/anomaly/anomaly.json
            assert vaelab_main(argv) == 0
        report = json.loads((run / "anomaly" / "anomaly.json").read_text())
        results[d] = {name: m["auroc"] for name, m in report["scores"].items()}
        results[d]["_ci"] = {name: m["auroc_ci"] for name, m in report["scores"].items()}
        timing[d] = {"train": round(trained - started, 1), "anomaly": round(time.perf_counter() - trained, 1)}
        print(f"digit {d}: trained in {timing[d]['train']} s, scored in {timing[d]['anomaly']} s", flush=True)
    names = [n for n in next(iter(results.values())) if not n.startswith("_")]
    print(f"\nMNIST one-class AUROC (%): normal digit d, the other nine anomalous; test set 10,000 images; "
          f"MLP {args.hidden}, latent {args.latent_dim}, {args.likelihood}, {args.epochs} epochs, "
          f"K = {args.iw_samples}")
    line = f"  {'score':<28}" + "".join(f"{d:>7}" for d in digits) + f"{'mean':>8}"
    print(line)
    for name in names:
        values = [100 * results[d][name] for d in digits]
        print(f"  {name:<28}" + "".join(f"{v:7.1f}" for v in values) + f"{np.mean(values):8.1f}")
    paper = [DEEP_SVDD_MNIST[d] for d in digits]
    print(f"  {'One-Class Deep SVDD [1]':<28}" + "".join(f"{v:7.1f}" for v in paper) + f"{np.mean(paper):8.1f}")
    print("  [1] Ruff et al. 2018, Deep One-Class Classification (ICML), Table 1 (mean over 10 seeds)")
    return {"settings": {k: v for k, v in vars(args).items() if k != "func"}, "auroc": results, "seconds": timing}


# ---- input complexity on CIFAR-10 --------------------------------------------------------------


def _cifar_test(cifar_dir: str, n: int, seed: int) -> torch.Tensor:
    from vaelab.data.images import load_image

    files = sorted((Path(cifar_dir) / "test").glob("*/*.jpg"))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(files), size=min(n, len(files)), replace=False)
    return torch.from_numpy(np.stack([load_image(files[i], 32, 3) for i in sorted(chosen)]))


def _ood_sets(cifar: torch.Tensor, n: int, seed: int, data_dir: str) -> dict[str, torch.Tensor]:
    """Images simpler than CIFAR-10 (MNIST in colour, blurred, flat) and more complex (noise)."""
    from PIL import Image, ImageFilter

    from vaelab.config import DataConfig
    from vaelab.data import load_data

    rng = np.random.default_rng(seed)
    digits = load_data(DataConfig(dataset="mnist", data_dir=data_dir)).test.images[:n, 0].numpy()  # (n, 28, 28)
    padded = np.pad(digits, ((0, 0), (2, 2), (2, 2)))  # 32 × 32
    colour = rng.uniform(0.3, 1.0, size=(len(padded), 3, 1, 1))  # a random ink colour per digit
    mnist = np.round(padded[:, None] * colour).astype(np.uint8)
    base = cifar[:n].numpy()
    blurred = np.stack([np.asarray(Image.fromarray(im.transpose(1, 2, 0)).filter(ImageFilter.GaussianBlur(1.5)))
                        .transpose(2, 0, 1) for im in base])
    flat = np.broadcast_to(base.mean(axis=(2, 3), keepdims=True).round(), base.shape).astype(np.uint8)
    noise = rng.integers(0, 256, size=base.shape, dtype=np.uint8)
    return {name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in
            (("mnist_in_colour", mnist), ("blurred_cifar", blurred), ("flat_cifar", flat), ("uniform_noise", noise))}


def run_complexity(args: argparse.Namespace) -> dict:
    import vaelab
    from vaelab.anomaly import fit_reference, score
    from vaelab.anomaly.complexity import compressed_bits
    from vaelab.anomaly.metrics import auroc
    from vaelab.cli import main as vaelab_main

    run = Path(args.out) / "cifar10"
    started = time.perf_counter()
    if not (run / "model.safetensors").is_file():
        folder = Path(args.cifar_dir) / ("test" if args.quick else "train")  # --quick: the smaller folder
        argv = ["train", "--dataset", "folder", "--data-dir", str(folder), "--image-size", "32",
                "--channels", "3", "--epochs", str(args.cifar_epochs), "--batch-size", "128", "--hidden",
                args.cifar_hidden, "--latent-dim", "32", "--likelihood", "gaussian", "--gaussian-std",
                str(args.gaussian_std), "--out", str(run), "--force", "--quiet", "--threads", str(args.threads)]
        assert vaelab_main(argv) == 0
    trained = time.perf_counter() - started
    model = vaelab.load(run)
    from vaelab.data import load_data

    train = load_data(model.run_config.data).train
    reference = fit_reference(model, train.images[: args.cifar_reference])
    cifar = _cifar_test(args.cifar_dir, args.cifar_images, args.seed)
    sets = _ood_sets(cifar, args.cifar_images, args.seed, args.data_dir)
    normal = score(model, cifar, reference, iw_samples=args.iw_samples)
    pixels = 3 * 32 * 32
    results = {}
    print(f"\nCIFAR-10 model (MLP {args.cifar_hidden}, latent 32, gaussian std {args.gaussian_std}, "
          f"{args.cifar_epochs} epochs, trained in {trained:.0f} s); normal: {len(cifar)} CIFAR-10 test images, "
          f"mean nll {normal['nll'].mean() / (pixels * np.log(2)) + 8:.3f} bits/dim (8-bit)")
    print(f"  {'anomalous set':<18}{'nll bits/dim':>13}{'AUROC nll':>11}{'AUROC likelihood_ratio':>24}"
          f"{'AUROC -png bits':>17}{'AUROC recon_mse':>17}")
    for name, images in sets.items():
        odd = score(model, images, reference, iw_samples=args.iw_samples)
        labels = np.r_[np.zeros(len(cifar)), np.ones(len(images))]
        row = {s: auroc(labels, np.r_[normal[s], odd[s]]) for s in normal}
        complexity = np.r_[compressed_bits(cifar), compressed_bits(images)]
        row["minus_png_bits"] = auroc(labels, -complexity)
        row["nll_bits_per_dim"] = float(odd["nll"].mean() / (pixels * np.log(2)) + 8)
        results[name] = row
        print(f"  {name:<18}{row['nll_bits_per_dim']:13.3f}{row['nll']:11.3f}{row['likelihood_ratio']:24.3f}"
              f"{row['minus_png_bits']:17.3f}{row['recon_mse']:17.3f}")
    return {"train_seconds": trained, "cifar_nll_bits_per_dim": float(normal["nll"].mean() / (pixels * np.log(2)) + 8),
            "auroc": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("speed", "oneclass", "complexity", "all"))
    parser.add_argument("--out", default="/tmp/vaelab-anomaly-bench", help="where runs and results go")
    parser.add_argument("--data-dir", default=str(MNIST_DIR), help="the MNIST IDX files")
    parser.add_argument("--cifar-dir", default=str(CIFAR_DIR), help="complexity: CIFAR-10 as train/ and test/ "
                        "folders of JPEGs per class")
    parser.add_argument("--run", help="speed: a trained run to time instead of a fresh MLP")
    parser.add_argument("--images", type=int, default=10_000, help="speed: test images to score")
    parser.add_argument("--iw-samples", type=int, default=100, help="K of nll = -L_K (default 100)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9", help="oneclass: normal digits to run")
    parser.add_argument("--epochs", type=int, default=30, help="oneclass: training epochs per digit")
    parser.add_argument("--hidden", default="512,256", help="oneclass: MLP widths")
    parser.add_argument("--latent-dim", type=int, default=16, help="oneclass: latent dimensions")
    parser.add_argument("--likelihood", default="bernoulli", choices=("bernoulli", "gaussian"))
    parser.add_argument("--gaussian-std", type=float, default=0.1, help="std of a gaussian likelihood")
    parser.add_argument("--bootstrap", type=int, default=1000, help="oneclass: AUROC bootstrap resamples")
    parser.add_argument("--cifar-epochs", type=int, default=10, help="complexity: CIFAR-10 training epochs")
    parser.add_argument("--cifar-hidden", default="1024,512", help="complexity: MLP widths")
    parser.add_argument("--cifar-images", type=int, default=2000, help="complexity: images per set")
    parser.add_argument("--cifar-reference", type=int, default=10_000, help="complexity: normal reference size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny settings: check that everything runs")
    args = parser.parse_args()
    if args.quick:
        args.images, args.iw_samples, args.epochs, args.bootstrap = 1000, 10, 1, 100
        args.digits = args.digits if args.digits != "0,1,2,3,4,5,6,7,8,9" else "0,1"
        args.cifar_epochs, args.cifar_images, args.cifar_reference, args.cifar_hidden = 1, 200, 1000, "64"
    torch.set_num_threads(args.threads)
    header(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = {"cpu": cpu_model(), "threads": args.threads}
    for part, fn in (("speed", run_speed), ("oneclass", run_oneclass), ("complexity", run_complexity)):
        if args.part in (part, "all"):
            started = time.perf_counter()
            results[part] = fn(args)
            print(f"[{part}: {time.perf_counter() - started:.0f} s]", flush=True)
    path = Path(args.out) / f"results-{args.part}.json"
    path.write_text(json.dumps(results, indent=2, default=float))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
