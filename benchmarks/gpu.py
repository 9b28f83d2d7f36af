"""Every GPU figure in one go, for the day a device machine is lent (and a CPU smoke test in CI).

Prints the card's name, then, each timed on `--device` (default cuda):
1. an MLP epoch on MNIST (the recipe: 784-400-20, Bernoulli, batch 128) and a conv epoch on MNIST
   (the default conv network, latent 16, Bernoulli), seconds per epoch after a warm-up epoch;
2. a ResNet epoch on CIFAR-10 (../shared/datasets/cifar10-jpeg/train as a folder, 32×32×3), once
   `--arch resnet` is registered (until then a printed note says it is skipped);
3. L_5000 of the conv model over the MNIST test set (`vaelab.evaluate.evaluate_split`);
4. the explorer's decode latency (one latent -> PNG, in-process: the work behind POST /api/decode);
5. `torchrun` with one process training one MLP epoch (a smoke test of the multi-process path).
Targets on one H100/H200 (issue 17): a conv MNIST epoch ≤ 1 s, L_5000 over the MNIST test set
≤ 30 s, the whole script under 8 minutes.

`--quick` shrinks every job (a few hundred training images, 1 epoch, L_100 over 20 images) so that
`--device cpu --quick` runs in well under a minute: tests/test_gpu_benchmark.py runs it on tiny
generated data in CI, so the script is known to work before GPU time is spent on it.

    python benchmarks/gpu.py                          # on the GPU, full figures
    python benchmarks/gpu.py --device cpu --quick     # the CI smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _shared(name: str) -> Path:
    for root in (REPO.parent, REPO.parent.parent):
        if (root / "shared" / "datasets" / name).is_dir():
            return root / "shared" / "datasets" / name
    return REPO.parent / "shared" / "datasets" / name


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _subset(data, n: int | None):
    """The data with only its first `n` training images (all when n is None)."""
    from vaelab.data.base import ImageData, Split

    if n is None:
        return data
    train = Split(data.train.images[:n], None if data.train.labels is None else data.train.labels[:n])
    return ImageData(data.name, train, data.val, data.test, data.class_names)


def epoch_seconds(label: str, overrides: dict, device: str, epochs: int, train_images: int | None):
    """Train `epochs` epochs (the first is a warm-up when there are two or more); print and return
    (seconds of the last epoch, the trained model)."""
    from vaelab.cli.options import build_config
    from vaelab.data import load_data
    from vaelab.training import train

    cfg = build_config(None, None, {**overrides, "train.epochs": epochs, "train.device": device})
    data = _subset(load_data(cfg.data), train_images)
    rows, models = [], []
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp) / "run", progress=False, data=data,
              hook=lambda row, model: (rows.append(row), models.append(model)))
    seconds = rows[-1]["seconds"]
    print(f"{label}: {seconds:.2f} s per epoch ({len(data.train)} images, epoch {len(rows)} of {epochs}, "
          f"val loss {rows[-1]['val_loss']:.2f})", flush=True)
    return seconds, models[-1], data


def bound_seconds(model, data, iw_samples: int, images: int | None) -> None:
    from vaelab.data.base import Split
    from vaelab.evaluate import evaluate_split

    test = data.test if images is None else Split(data.test.images[:images])
    _sync(model.device)
    started = time.perf_counter()
    result = evaluate_split(model, test, iw_samples=iw_samples, dynamic_binarize=True)
    _sync(model.device)
    seconds = time.perf_counter() - started
    print(f"L_{iw_samples} of the conv model over {len(test)} MNIST test images: {seconds:.1f} s "
          f"(nll {result['nll']:.2f} nats, decoder {result['decoder_precision']})", flush=True)


def decode_latency(model, data, calls: int) -> None:
    from vaelab.explorer.session import ExplorerSession

    session = ExplorerSession.from_model(model, split=data.test, max_points=200)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(calls + 5):
        z = torch.randn(1, model.latent_dim, generator=gen)
        started = time.perf_counter()
        session.decode_pngs(z)  # decode + PNG, synchronous (the PNG needs the pixels on the host)
        if i >= 5:  # after a warm-up
            times.append((time.perf_counter() - started) * 1e3)
    times.sort()
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    print(f"explorer decode latency (one latent -> PNG, in-process, conv model): "
          f"p50 {statistics.median(times):.2f} ms, p99 {p99:.2f} ms over {calls} calls", flush=True)


def torchrun_smoke(mnist: Path, device: str, quick: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "1",
               "--master_addr", "127.0.0.1", "--master_port", "0", "-m", "vaelab", "train",
               "--dataset", "mnist", "--data-dir", str(mnist), "--hidden", "400", "--latent-dim", "20",
               "--likelihood", "bernoulli", "--epochs", "1", "--device", device, "--out", str(Path(tmp) / "run"),
               "--quiet"]
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        seconds = time.perf_counter() - started
        ok = done.returncode == 0 and (Path(tmp) / "run" / "model.safetensors").is_file()
    status = "ok" if ok else f"FAILED (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}"
    print(f"torchrun, 1 process, 1 MLP epoch on MNIST ({device}): {status}, {seconds:.1f} s "
          f"(start-up included)", flush=True)
    if not ok:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny versions of every job (the CI smoke test)")
    parser.add_argument("--data-dir", type=Path, default=_shared("mnist"), help="the MNIST IDX files")
    parser.add_argument("--cifar-dir", type=Path, default=_shared("cifar10-jpeg"), help="CIFAR-10 JPEG folders")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("vaelab: error: --device cuda, but no CUDA device is visible (use --device cpu)")
    from vaelab.hardware import describe_machine, gpu_name
    from vaelab.models import ARCHITECTURES

    started = time.perf_counter()
    print(describe_machine())
    print(f"device: {args.device}" + (f" ({gpu_name()})" if args.device == "cuda" else "")
          + (" -- QUICK: tiny jobs, not figures" if args.quick else ""), flush=True)
    epochs, images = (1, 512) if args.quick else (2, None)
    mnist = {"data.dataset": "mnist", "data.data_dir": str(args.data_dir), "data.binarize": "none",
             "data.val_fraction": 0.0001, "model.likelihood": "bernoulli"}
    epoch_seconds("MLP 784-400-20 epoch on MNIST", {**mnist, "model.hidden": [400], "model.latent_dim": 20},
                  args.device, epochs, images)
    _, conv, data = epoch_seconds("conv epoch on MNIST (default conv network, latent 16)",
                                  {**mnist, "model.arch": "conv", "model.latent_dim": 16}, args.device, epochs, images)
    cifar_train = args.cifar_dir / "train"
    if not cifar_train.is_dir() and args.quick:  # a check that the path runs: random 32x32 colour images
        cifar_train = _random_colour_folder(Path(tempfile.mkdtemp(prefix="vaelab-gpu-cifar-")), 320)
    if not cifar_train.is_dir():
        print(f"ResNet epoch on CIFAR-10: skipped, no folder {cifar_train}", flush=True)
    elif "resnet" in ARCHITECTURES:
        cifar = {"data.dataset": "folder", "data.data_dir": str(cifar_train), "data.image_size": 32,
                 "data.channels": 3, "data.val_fraction": 0.0001, "model.likelihood": "bernoulli",
                 "model.arch": "resnet", "model.latent_dim": 16}
        epoch_seconds("ResNet epoch on CIFAR-10", cifar, args.device, epochs, images)
    else:
        print("ResNet epoch on CIFAR-10: skipped, --arch resnet is not registered in this vaelab yet", flush=True)
    conv.eval()
    bound_seconds(conv, data, 100 if args.quick else 5000, 20 if args.quick else None)
    decode_latency(conv, data, 20 if args.quick else 200)
    torchrun_smoke(args.data_dir, args.device, args.quick)
    print(f"total: {time.perf_counter() - started:.1f} s", flush=True)


def _random_colour_folder(root: Path, n: int) -> Path:
    """`n` random 32x32 RGB PNGs in two class folders under `root` (for --quick without CIFAR-10)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


if __name__ == "__main__":
    main()
