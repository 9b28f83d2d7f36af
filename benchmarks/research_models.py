"""Reproductions of the research models against their papers (docs/research-models.md).

Each reproduction is a `vaelab train` command with the paper's protocol as far as vaelab has it,
followed by `vaelab eval` (K = 5000 importance samples by default). A run that exists already is
continued to `--epochs` with `vaelab train --resume RUN --epochs N` (the same schedule, so a
short run and its continuation equal one long run). Prints the CPU, the commands, the training
time (the sum of the epochs' `seconds` in metrics.jsonl) and the numbers of eval.json.

    python benchmarks/research_models.py vamp --epochs 100 --out runs/vamp-mlp       # VampPrior, 1 layer
    python benchmarks/research_models.py normal --epochs 100 --out runs/normal-mlp   # its standard-prior baseline
    python benchmarks/research_models.py iaf --epochs 100 --out runs/iaf-mlp         # the same with an IAF posterior
    python benchmarks/research_models.py hvae --epochs 100 --out runs/hvae-2layer    # 2 stochastic layers
    python benchmarks/research_models.py vamp --quick --out /tmp/q                   # 2 epochs on digits, K = 10

Long runs belong under the shared CPU lock: `flock /tmp/vaelab-cpu.lock python benchmarks/...`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

# The shared MNIST files: the nearest ../shared/datasets/mnist above this checkout (main or a worktree).
MNIST_DIR = next((p / "shared" / "datasets" / "mnist" for p in Path(__file__).resolve().parents
                  if (p / "shared" / "datasets" / "mnist").is_dir()), Path("shared/datasets/mnist"))
MNIST = ["--dataset", "mnist", "--binarize", "dynamic", "--likelihood", "bernoulli"]
# Tomczak & Welling 2018's one-layer MLP protocol, shared by the vamp, normal and iaf rows.
TOMCZAK_MLP = [*MNIST, "--hidden", "300,300", "--activation", "tanh", "--latent-dim", "40", "--batch-size", "100",
               "--lr", "5e-4", "--kl-warmup", "100"]

# name -> (paper, paper's number in nats, the paper's epochs, the training flags). A run whose flags
# start with --preset iwae-paper-vae follows the IWAE paper's learning-rate schedule unscaled (a
# config file gives it with the run's epochs), so a short run is the start of the paper's.
REPRODUCTIONS: dict[str, tuple[str, float, int, list[str]]] = {
    # Tomczak & Welling 2018, Table 2 "VampPrior" (L = 1): MLP with two hidden layers of 300 units
    # (the paper's are gated; vaelab's are tanh), z = 40, K = 500 pseudo-inputs, Adam lr 5e-4,
    # batch 100, KL warm-up over 100 epochs, at most 2000 epochs (early stopping, look-ahead 50).
    "vamp": ("Tomczak & Welling 2018, VampPrior, 1 layer, MLP", 85.57, 2000,
             [*TOMCZAK_MLP, "--prior", "vamp", "--prior-components", "500"]),
    # The same protocol with the standard normal prior: the paper's "VAE (L = 1) + standard" row of
    # Table 2 (dynamic MNIST), the baseline the VampPrior is measured against.
    "normal": ("Tomczak & Welling 2018, standard prior, 1 layer, MLP", 88.56, 2000,
               [*TOMCZAK_MLP, "--prior", "normal"]),
    # The same protocol with the normal prior and an IAF posterior (Kingma et al. 2016). Their MNIST
    # numbers are for a convolutional ResNet VAE, not this MLP, so there is no paper number to print:
    # the comparison is with the "normal" row trained the same way.
    "iaf": ("Kingma et al. 2016, IAF posterior, on the MLP protocol above", math.nan, 2000,
            [*TOMCZAK_MLP, "--prior", "normal", "--posterior", "iaf"]),
    # Burda et al. 2015, Table 1, VAE with 2 stochastic layers (85.33 nats; IWAE k=50: 82.90):
    # 784-100-100-z1(100)-50-50-z2(50), tanh, Adam eps 1e-4, batch 20, 3^i passes at lr 1e-3 * 10^(-i/7).
    # vaelab's ladder: the same layer sizes with Ladder-VAE top-down inference and one 100-wide
    # layer between z1 and z2; ELU (tanh nets sit on the mean-image plateau for epochs), batch 100,
    # KL warm-up over 10 epochs (Sønderby et al. 2016), the paper's learning-rate schedule.
    "hvae": ("Burda et al. 2015, VAE, 2 stochastic layers, MLP", 85.33, 3280,
             ["--preset", "iwae-paper-vae", "--hidden", "100,100", "--activation", "elu", "--latent-layers", "2",
              "--layer-dims", "100,50", "--ladder-hidden", "100", "--batch-size", "100", "--kl-warmup", "10"]),
}


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux) and the number of cores."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def run(command: list[str]) -> None:
    print("$ " + shlex.join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        sys.exit(f"failed: {shlex.join(command)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(REPRODUCTIONS))
    parser.add_argument("--out", required=True, help="the run folder (continued when it exists)")
    parser.add_argument("--epochs", type=int, default=100, help="total epochs to train to (default 100)")
    parser.add_argument("--iw-samples", type=int, default=5000, help="K of vaelab eval's bound (default 5000)")
    parser.add_argument("--data-dir", default=str(MNIST_DIR), help="the MNIST IDX files")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    parser.add_argument("--no-fid", action="store_true", help="vaelab eval --no-fid: the bound only, no classifier")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 epochs on the digits dataset, K = 10")
    args = parser.parse_args()
    paper, number, paper_epochs, flags = REPRODUCTIONS[args.model]
    vaelab = [sys.executable, "-m", "vaelab"]
    out = Path(args.out)
    if args.quick:  # the bundled 8x8 digits, 10 pseudo-inputs
        flags = [{"mnist": "digits", "500": "10"}.get(f, f) for f in flags] + ["--dataset", "digits"]
        args.epochs, args.iw_samples = 2, 10
    else:
        flags = [*flags, "--data-dir", args.data_dir]
    print(f"cpu: {cpu_model()}; {args.threads} thread(s)", flush=True)
    if (out / "checkpoint.safetensors").is_file():
        run([*vaelab, "train", "--resume", str(out), "--epochs", str(args.epochs), "--quiet"])
    else:
        length = ["--epochs", str(args.epochs)]
        if "iwae-paper-vae" in flags:  # the paper's schedule, unscaled, for the first --epochs passes
            from vaelab.presets import iwae_schedule

            schedule = out.parent / f"{out.name}-schedule.toml"
            out.parent.mkdir(parents=True, exist_ok=True)
            schedule.write_text(f"[train]\nepochs = {args.epochs}\nlr_schedule = \"piecewise\"\n"
                                f"lr_segments = {iwae_schedule()}\n")
            length = ["--config", str(schedule)]
            print(f"{schedule}: {schedule.read_text()}", flush=True)
        run([*vaelab, "train", *flags, *length, "--threads", str(args.threads), "--out", str(out), "--quiet"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds = sum(r["seconds"] for r in rows)
    print(f"trained {rows[-1]['epoch']} epochs in {seconds:.0f} s ({rows[-1]['epoch'] / paper_epochs:.1%} of the "
          f"paper's {paper_epochs}); last val -ELBO {rows[-1]['val_loss']:.2f}", flush=True)
    if args.no_eval:
        return
    no_fid = ["--no-fid"] if args.no_fid else []
    run([*vaelab, "eval", str(out), "--iw-samples", str(args.iw_samples), "--quiet", *no_fid])
    result = json.loads((out / "eval.json").read_text())
    paper_text = "no paper number for this protocol" if math.isnan(number) else f"paper {number:.2f} nats"
    print(f"{paper}: {paper_text}; vaelab -L_{result['iw_samples']} = {result['nll']:.2f} "
          f"± {result['nll_std_error']:.2f}, -ELBO {result['neg_elbo']:.2f}, KL per layer "
          f"{result.get('kl_per_layer')}, active units {result['active_units']}/{result['latent_dim']}, "
          f"FID {result.get('fid')}, eval {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
