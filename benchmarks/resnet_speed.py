"""Training-step time of `--arch resnet` (and `conv`) on 32×32 colour images, per likelihood.

Times loss + backward + Adam step of the VAE on random 8-bit images (the speed does not depend on
the pixel values), after one warm-up step, and prints ms/step and the implied seconds per epoch
of the 45,000 CIFAR-10 training images. `--layouts` also times the resnet with its convolutions on
the default (contiguous) memory layout instead of channels-last, the choice models/resnet.py makes.

    python benchmarks/resnet_speed.py                        # the default set of models, 2 threads
    python benchmarks/resnet_speed.py --quick                # one small model, 2 steps
    python benchmarks/resnet_speed.py --layouts --threads 1
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import torch

import vaelab.models.resnet as resnet
from vaelab.config import ModelConfig
from vaelab.models import VAE
from vaelab.objectives import elbo_loss

EPOCH_IMAGES = 45_000
# (arch, hidden, blocks, likelihood)
MODELS = [
    ("conv", [32, 64, 128], 1, "gaussian"),
    ("resnet", [16, 32, 64], 1, "logistic"),
    ("resnet", [16, 32, 64], 2, "logistic"),
    ("resnet", [32, 64, 128], 1, "logistic"),
    ("resnet", [32, 64, 128], 2, "logistic"),
    ("resnet", [32, 64, 128], 2, "logistic-mixture"),
    ("resnet", [32, 64, 128], 2, "gaussian"),
]


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


def step_ms(arch: str, hidden: list[int], blocks: int, likelihood: str, batch: int, steps: int,
            latent_dim: int, components: int) -> float:
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, hidden=hidden, blocks=blocks, likelihood=likelihood, latent_dim=latent_dim,
                      mixture_components=components, image_shape=[3, 32, 32])
    model = VAE(cfg)
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.randint(0, 256, (batch, 3, 32, 32)) / 255.0
    times = []
    for i in range(steps + 1):
        started = time.perf_counter()
        loss = elbo_loss(model, x, None, 1.0).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:  # the first step warms up the kernels
            times.append(time.perf_counter() - started)
    return 1000 * min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model (the fastest is printed)")
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--mixture-components", type=int, default=10)
    p.add_argument("--layouts", action="store_true", help="also time the resnet on the contiguous layout")
    p.add_argument("--quick", action="store_true", help="one small model, 2 steps (a check that it runs)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, "
          f"latent {args.latent_dim}, fastest of {args.steps} steps")
    models = MODELS[1:2] if args.quick else MODELS
    steps = 2 if args.quick else args.steps
    layouts = [torch.channels_last] + ([torch.contiguous_format] if args.layouts else [])
    for arch, hidden, blocks, likelihood in models:
        for layout in layouts if arch == "resnet" else [None]:
            with mock.patch.object(resnet, "CONV_LAYOUT", layout or torch.channels_last):
                ms = step_ms(arch, hidden, blocks, likelihood, args.batch_size, steps, args.latent_dim,
                             args.mixture_components)
            name = f"{arch} {','.join(map(str, hidden))} blocks {blocks} {likelihood}"
            if layout is not None:
                name += " channels-last" if layout == torch.channels_last else " contiguous"
            print(f"  {name:62s} {ms:8.1f} ms/step  {ms * EPOCH_IMAGES / args.batch_size / 1000:7.0f} s/epoch",
                  flush=True)


if __name__ == "__main__":
    main()
