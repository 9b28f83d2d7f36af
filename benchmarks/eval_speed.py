"""Evaluation speed: the importance-weighted bound L_K over the MNIST test set, on the CPU.

`--arch conv` times vaelab's default conv model instead (layout `transposed`, 32-64-128, latent
16, Bernoulli; channels-last weights as `vaelab.load` lays them out). Target (issue 17): L_5000
over the 10k test images in at most 1 hour on 2 CPU cores. `--levers` also times, on the first
`--lever-images` images, each evaluation lever alone: memory format, latents per chunk, bf16, the
last layer's GEMM.

Times exactly what `vaelab eval` spends on likelihoods (`vaelab.evaluate.evaluate_split`: the
ELBO with 10 draws per image, L_K with K = 5000 in chunks, the posterior means for active units)
for the IWAE paper's MLP 784-200-200-50 (tanh, Bernoulli) on the 10k dynamically binarised MNIST
test images, in float32 under `torch.inference_mode`. Target: at most 5 minutes on 2 CPU cores.

The model's weights do not change the amount of work; pass `--run RUN` to time (and score) a
trained run, otherwise a freshly initialised model is timed. Without the MNIST files, random
grey images of the same shape are used (the timing is the same; the bound is meaningless).

    python benchmarks/eval_speed.py                        # K = 5000, 10k images, 2 threads
    python benchmarks/eval_speed.py --images 1000          # a tenth of the work, prints a projection
    python benchmarks/eval_speed.py --run /work/runs/iwae-paper-vae-first15
    python benchmarks/eval_speed.py --arch conv --images 500      # projection for the conv model
    python benchmarks/eval_speed.py --arch conv --images 200 --levers
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = next((root / "shared" / "datasets" / "mnist" for root in (REPO.parent, REPO.parent.parent)
                  if (root / "shared" / "datasets" / "mnist").is_dir()), REPO.parent / "shared" / "datasets" / "mnist")


def fresh_model(arch: str):
    """A freshly initialised model of the timed kind (the weights do not change the work)."""
    from vaelab.config import ModelConfig
    from vaelab.models import VAE, use_fast_memory_format

    torch.manual_seed(0)
    if arch == "mlp":
        cfg = ModelConfig(arch="mlp", hidden=[200, 200], latent_dim=50, activation="tanh", likelihood="bernoulli",
                          image_shape=[1, 28, 28])
    else:
        cfg = ModelConfig(arch=arch, latent_dim=16, likelihood="bernoulli", image_shape=[1, 28, 28])
    return use_fast_memory_format(VAE(cfg), "cpu").eval()


def levers(model, split, iw_samples: int) -> None:
    """Seconds for L_K over `split` with each evaluation lever switched alone (alternating, median of 3)."""
    import copy
    import statistics

    from vaelab.evaluate import evaluate_split
    from vaelab.models.conv import OutputConvTranspose2d

    contiguous = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    default_chunk = getattr(model.decoder, "chunk_samples", None)
    variants = {"default": (model, None, "auto"), "contiguous (NCHW) weights": (contiguous, None, "auto"),
                "2048 latents a chunk": (model, 2048, "auto"), "8192 latents a chunk": (model, 8192, "auto"),
                "128 latents a chunk": (model, 128, "auto"), "bf16 decoder": (model, None, "bf16"),
                "last layer on oneDNN (no GEMM)": (model, None, "auto")}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(3):
        for name, (m, chunk, precision) in variants.items():
            if chunk is not None:
                m.decoder.chunk_samples = {"cpu": chunk}
            OutputConvTranspose2d.use_gemm = not name.startswith("last layer on oneDNN")
            started = time.perf_counter()
            evaluate_split(m, split, iw_samples=iw_samples, dynamic_binarize=True, precision=precision)
            times[name].append(time.perf_counter() - started)
            m.decoder.chunk_samples = default_chunk
            OutputConvTranspose2d.use_gemm = True
    base = statistics.median(times["default"])
    for name, t in times.items():
        print(f"  {name:28s} {statistics.median(t):7.2f} s  {statistics.median(t) / base:5.2f}x the default")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained run to time instead of a fresh model")
    parser.add_argument("--arch", default="mlp", help="fresh model: mlp (784-200-200-50, default) or conv")
    parser.add_argument("--levers", action="store_true", help="also time each evaluation lever alone")
    parser.add_argument("--lever-images", type=int, default=100, help="images for the lever table (default 100)")
    parser.add_argument("--lever-iw-samples", type=int, default=1000, help="K for the lever table (default 1000)")
    parser.add_argument("--data-dir", default=str(MNIST_DIR), help="the MNIST IDX files")
    parser.add_argument("--images", type=int, default=10_000, help="test images to score (default 10000)")
    parser.add_argument("--iw-samples", type=int, default=5000, help="K (default 5000)")
    parser.add_argument("--batch-size", type=int, default=100, help="images per batch (default 100, as vaelab eval)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import vaelab
    from vaelab.config import DataConfig
    from vaelab.data import load_data
    from vaelab.data.base import Split
    from vaelab.evaluate import evaluate_split
    from vaelab.hardware import describe_machine

    print(describe_machine())
    model = vaelab.load(args.run) if args.run else fresh_model(args.arch)
    if (Path(args.data_dir) / "t10k-images-idx3-ubyte.gz").is_file():
        test = load_data(DataConfig(dataset="mnist", data_dir=args.data_dir)).test
        source = f"MNIST test images from {args.data_dir}"
    else:
        gen = torch.Generator().manual_seed(0)
        test = Split(torch.randint(0, 256, (10_000, 1, 28, 28), generator=gen, dtype=torch.uint8))
        source = "random grey images (MNIST files not found)"
    n = min(args.images, len(test))
    split = Split(test.images[:n], None if test.labels is None else test.labels[:n])

    started = time.perf_counter()
    result = evaluate_split(model, split, iw_samples=args.iw_samples, batch_size=args.batch_size,
                            dynamic_binarize=True)
    seconds = time.perf_counter() - started
    names = {"mlp": "fresh MLP 784-200-200-50 tanh, bernoulli",
             "conv": "fresh default conv (transposed 32-64-128, latent 16, bernoulli)"}
    params = sum(p.numel() for p in model.parameters())
    print(f"data: {source}; {n} images, dynamic binarisation, decoder {result['decoder_precision']}, "
          f"{args.threads} threads")
    label = "run " + args.run if args.run else names.get(args.arch, args.arch)
    print(f"model: {label}, {params / 1e6:.3f} M parameters")
    print(f"L_{args.iw_samples}: nll {result['nll']:.3f} nats, neg_elbo {result['neg_elbo']:.3f}, "
          f"active units {result['active_units']}")
    print(f"seconds: {seconds:.1f}")
    if n < 10_000:
        projected = seconds * 10_000 / n
        print(f"PROJECTED (measured on {n} images, scaled linearly) for 10000 images: {projected:.1f} s "
              f"= {projected / 3600:.2f} h; the full run: python benchmarks/eval_speed.py"
              f"{' --arch ' + args.arch if not args.run else ' --run ' + args.run}")
    if args.levers:
        k = min(args.lever_images, len(test))
        print(f"levers (L_{args.lever_iw_samples} over {k} images in batches of 100, each switched alone):")
        levers(model, Split(test.images[:k]), args.lever_iw_samples)


if __name__ == "__main__":
    main()
