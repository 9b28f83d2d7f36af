"""Does a Gaussian std per colour channel pay? Learned and sigma-VAE stds, per channel vs shared.

Trains the same small ResNet VAE on a seeded subset of the CIFAR-10 JPEG training folder with
`--likelihood gaussian --gaussian-variance learned|optimal`, each with one std per channel (what
vaelab builds) and with one std for all three channels (`per_channel=False`, swapped in for the
run), and prints the held-out bits/dim bound (uniform dequantization), -ELBO, PSNR and the stds.
Also the fixed std 1/sqrt(2) (today's default) and the discretized logistic, for reference.

    python benchmarks/gaussian_std.py                            # 5000 training images, 3 epochs each
    python benchmarks/gaussian_std.py --quick                    # 200 images, 1 epoch: a check that it runs
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from cifar10 import CIFAR, cpu_model

VARIANTS = [  # (name, likelihood, gaussian_variance, per_channel)
    ("fixed 1/sqrt(2)", "gaussian", "fixed", True),
    ("learned, per channel", "gaussian", "learned", True),
    ("learned, shared", "gaussian", "learned", False),
    ("optimal, per channel", "gaussian", "optimal", True),
    ("optimal, shared", "gaussian", "optimal", False),
    ("logistic", "logistic", "fixed", True),
]


def shared_variant(cls: type) -> type:
    """`cls` (LearnedGaussian or OptimalGaussian) built with one std for all channels."""

    class Shared(cls):
        @classmethod
        def build(kind, cfg):
            return kind(gaussian_std=cfg.gaussian_std, channels=cfg.image_shape[0], event_dims=len(cfg.image_shape),
                        per_channel=False)

    return Shared


def subset(split, n: int, seed: int):
    from vaelab.data.base import Split

    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[: min(n, len(split))]
    return Split(split.images[idx], None if split.labels is None else split.labels[idx])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", default=str(CIFAR))
    p.add_argument("--train-images", type=int, default=5000)
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {args.threads} threads", flush=True)

    import vaelab
    import vaelab.likelihoods as likelihoods
    from vaelab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from vaelab.data import ImageData, load_data
    from vaelab.evaluate import evaluate_split

    n_train, n_eval, epochs = (200, 50, 1) if args.quick else (args.train_images, args.eval_images, args.epochs)
    data_cfg = DataConfig(dataset="folder", data_dir=str(Path(args.cifar) / "train"), image_size=32, channels=3)
    full = load_data(data_cfg)
    data = ImageData(full.name, subset(full.train, n_train, 0), subset(full.val, n_eval, 1),
                     subset(full.test, n_eval, 2), full.class_names)
    print(f"data: {len(data.train)} training, {len(data.val)} validation, {len(data.test)} held-out images of "
          f"{args.cifar}/train; resnet 16,32,64 x1 block, latent 64, batch 32, Adam 1e-3, {epochs} epochs", flush=True)
    for name, likelihood, variance, per_channel in VARIANTS:
        cfg = RunConfig(data=data_cfg, model=ModelConfig(arch="resnet", hidden=[16, 32, 64], blocks=1, latent_dim=64,
                                                         likelihood=likelihood, gaussian_variance=variance),
                        train=TrainConfig(epochs=epochs, batch_size=32, threads=args.threads))
        swap = {variance: shared_variant(likelihoods.GAUSSIAN_VARIANCES[variance])} if not per_channel else {}
        with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(likelihoods.GAUSSIAN_VARIANCES, swap):
            started = time.perf_counter()
            run = vaelab.train(cfg, Path(tmp) / "run", data=data, progress=False)
            seconds = time.perf_counter() - started
            model = vaelab.load(run)
            r = evaluate_split(model, data.test, iw_samples=1, batch_size=50)
            lik = model.likelihood
            std = lik.pixel_std(torch.zeros(1, 3, 1, 1)).flatten().tolist() if likelihood == "gaussian" else []
        kind = "bound" if r["bits_per_dim_kind"] == "bound" else "exact"
        print(f"  {name:22s} bits/dim {r['bits_per_dim']:.3f} ({kind})  -elbo {r['neg_elbo']:8.1f}  kl {r['kl']:6.1f}  "
              f"psnr {r['psnr']:5.2f} dB  std {', '.join(f'{s:.4f}' for s in std) or '-'}  {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
