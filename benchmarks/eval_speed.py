"""Evaluation speed: the importance-weighted bound L_K over the MNIST test set, on the CPU.

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
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained run to time instead of a fresh MLP 784-200-200-50")
    parser.add_argument("--data-dir", default=str(MNIST_DIR), help="the MNIST IDX files")
    parser.add_argument("--images", type=int, default=10_000, help="test images to score (default 10000)")
    parser.add_argument("--iw-samples", type=int, default=5000, help="K (default 5000)")
    parser.add_argument("--batch-size", type=int, default=100, help="images per batch (default 100, as vaelab eval)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import vaelab
    from vaelab.config import DataConfig, ModelConfig
    from vaelab.data import load_data
    from vaelab.data.base import Split
    from vaelab.evaluate import evaluate_split
    from vaelab.models import VAE

    if args.run:
        model = vaelab.load(args.run)
    else:
        torch.manual_seed(0)
        model = VAE(ModelConfig(arch="mlp", hidden=[200, 200], latent_dim=50, activation="tanh",
                                likelihood="bernoulli", image_shape=[1, 28, 28])).eval()
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
    print(f"data: {source}; {n} images, dynamic binarisation, float32, {args.threads} threads")
    print(f"model: {'run ' + args.run if args.run else 'fresh MLP 784-200-200-50 tanh, bernoulli'}")
    print(f"L_{args.iw_samples}: nll {result['nll']:.3f} nats, neg_elbo {result['neg_elbo']:.3f}, "
          f"active units {result['active_units']}")
    print(f"seconds: {seconds:.1f}")
    if n < 10_000:
        print(f"projected for 10000 images: {seconds * 10_000 / n:.1f} s")


if __name__ == "__main__":
    main()
