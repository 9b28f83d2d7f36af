"""Does steering the latent space work? Edit success vs a random direction, and conditional accuracy.

On real MNIST, with a classifier as the judge (vaelab's own CNN from `vaelab.classifier`, or
logistic regression on pixels with --classifier logreg):

(a) attribute edits: for test images of class a and a random target class b != a, move the
    posterior mean by strength × (mean code of class b − mean code of class a) (class means over
    10,000 training images) and decode; success = the classifier says b. The control moves the
    same code by a random direction of the same norm.
(b) conditional samples: decode z ~ N(0, I) with label y; accuracy = how often the classifier says y.

Runs that are missing are trained first, briefly (--epochs), into the given folders.

    python benchmarks/latent_quality.py            # from the repo root; MNIST in ../shared/datasets/mnist
    python benchmarks/latent_quality.py --plain-runs /work/runs/mnist-paper /work/runs/mnist-z16-latent
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import vaelab
from vaelab import latent
from vaelab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaelab.data import load_data
from vaelab.data.batches import to_float


def ensure_run(path: Path, data, data_dir: str, latent_dim: int, conditional: bool, epochs: int) -> Path:
    """Train `path` (MLP 512,256, gaussian likelihood) unless it already holds a trained model."""
    if (path / "model.safetensors").is_file():
        return path
    cfg = RunConfig(DataConfig(dataset="mnist", data_dir=data_dir),
                    ModelConfig(latent_dim=latent_dim, hidden=[512, 256], conditional=conditional),
                    TrainConfig(epochs=epochs, seed=0))
    started = time.perf_counter()
    vaelab.train(cfg, path, data=data, progress=False)
    print(f"trained {path} ({epochs} epochs, latent {latent_dim}{', conditional' if conditional else ''}) "
          f"in {time.perf_counter() - started:.0f}s")
    return path


def make_judge(kind: str, data):
    """-> (predict(images float (N, C, H, W)) -> labels (N,), description)."""
    test_x, test_y = to_float(data.test.images), data.test.labels
    if kind == "cnn":
        from vaelab.classifier import get_classifier, predict

        net, _meta = get_classifier(data, "mnist")

        def judge(x: torch.Tensor) -> torch.Tensor:
            return predict(net, x)

        name = "vaelab CNN classifier"
    else:
        from sklearn.linear_model import LogisticRegression

        sub = latent.subsample(data.train, 20_000)
        clf = LogisticRegression(max_iter=200).fit(to_float(sub.images).flatten(1).numpy(), sub.labels.numpy())

        def judge(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(clf.predict(x.flatten(1).numpy()))

        name = "logistic regression on pixels (20k training images)"
    accuracy = (judge(test_x) == test_y).float().mean().item()
    print(f"judge: {name}; accuracy on real test images {accuracy:.3f}")
    return judge


@torch.inference_mode()
def edit_benchmark(run: Path, data, judge, n: int, strengths: list[float], seed: int) -> None:
    model = vaelab.load(run)
    test = latent.subsample(data.test, n, seed)
    codes = latent.encode_split(model, test).mean  # (n, D)
    train = latent.encode_split(model, latent.subsample(data.train, 10_000, seed))
    means = torch.stack([latent.class_mean(train, c) for c in range(10)])  # (10, D)
    gen = torch.Generator().manual_seed(seed)
    a = test.labels
    b = (a + torch.randint(1, 10, a.shape, generator=gen)) % 10  # a random other class per image
    direction = means[b] - means[a]  # (n, D)
    control = torch.stack([latent.random_direction(d, gen) for d in direction])
    recon_acc = (judge(model.decode_images(codes)) == a).float().mean().item()
    print(f"\n{run} (latent {model.latent_dim}): judge accuracy on reconstructions {recon_acc:.3f}")
    print(f"  strength   edit → target   random direction → target   (n = {n})")
    for s in strengths:
        edit = (judge(model.decode_images(codes + s * direction)) == b).float().mean().item()
        rand = (judge(model.decode_images(codes + s * control)) == b).float().mean().item()
        print(f"  {s:8.2f}   {edit:13.3f}   {rand:26.3f}")


@torch.inference_mode()
def conditional_benchmark(run: Path, judge, per_class: int, seed: int) -> None:
    model = vaelab.load(run)
    accs = []
    for y in range(model.num_classes):
        images = latent.sample_images(model, per_class, label=y, seed=seed + y).images
        accs.append((judge(images) == y).float().mean().item())
    print(f"\n{run} (conditional, latent {model.latent_dim}): samples classified as their label "
          f"{sum(accs) / len(accs):.3f} (chance 0.100; {per_class} per class)")
    print("  per class: " + " ".join(f"{y}:{acc:.2f}" for y, acc in enumerate(accs)))


def main() -> None:
    from vaelab.hardware import describe_machine

    print(describe_machine(), flush=True)  # speed depends on the CPU model: every benchmark says which
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/datasets/mnist")
    parser.add_argument("--plain-runs", nargs="+", type=Path,
                        default=[Path("/work/runs/mnist-paper")])
    parser.add_argument("--conditional-run", type=Path, default=Path("/work/runs/mnist-cvae-latent"))
    parser.add_argument("--epochs", type=int, default=3, help="for runs that must be trained first")
    parser.add_argument("--train-latent-dim", type=int, default=16, help="latent size of plain runs trained here")
    parser.add_argument("--classifier", choices=("cnn", "logreg"), default="cnn")
    parser.add_argument("-n", type=int, default=2000, help="test images edited per run")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.5, 1.0, 1.5])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscribing shared cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_data(DataConfig(dataset="mnist", data_dir=args.data_dir))
    for run in args.plain_runs:
        ensure_run(run, data, args.data_dir, args.train_latent_dim, False, args.epochs)
    ensure_run(args.conditional_run, data, args.data_dir, 2, True, args.epochs)
    judge = make_judge(args.classifier, data)
    for run in args.plain_runs:
        edit_benchmark(run, data, judge, args.n, args.strengths, args.seed)
    conditional_benchmark(args.conditional_run, judge, args.n // 10, args.seed)


if __name__ == "__main__":
    main()
