"""Time per training step of vaelab's conv layouts against MONAI's VarAutoEncoder of the same size.

MONAI 1.6.1 `VarAutoEncoder(spatial_dims=2, channels=(32, 64, 128), strides=(2, 2, 2), latent 16)`
(instance norm + PReLU after each convolution; `pip install monai==1.6.1`, skipped when absent)
against `--conv-layout transposed` (the default), the same with instance norm after each hidden
convolution (MONAI's normalisation alone), and `resize` (the layout before config version 2),
each also with channels-last weights. One step = BCE-with-logits summed + KL, backward, vaelab's
Adam, batch 128, random images; variants alternate `--rounds` times. MONAI's decoder returns
32×32 for a 28×28 input: its output is cropped to 28×28.

    python benchmarks/conv_layouts.py --threads 1
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


class MonaiNet(nn.Module):
    def __init__(self, shape) -> None:
        super().__init__()
        from monai.networks.nets import VarAutoEncoder

        self.net = VarAutoEncoder(spatial_dims=2, in_shape=tuple(shape), out_channels=shape[0], latent_size=16,
                                  channels=(32, 64, 128), strides=(2, 2, 2))
        self.size = shape[1:]

    def forward(self, x):
        logits, mu, logvar, _ = self.net(x)
        return logits[..., : self.size[0], : self.size[1]], mu, logvar


def main() -> None:
    from vaelab.hardware import describe_machine
    from vaelab.optim import Adam

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = one per core)")
    parser.add_argument("--shape", default="1,28,28", help="C,H,W (default 1,28,28; CIFAR-10: 3,32,32)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    shape = [int(v) for v in args.shape.split(",")]
    print(describe_machine())
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
                logits, mu, logvar = net(x)
                loss = (F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
                        + 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum())
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
