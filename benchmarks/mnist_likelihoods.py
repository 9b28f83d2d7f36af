"""MNIST likelihoods with the image models: grey MNIST under the discretized logistic, and
dynamically binarised MNIST with the ResNet and a Bernoulli decoder.

- `--task grey-logistic`: `vaelab train --dataset mnist --binarize none --likelihood logistic
  <flags>`, scored on the 10,000 grey test images: bits/dim (exact: the logistic is a likelihood of
  the 8-bit values), -L_K, PSNR and SSIM of decode(E_q[z]).
- `--task binary-resnet`: `vaelab train --dataset mnist --binarize dynamic --arch resnet
  --likelihood bernoulli --latent-dim 32 <flags>`, scored with the importance-weighted bound L_K on test images
  binarised the same way (the protocol of Burda et al. 2015), and the command that continues the
  run (`vaelab train --resume RUN --epochs N`).

Both run `vaelab train` as a subprocess (unless `--run` names a trained run) and score with
`vaelab.evaluate.evaluate_split`, the pass `vaelab eval` makes, on all test images or a seeded
random `--test-images` of them.

    python benchmarks/mnist_likelihoods.py --task grey-logistic --flags "--arch mlp --latent-dim 32 --epochs 20"
    python benchmarks/mnist_likelihoods.py --task binary-resnet --flags "--hidden 16,32,64 --blocks 1 --epochs 2" \\
        --iw-samples 100 --test-images 1000
    python benchmarks/mnist_likelihoods.py --task grey-logistic --quick     # 1 epoch on 600 images: a check
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from cifar10 import cpu_model, train_capped

REPO = Path(__file__).resolve().parents[1]
MNIST = next((d / "shared" / "datasets" / "mnist" for d in (REPO.parent, REPO.parent.parent)
              if (d / "shared" / "datasets" / "mnist").is_dir()), REPO.parent / "shared" / "datasets" / "mnist")
TASKS = {
    "grey-logistic": ["--binarize", "none", "--likelihood", "logistic"],
    # A 32-d code as the ResNet VAE of Kingma et al. 2016 (MNIST's own default is the paper's 2-d one).
    "binary-resnet": ["--binarize", "dynamic", "--arch", "resnet", "--likelihood", "bernoulli", "--latent-dim", "32"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--data-dir", default=str(MNIST))
    p.add_argument("--run", help="score this run instead of training one")
    p.add_argument("--out", help="where to train the run (default runs/mnist-<task>)")
    p.add_argument("--flags", default="", help="further vaelab train flags (quoted, one string)")
    p.add_argument("--iw-samples", type=int, default=100, help="K of the bound L_K (default 100)")
    p.add_argument("--test-images", type=int, default=10_000, help="test images to score (default all 10,000)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-minutes", type=float, help="stop training after this long, at the last whole epoch")
    p.add_argument("--quick", action="store_true", help="1 epoch on a few hundred images: a check that it runs")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {args.threads} threads", flush=True)

    import vaelab
    from vaelab.data import load_data
    from vaelab.data.base import Split
    from vaelab.evaluate import evaluate_split
    from vaelab.runs import read_metrics

    tmp = tempfile.TemporaryDirectory(prefix="vaelab-mnist-")
    flags = shlex.split(args.flags)
    data_dir, n_test = args.data_dir, args.test_images
    if args.quick:  # a small IDX copy: 600 training and 100 test images
        import gzip

        import numpy as np

        from vaelab.data.idx import parse_idx

        data_dir = Path(tmp.name) / "mnist"
        data_dir.mkdir()
        for prefix, n in (("train", 600), ("t10k", 100)):
            for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
                source = Path(args.data_dir) / f"{prefix}-{kind}.gz"
                array = parse_idx(gzip.decompress(source.read_bytes()), str(source))[:n]
                header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
                payload = header + np.ascontiguousarray(array).tobytes()
                (data_dir / f"{prefix}-{kind}.gz").write_bytes(gzip.compress(payload))
        flags, n_test = ["--hidden", "8,16", "--blocks", "1", "--latent-dim", "8", "--epochs", "1"], 100
    run = Path(args.run) if args.run else Path(args.out or (Path(tmp.name) / "run" if args.quick
                                                            else f"runs/mnist-{args.task}"))
    if not args.run:
        command = [sys.executable, "-m", "vaelab", "train", "--dataset", "mnist", "--data-dir", str(data_dir),
                   "--threads", str(args.threads), *TASKS[args.task], *flags, "--out", str(run), "--quiet"]
        print("$ " + " ".join(shlex.quote(c) for c in command[2:]), flush=True)
        started = time.perf_counter()
        train_capped(command, run, args.max_minutes)
        print(f"train command: {time.perf_counter() - started:.0f} s wall", flush=True)
    model = vaelab.load(run)
    cfg = model.run_config
    from dataclasses import replace

    test = load_data(replace(cfg.data, data_dir=str(data_dir)) if args.quick else cfg.data).test
    if n_test < len(test):
        idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:n_test].sort().values
        test = Split(test.images[idx], test.labels[idx])
    dynamic = cfg.data.binarize == "dynamic"
    started = time.perf_counter()
    r = evaluate_split(model, test, iw_samples=args.iw_samples, batch_size=args.batch_size, dynamic_binarize=dynamic)
    seconds = time.perf_counter() - started
    metrics = read_metrics(run / "metrics.jsonl")
    train_seconds = sum(m["seconds"] for m in metrics)
    m = cfg.model
    print(f"[{args.task}] {run}: {m.arch} hidden {m.hidden}" + (f" blocks {m.blocks}" if m.arch == "resnet" else "")
          + f", latent {m.latent_dim}, {m.likelihood}, binarize {cfg.data.binarize}, "
          f"{sum(t.numel() for t in model.parameters()) / 1e6:.2f}M parameters")
    print(f"[{args.task}] trained {len(metrics)} epochs ({metrics[-1]['step']} steps) in {train_seconds:.0f} s "
          f"({train_seconds / 60:.1f} min)")
    print(f"[{args.task}] test images: {r['num_images']}; nll -L_{args.iw_samples} {r['nll']:.2f} ± "
          f"{r['nll_std_error']:.2f} nats; neg_elbo {r['neg_elbo']:.2f} (kl {r['kl']:.2f}); bits/dim "
          + (f"{r['bits_per_dim']:.4f} ({r['bits_per_dim_kind']})" if r["bits_per_dim"] is not None else "-")
          + f"; psnr {r['psnr']:.2f} dB; ssim {r['ssim']:.4f}; active units {r['active_units']}/{r['latent_dim']}; "
          f"{seconds:.0f} s to score", flush=True)
    if r["bits_per_dim_kind"] == "exact":
        print(f"[{args.task}] bits/dim standard error over images: {r['nll_std_error'] / (784 * math.log(2)):.4f}")
    print(f"[{args.task}] continue with: vaelab train --resume {run} --epochs {len(metrics) + 10}")
    print(f"[{args.task}] json: " + json.dumps({"run": str(run), "train_seconds": train_seconds, "epochs": len(metrics),
                                                **{k: v for k, v in r.items() if k != "unit_variances"}}))
    tmp.cleanup()


if __name__ == "__main__":
    main()
