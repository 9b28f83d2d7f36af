"""Training speed: vaelab against the usual plain-PyTorch recipe, on the same MNIST files.

`--arch mlp` (default) is the recipe below; `--arch conv` (and `--arch resnet`, once that
architecture is registered) trains vaelab's default network of that architecture (latent 16,
Bernoulli on grey pixels) against `plain_reference.py`: *exactly the same layers* (taken from
vaelab's registry) in the loop users write (per-sample Dataset + DataLoader,
BCE-with-logits summed, torch.optim.Adam). `--dataset cifar10` is the colour case
(../shared/datasets/cifar10-jpeg/train as a folder dataset, 32×32×3; the reference decodes the
JPEGs per sample as torchvision's ImageFolder does). Every run prints the CPU model and its flags.

The common recipe (pytorch/examples `vae/main.py`): MLP 784-400-20 ReLU, sigmoid output,
`F.binary_cross_entropy(..., reduction="sum")` on grey pixels + the closed-form KL, Adam 1e-3,
batch 128, data fed one sample at a time through a `Dataset` + `DataLoader`. The reference below
is our own re-implementation of that recipe; it reads the same IDX files with vaelab's reader.

What it prints:
1. Per epoch, alternating (vaelab epoch 1, reference epoch 1, vaelab epoch 2, ...) in one
   process so both see the same machine load: seconds per training epoch, the ratio, and both
   test losses after the last epoch (summed BCE + KL per image over the 10k test images; both
   draw one z per image, as the example's `test()` does).
2. The whole commands, start-up, data loading, evaluation and figures included: `vaelab train`
   against this file's `--reference-script` mode, each for `--command-epochs` epochs, as
   subprocesses, alternated `--repeats` times; wall seconds, the ratio, and each one's peak
   resident memory (ru_maxrss of the child).

vaelab holds out `--val-fraction` of the 60k training images for validation (default 0.1). For a
like-for-like comparison the benchmark holds out as few as allowed: `--val-fraction 0.0001`, i.e.
6 images, so vaelab trains on 59,994 images (469 batches per epoch, as the reference's 60,000).

    python benchmarks/train_speed.py                     # everything (about 4 minutes on 2 cores)
    python benchmarks/train_speed.py --skip-commands     # only the alternating per-epoch part
    python benchmarks/train_speed.py --reference-script --epochs 5   # the reference, standalone
    python benchmarks/train_speed.py --arch conv --epochs 4 --levers  # conv on MNIST, + its lever table
    python benchmarks/train_speed.py --arch conv --dataset cifar10 --epochs 3
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import unittest.mock
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # plain_reference.py, next to this file


def _shared_datasets() -> Path:
    """../shared/datasets from the repository (a worktree one level deeper finds /work/shared too)."""
    for root in (REPO.parent, REPO.parent.parent):
        if (root / "shared" / "datasets").is_dir():
            return root / "shared" / "datasets"
    return REPO.parent / "shared" / "datasets"


DEFAULT_DATA = _shared_datasets() / "mnist"
DEFAULT_CIFAR = _shared_datasets() / "cifar10-jpeg"
# The vaelab side of the recipe, as `vaelab train` flags.
VAELAB_FLAGS = [
    "--dataset", "mnist", "--arch", "mlp", "--hidden", "400", "--latent-dim", "20", "--likelihood", "bernoulli",
    "--binarize", "none", "--batch-size", "128", "--lr", "1e-3", "--val-fraction", "0.0001",
]


# ---- the reference: the recipe as pytorch/examples writes it ----------------------------------

class MnistSamples(torch.utils.data.Dataset):
    """One image at a time, as torchvision's MNIST + ToTensor hands them out: float (1, 28, 28) in [0, 1]."""

    def __init__(self, images, labels) -> None:
        self.images, self.labels = images, labels  # numpy uint8 (N, 28, 28), (N,)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        # torchvision goes through a PIL image; ToTensor then scales to [0, 1].
        import numpy as np
        from PIL import Image

        pil = Image.fromarray(self.images[i], mode="L")
        x = torch.from_numpy(np.array(pil, dtype=np.uint8)).float().div(255).unsqueeze(0)
        return x, int(self.labels[i])


class ReferenceVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def reference_loss(recon_x, x, mu, logvar):
    """Summed BCE over the batch + KL (Kingma & Welling 2013, Appendix B)."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


class Reference:
    """The example's globals (model, optimizer, loaders) and its `train` / `test` functions."""

    def __init__(self, data_dir: Path, seed: int = 1) -> None:
        from vaelab.data.idx import read_images_and_labels

        torch.manual_seed(seed)
        train_x, train_y = read_images_and_labels(data_dir / "train-images-idx3-ubyte.gz",
                                                  data_dir / "train-labels-idx1-ubyte.gz")
        test_x, test_y = read_images_and_labels(data_dir / "t10k-images-idx3-ubyte.gz",
                                                data_dir / "t10k-labels-idx1-ubyte.gz")
        self.train_loader = torch.utils.data.DataLoader(MnistSamples(train_x, train_y), batch_size=128, shuffle=True)
        self.test_loader = torch.utils.data.DataLoader(MnistSamples(test_x, test_y), batch_size=128, shuffle=False)
        self.model = ReferenceVAE()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def train(self, epoch: int, log_interval: int = 10) -> float:
        self.model.train()
        train_loss = 0.0
        for batch_idx, (data, _) in enumerate(self.train_loader):
            self.optimizer.zero_grad()
            recon_batch, mu, logvar = self.model(data)
            loss = reference_loss(recon_batch, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            self.optimizer.step()
            if batch_idx % log_interval == 0 and self.verbose:
                print(f"Train Epoch: {epoch} [{batch_idx * len(data)}/{len(self.train_loader.dataset)}]"
                      f"\tLoss: {loss.item() / len(data):.6f}")
        return train_loss / len(self.train_loader.dataset)

    def test(self) -> float:
        self.model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for data, _ in self.test_loader:
                recon_batch, mu, logvar = self.model(data)
                test_loss += reference_loss(recon_batch, data, mu, logvar).item()
        return test_loss / len(self.test_loader.dataset)

    verbose = False


def reference_script(data_dir: Path, epochs: int) -> None:
    """The whole reference program: load, then per epoch train and test, as the example does."""
    ref = Reference(data_dir)
    for epoch in range(1, epochs + 1):
        train_loss = ref.train(epoch)
        print(f"====> Epoch: {epoch} Average loss: {train_loss:.4f}")
        print(f"====> Test set loss: {ref.test():.4f}")


# ---- 1. per-epoch, alternating, in one process ------------------------------------------------

def alternate_epochs(flags: list[str], epochs: int, make_reference) -> dict[str, list[float] | float]:
    """Train vaelab (`vaelab train` FLAGS) and the reference epoch by epoch in turn; return their
    epoch times and test losses. `make_reference(cfg, data)` builds the reference's state."""
    from vaelab.cli.options import build_config, flag_overrides
    from vaelab.cli.train_cmd import register
    from vaelab.data import load_data
    from vaelab.evaluate import elbo_on_split
    from vaelab.training import train

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", *flags, "--epochs", str(epochs)])
    cfg = build_config(None, None, flag_overrides(args))
    data = load_data(cfg.data)
    ref = make_reference(cfg, data)
    result: dict[str, list[float] | float] = {"vaelab": [], "reference": []}

    def after_vaelab_epoch(row: dict, model: torch.nn.Module) -> None:
        result["vaelab"].append(row["seconds"])
        if row["epoch"] == epochs:
            result["vaelab_test"] = elbo_on_split(model, data.test)["loss"]
            result["parameters"] = sum(p.numel() for p in model.parameters())
        # The reference as the example is written: no subnormal flushing on this (main) thread. Its
        # worker thread keeps the flushing it inherited at start-up: that only helps the reference.
        torch.set_flush_denormal(False)
        started = time.perf_counter()
        ref.train(row["epoch"])
        result["reference"].append(time.perf_counter() - started)
        torch.set_flush_denormal(True)
        print(f"epoch {row['epoch']:2d}: vaelab {row['seconds']:.2f} s   reference {result['reference'][-1]:.2f} s",
              flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp) / "run", progress=False, data=data, hook=after_vaelab_epoch)
    result["reference_test"] = ref.test()
    return result


def report_epochs(res: dict, epochs: int, what: str) -> None:
    """The per-epoch summary lines (medians, ratio, test losses, peak memory)."""
    v_times, r_times = res["vaelab"], res["reference"]
    v_med, r_med = statistics.median(v_times), statistics.median(r_times)
    v_mean, r_mean = statistics.fmean(v_times), statistics.fmean(r_times)
    print(f"seconds per epoch (median / mean of {epochs}): vaelab {v_med:.2f} / {v_mean:.2f}, "
          f"reference {r_med:.2f} / {r_mean:.2f}")
    print(f"ratio (reference / vaelab): median {r_med / v_med:.2f}x, mean {r_mean / v_mean:.2f}x")
    print(f"test loss after {epochs} epochs ({what}): vaelab {res['vaelab_test']:.2f}, "
          f"reference {res['reference_test']:.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process (both trainers + both datasets): {peak:.0f} MiB")


# ---- image models: --arch conv / resnet ------------------------------------------------------

# vaelab's side as `vaelab train` flags (the data flags come from `image_data_flags`).
IMAGE_FLAGS = ["--latent-dim", "16", "--likelihood", "bernoulli", "--binarize", "none", "--batch-size", "128",
               "--lr", "1e-3", "--val-fraction", "0.0001"]
IMAGE_SHAPES = {"mnist": [1, 28, 28], "cifar10": [3, 32, 32]}


def image_data_flags(dataset: str, mnist_dir: Path, cifar_dir: Path) -> list[str]:
    if dataset == "mnist":
        return ["--dataset", "mnist", "--data-dir", str(mnist_dir)]
    return ["--dataset", "folder", "--data-dir", str(cifar_dir / "train"), "--image-size", "32", "--channels", "3"]


def image_flags(args) -> list[str]:
    return [*image_data_flags(args.dataset, args.data_dir, args.cifar_dir), "--arch", args.arch, *IMAGE_FLAGS,
            *args.vaelab_flag]


def reference_source(args, val_fraction: float) -> tuple:
    """Where the reference reads its per-sample data: the same files vaelab loads."""
    if args.dataset == "mnist":
        return ("mnist", args.data_dir)
    return ("folder", args.cifar_dir / "train", val_fraction)


def image_model_config(args):
    """The finalised model config of `vaelab train` with these flags, without loading the data."""
    from vaelab.cli.options import build_config, flag_overrides
    from vaelab.cli.train_cmd import register
    from vaelab.models.vae import resolve_hidden

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    cfg = build_config(None, None, flag_overrides(parser.parse_args(["train", *image_flags(args)])))
    cfg.model.image_shape = list(IMAGE_SHAPES[args.dataset])
    cfg.model.hidden = resolve_hidden(cfg.model)
    return cfg


def image_reference_script(args) -> None:
    """The whole reference program for an image model: load, then per epoch train and test."""
    from plain_reference import ImageReference

    cfg = image_model_config(args)
    ref = ImageReference(cfg.model, reference_source(args, cfg.data.val_fraction))
    for epoch in range(1, args.epochs + 1):
        print(f"====> Epoch: {epoch} Average loss: {ref.train(epoch):.4f}")
        print(f"====> Test set loss: {ref.test():.4f}")


def make_image_reference(args):
    def make(cfg, data):
        import copy

        from plain_reference import ImageReference
        from vaelab.training import finalize_config

        model_cfg = finalize_config(copy.deepcopy(cfg), data).model
        return ImageReference(model_cfg, reference_source(args, cfg.data.val_fraction))
    return make


# ---- 3. the levers, one at a time -------------------------------------------------------------

def lever_step_times(data_dir: Path, steps: int, rounds: int) -> None:
    """Milliseconds per training step of the vaelab recipe with each speed lever switched off
    (or on) alone, against the default fast path; variants alternate, `rounds` times each."""
    import math

    from vaelab.config import DataConfig, ModelConfig
    from vaelab.data import load_data
    from vaelab.data.batches import to_float
    from vaelab.distributed import StepLoss
    from vaelab.fused import FusedELBOStep
    from vaelab.models import VAE
    from vaelab.objectives import elbo_loss
    from vaelab.optim import Adam

    data = load_data(DataConfig(dataset="mnist", data_dir=str(data_dir), val_fraction=0.0001))
    model = VAE(ModelConfig(hidden=[400], latent_dim=20, likelihood="bernoulli", image_shape=[1, 28, 28]))
    ours = Adam(model.parameters(), lr=1e-3)
    torch_fused = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loop_adam = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=False)
    step_loss = StepLoss(model, elbo_loss, 1)
    fused_step = FusedELBOStep(model, "relu")
    images = data.train.images
    autograd_variants = {"autograd step (--step autograd)", "bf16 autocast (--precision bf16)"}

    def run(variant: str, n: int) -> None:
        order = torch.randperm(len(images))
        sums = torch.zeros(3, dtype=torch.float64)
        for i in range(n):
            idx = order[i * 128:(i + 1) * 128]
            x = to_float(images[idx] if variant == "images[idx] gather" else images.index_select(0, idx))
            if variant in autograd_variants:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.startswith("bf16")):
                    loss, parts = step_loss(x, None, 1.0, 128)
                ours.zero_grad(set_to_none=True)
                loss.backward()
            else:
                parts = fused_step(x, None, 1.0, 128)
            if variant == "norm + sync per step":  # the first loop: global norm, a host read, .cpu()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
                assert bool(torch.isfinite(parts.loss + norm))
                sums += torch.stack(parts[:3]).double().cpu()
            else:
                sums.add_(torch.stack(parts[:3]).double(), alpha=128)
                assert bool(torch.isfinite(sums[0]))
            if variant == "for-loop Adam":
                loop_adam.step()
            elif variant == "torch.optim.Adam(fused=True)":
                torch_fused.step()
            else:
                ours.step()

    variants = ["fast path (default)", "autograd step (--step autograd)", "torch.optim.Adam(fused=True)",
                "for-loop Adam",
                "images[idx] gather", "norm + sync per step", "bf16 autocast (--precision bf16)"]
    times: dict[str, list[float]] = {v: [] for v in variants}
    for v in variants:
        run(v, 5)  # warm-up
    for _ in range(rounds):
        for v in variants:
            started = time.perf_counter()
            run(v, steps)
            times[v].append((time.perf_counter() - started) / steps * 1e3)
    base = statistics.median(times[variants[0]])
    for v in variants:
        ms = statistics.median(times[v])
        print(f"  {v:34s} {ms:6.2f} ms/step  ({ms * 469 / 1e3:.2f} s/epoch)  {ms / base:5.2f}x the fast path")
    print(f"  (loss + gradients + Adam step of the MLP 784-400-20 recipe, {torch.get_num_threads()} threads, "
          f"median of {rounds} rounds x {steps} steps; evaluation and figures not included)")


def flush_lever(data_dir: Path, epochs: int = 3) -> None:
    """Milliseconds per step in the last of `epochs` epochs of `vaelab train`'s loop, with and
    without flushing subnormals. Measured in one thread (the setting is per thread and a worker
    thread keeps what it had when it was created), each from fresh weights: the slow-down only
    appears once Adam's moments for never-updated weights have decayed (~800 steps)."""
    from vaelab.cli.options import build_config
    from vaelab.data import load_data
    from vaelab.training import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = build_config(None, None, {"data.dataset": "mnist", "data.data_dir": str(data_dir), "model.hidden": [400],
                                    "model.latent_dim": 20, "model.likelihood": "bernoulli", "data.binarize": "none",
                                    "data.val_fraction": 0.0001, "train.epochs": epochs})
    data = load_data(cfg.data)
    seconds = {}
    for flush in (True, False):
        rows: list[float] = []
        torch.set_flush_denormal(flush)
        setting = functools.partial(torch.set_flush_denormal, flush)  # what training switches on, here
        with tempfile.TemporaryDirectory() as tmp, unittest.mock.patch("vaelab.runtime.enable_flush_denormals",
                                                                      setting):
            train(cfg, Path(tmp) / "run", progress=False, data=data,
                  hook=lambda row, _, rows=rows: rows.append(row["seconds"]))
        seconds[flush] = rows[-1]
    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)
    on, off = (seconds[f] / 469 * 1e3 for f in (True, False))
    print(f"  subnormals flushed (default) {on:6.2f} ms/step, not flushed {off:6.2f} ms/step in epoch {epochs} "
          f"(1 thread): {off / on:.2f}x slower without")


def figure_seconds(data_dir: Path) -> None:
    """Seconds to write a run's figures for the recipe's model (the tail of every `vaelab train`)."""
    from vaelab.config import DataConfig, ModelConfig
    from vaelab.data import load_data
    from vaelab.models import VAE

    fresh = "vaelab.plots" not in sys.modules
    started = time.perf_counter()
    from vaelab.plots import write_run_figures

    imported = f"{time.perf_counter() - started:.2f} s" if fresh else "(already imported)"
    data = load_data(DataConfig(dataset="mnist", data_dir=str(data_dir), val_fraction=0.0001))
    model = VAE(ModelConfig(hidden=[400], latent_dim=20, likelihood="bernoulli", image_shape=[1, 28, 28])).eval()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        write_run_figures(model, data, tmp)
        print(f"  figures: import matplotlib/plots {imported}, write the run's figures "
              f"{time.perf_counter() - started:.2f} s")


# ---- 2. whole commands as subprocesses --------------------------------------------------------

# A forked child reports at least its parent's resident size at the fork as its own peak
# (Linux keeps the pre-exec high-water mark), so each command is started from this small
# launcher, whose own footprint is a bare Python's: it times the command and reports its peak.
LAUNCHER = """
import os, subprocess, sys, time
started = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(time.perf_counter() - started, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def timed_child(cmd: list[str]) -> tuple[float, float]:
    """Run `cmd`; return (wall seconds, the command's peak resident memory in MiB)."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], capture_output=True, text=True)
    seconds, peak_kib, code = done.stdout.split()
    if int(code) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return float(seconds), int(peak_kib) / 1024  # Linux reports KiB


def whole_commands(flags: list[str], reference_cmd: list[str], epochs: int, repeats: int) -> None:
    """`vaelab train FLAGS` against the reference program, as timed subprocesses, alternated."""
    vaelab_bin = shutil.which("vaelab") or str(Path(sys.executable).with_name("vaelab"))
    times: dict[str, list[float]] = {"vaelab": [], "reference": []}
    memory: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            "vaelab": [vaelab_bin, "train", *flags, "--epochs", str(epochs), "--out", str(Path(tmp) / "run"),
                       "--force", "--quiet"],
            "reference": [sys.executable, __file__, "--reference-script", "--epochs", str(epochs), *reference_cmd,
                          "--threads", str(torch.get_num_threads())],
        }
        for name, cmd in commands.items():
            print(f"{name}: {' '.join(cmd)}")
        for repeat in range(repeats):
            for name, cmd in commands.items():
                seconds, peak = timed_child(cmd)
                times[name].append(seconds)
                memory[name] = max(memory.get(name, 0.0), peak)
                print(f"  run {repeat + 1}: {name:9s} {seconds:6.2f} s  peak RSS {peak:.0f} MiB", flush=True)
    # The fastest of each: other jobs on the machine only ever add time.
    v, r = min(times["vaelab"]), min(times["reference"])
    pairs = ", ".join(f"{rt / vt:.2f}x" for vt, rt in zip(times["vaelab"], times["reference"]))
    print(f"whole command, {epochs} epochs (fastest of {repeats}): vaelab {v:.2f} s, reference {r:.2f} s, "
          f"ratio {r / v:.2f}x (per alternation: {pairs})")
    print(f"peak resident memory: vaelab {memory['vaelab']:.0f} MiB, reference {memory['reference']:.0f} MiB")


def main() -> None:
    from vaelab.hardware import describe_machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mlp",
                        help="mlp (the pytorch/examples recipe, default), conv, or resnet once registered")
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "cifar10"),
                        help="image models: mnist (default) or cifar10 (../shared/datasets/cifar10-jpeg)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="the MNIST IDX files")
    parser.add_argument("--cifar-dir", type=Path, default=DEFAULT_CIFAR, help="CIFAR-10 as JPEG folders")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the alternating comparison")
    parser.add_argument("--command-epochs", type=int, default=None,
                        help="epochs of the whole-command comparison (default 5 for mlp, 1 for image models)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="alternations of the whole commands (default 2 for mlp, 1 for image models)")
    parser.add_argument("--skip-epochs", action="store_true", help="skip the per-epoch comparison")
    parser.add_argument("--skip-commands", action="store_true", help="skip the whole-command comparison")
    parser.add_argument("--reference-script", action="store_true", help="run only the reference program")
    parser.add_argument("--levers", action="store_true", help="also time each speed lever alone")
    parser.add_argument("--vaelab-flag", action="append", default=[], metavar="FLAG",
                        help="extra `vaelab train` flag(s), e.g. --vaelab-flag=--precision=bf16")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for both sides (0 = PyTorch's default: one per core)")
    args = parser.parse_args()
    image = args.arch != "mlp"
    if image:
        from vaelab.models import ARCHITECTURES

        if args.arch not in ARCHITECTURES:
            print(f"--arch {args.arch}: not registered in this vaelab (architectures: {', '.join(ARCHITECTURES)}); "
                  "nothing to measure")
            return
    elif args.dataset != "mnist":
        parser.error("the mlp recipe is MNIST's; --dataset cifar10 is for --arch conv / resnet")
    if not args.reference_script:
        from vaelab.runtime import enable_flush_denormals

        enable_flush_denormals()  # as `vaelab train` does first thing (see vaelab.runtime)
    if args.threads:
        torch.set_num_threads(args.threads)
        args.vaelab_flag = [*args.vaelab_flag, f"--threads={args.threads}"]
    if args.reference_script:
        if image:
            image_reference_script(args)
        else:
            reference_script(args.data_dir, args.epochs)
        return

    print(describe_machine())
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    if image:
        flags = image_flags(args)
        what = f"BCE-with-logits summed + KL, per image, {args.dataset} test images"
        make_reference = make_image_reference(args)
        reference_cmd = ["--arch", args.arch, "--dataset", args.dataset, "--data-dir", str(args.data_dir),
                         "--cifar-dir", str(args.cifar_dir), *(f"--vaelab-flag={f}" for f in args.vaelab_flag)]
    else:
        flags = [*VAELAB_FLAGS, "--data-dir", str(args.data_dir), *args.vaelab_flag]
        what = "BCE summed + KL, per image, 10k test images"
        make_reference = lambda cfg, data: Reference(args.data_dir)  # noqa: E731
        reference_cmd = ["--data-dir", str(args.data_dir)]
    print(f"vaelab train {' '.join(flags)}")
    if not args.skip_epochs:
        res = alternate_epochs(flags, args.epochs, make_reference)
        if image:
            print(f"network: vaelab's --arch {args.arch} default, {res['parameters'] / 1e6:.3f} M parameters "
                  f"(the reference trains the same modules)")
        report_epochs(res, args.epochs, what)
    if args.levers:
        print("levers (each switched alone):")
        if image:
            from conv_levers import image_lever_table

            image_lever_table(flags, steps=20, rounds=3)
        else:
            lever_step_times(args.data_dir, steps=100, rounds=3)
            flush_lever(args.data_dir)
            figure_seconds(args.data_dir)
    if not args.skip_commands:
        epochs = args.command_epochs or (1 if image else 5)
        repeats = args.repeats or (1 if image else 2)
        whole_commands(flags, reference_cmd, epochs, repeats)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
