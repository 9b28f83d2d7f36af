"""Time per training step of vaelab's conv layouts against MONAI's VarAutoEncoder of the same size.

MONAI 1.6.1 `VarAutoEncoder(spatial_dims=2, channels=(32, 64, 128), strides=(2, 2, 2), latent 16)`
(instance norm + PReLU after each convolution; `pip install monai==1.6.1`, skipped when absent)
against `--conv-layout transposed` (the default), the same with instance norm after each hidden
convolution (MONAI's normalisation alone), and `resize` (the layout before config version 2),
each also with channels-last weights. One step = BCE-with-logits summed + KL, backward, vaelab's
Adam, batch 128, random images; variants alternate `--rounds` times. MONAI's decoder returns
32×32 for a 28×28 input: its output is cropped to 28×28; it is built with `use_sigmoid=False`, so
its output is logits like vaelab's.

`--train-epochs E` trains instead: the default layout, `resize` and MONAI's network each for E
epochs on real data (`--dataset mnist`, or `cifar10`: the JPEG folder at 32×32×3) with the same
step (BCE-with-logits summed + KL, vaelab's Adam lr 1e-3, batch 128, the same seeded batch order),
one network after the other, and prints seconds per epoch, the test loss (the same negative ELBO,
one posterior draw per image, seeded) and the PSNR of the reconstructions sigmoid(decode(E_q[z]))
on the test split: whether the lighter default trains as well as the peer.

    python benchmarks/conv_layouts.py --threads 1
    python benchmarks/conv_layouts.py --train-epochs 3 --dataset mnist
    python benchmarks/conv_layouts.py --train-epochs 2 --dataset cifar10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn


class VaelabNet(nn.Module):
    def __init__(self, shape, layout: str, instance_norm: bool = False) -> None:
        super().__init__()
        from vaelab.config import ModelConfig
        from vaelab.models import VAE

        self.vae = VAE(ModelConfig(arch="conv", conv_layout=layout, latent_dim=16, likelihood="bernoulli",
                                   image_shape=list(shape)))
        if instance_norm:  # after every hidden conv's activation, as MONAI's ADN blocks normalise
            for seq in (self.vae.encoder.convs, self.vae.decoder.convs):
                layers = []
                for m in seq:
                    layers.append(m)
                    if isinstance(m, nn.ReLU):
                        prev = [x for x in layers if isinstance(x, (nn.Conv2d, nn.ConvTranspose2d))][-1]
                        layers.append(nn.InstanceNorm2d(prev.out_channels))
                seq._modules = {str(i): m for i, m in enumerate(layers)}

    def forward(self, x):
        q = self.vae.encode(x)
        return self.vae.decoder(q.sample(), None), q.mean, q.log_var

    def reconstruct(self, x):
        """Logits of decode(E_q[z])."""
        return self.vae.decoder(self.vae.encode(x).mean, None)


class MonaiNet(nn.Module):
    def __init__(self, shape) -> None:
        super().__init__()
        from monai.networks.nets import VarAutoEncoder

        self.net = VarAutoEncoder(spatial_dims=2, in_shape=tuple(shape), out_channels=shape[0], latent_size=16,
                                  channels=(32, 64, 128), strides=(2, 2, 2), use_sigmoid=False)
        self.size = shape[1:]

    def forward(self, x):
        mu, logvar = self.net.encode_forward(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # the same draw in train and eval mode
        return self._crop(self.net.decode_forward(z, use_sigmoid=False)), mu, logvar

    def reconstruct(self, x):
        return self._crop(self.net.decode_forward(self.net.encode_forward(x)[0], use_sigmoid=False))

    def _crop(self, logits):
        return logits[..., : self.size[0], : self.size[1]]


def negative_elbo(net, x):
    """BCE-with-logits summed + KL(q || N(0, I)) over the batch (one posterior draw per image)."""
    logits, mu, logvar = net(x)
    return (F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            + 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum())


def load_images(dataset: str):
    """(train uint8 (N, C, H, W), test uint8) of vaelab's splits of MNIST or the CIFAR-10 JPEG folder."""
    from pathlib import Path

    from vaelab.config import DataConfig
    from vaelab.data import load_data

    shared = next(p / "shared" / "datasets" for p in Path(__file__).resolve().parents if (p / "shared").is_dir())
    if dataset == "mnist":
        cfg = DataConfig(dataset="mnist", data_dir=str(shared / "mnist"), val_fraction=0.0001)
    else:
        cfg = DataConfig(dataset="folder", data_dir=str(shared / "cifar10-jpeg" / "train"), image_size=32,
                         channels=3, val_fraction=0.0001)
    data = load_data(cfg)
    test = data.test if data.test is not None else data.val
    return torch.as_tensor(data.train.images), torch.as_tensor(test.images)


def train_comparison(nets: dict, dataset: str, epochs: int) -> None:
    from vaelab.optim import Adam

    train, test = load_images(dataset)
    shape = list(train.shape[1:])
    print(f"{dataset}: {len(train)} training and {len(test)} test images of shape {shape}; {epochs} epochs each")
    for name, make in nets.items():
        torch.manual_seed(0)
        net = make(shape)
        if name != "MONAI VarAutoEncoder":  # MONAI's network is faster in NCHW (the step table)
            net = net.to(memory_format=torch.channels_last)
        opt = Adam(net.parameters(), lr=1e-3)
        order_gen = torch.Generator().manual_seed(1)
        seconds = []
        for _ in range(epochs):
            started = time.perf_counter()
            net.train()
            for idx in torch.randperm(len(train), generator=order_gen).split(128):
                x = train.index_select(0, idx).float().div_(255)
                loss = negative_elbo(net, x) / len(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            seconds.append(time.perf_counter() - started)
        net.eval()
        total = psnr_sum = 0.0
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(2)
            for batch in test.split(500):
                x = batch.float().div_(255)
                total += float(negative_elbo(net, x))
                mse = (torch.sigmoid(net.reconstruct(x)) - x).square().flatten(1).mean(1)
                psnr_sum += float((10 * torch.log10(1 / mse.clamp_min(1e-10))).sum())
        params = sum(p.numel() for p in net.parameters())
        print(f"  {name:34s} {params / 1e6:6.3f} M params  {statistics.median(seconds):7.1f} s/epoch (median)  "
              f"test loss {total / len(test):9.2f}  PSNR {psnr_sum / len(test):6.2f} dB")
    print(f"  ({torch.get_num_threads()} threads; test loss = BCE-with-logits summed + KL per image, lower is "
          "better; PSNR of sigmoid(decode(E_q[z])) per image, mean)")


def main() -> None:
    from vaelab.hardware import describe_machine
    from vaelab.optim import Adam

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = one per core)")
    parser.add_argument("--shape", default="1,28,28", help="C,H,W (default 1,28,28; CIFAR-10: 3,32,32)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-epochs", type=int, default=0,
                        help="train each network this many epochs on --dataset instead of timing steps")
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "cifar10"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    shape = [int(v) for v in args.shape.split(",")]
    print(describe_machine())
    if args.train_epochs:
        trained = {"transposed (default), channels-last": lambda s: VaelabNet(s, "transposed"),
                   "resize (old default), channels-last": lambda s: VaelabNet(s, "resize")}
        try:
            import monai  # noqa: F401

            trained["MONAI VarAutoEncoder"] = MonaiNet
        except ImportError:
            print("MONAI is not installed: its row is skipped (pip install monai==1.6.1)")
        train_comparison(trained, args.dataset, args.train_epochs)
        return
    nets = {"transposed (default)": lambda: VaelabNet(shape, "transposed"),
            "transposed + instance norm": lambda: VaelabNet(shape, "transposed", instance_norm=True),
            "resize (before config version 2)": lambda: VaelabNet(shape, "resize")}
    try:
        import monai  # noqa: F401

        nets["MONAI VarAutoEncoder"] = lambda: MonaiNet(shape)
    except ImportError:
        print("MONAI is not installed: its row is skipped (pip install monai==1.6.1)")
    x = torch.rand(128, *shape)
    steps, params = {}, {}
    for name, make in nets.items():
        for channels_last in (False, True):
            torch.manual_seed(0)
            net = make()
            if channels_last:
                net = net.to(memory_format=torch.channels_last)
            opt = Adam(net.parameters(), lr=1e-3)

            def step(net=net, opt=opt):
                loss = negative_elbo(net, x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            label = f"{name}{', channels-last' if channels_last else ''}"
            steps[label], params[label] = step, sum(p.numel() for p in net.parameters())
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - started) / args.steps * 1e3)
    base = statistics.median(times["transposed (default), channels-last"])
    for name, t in times.items():
        ms = statistics.median(t)
        print(f"  {name:45s} {params[name] / 1e6:6.3f} M params  {ms:7.1f} ms/step  {ms / base:5.2f}x the default")
    print(f"  (shape {shape}, batch 128, {torch.get_num_threads()} threads, median of {args.rounds} alternating "
          f"rounds x {args.steps} steps)")


if __name__ == "__main__":
    main()
