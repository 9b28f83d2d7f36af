"""The plain-PyTorch reference for image models: vaelab's layers, trained the way users write it.

What a user writes around a convolutional VAE (pytorch/examples `vae/main.py`, torchvision's
`MNIST` / `ImageFolder` + `ToTensor`): a per-sample `Dataset` (MNIST rows through a PIL image;
CIFAR-10 JPEGs opened and decoded by PIL at every access, as `ImageFolder` does), a `DataLoader`
(batch 128, shuffled, no workers), `mu + randn_like(std) * std`, `F.binary_cross_entropy_with_logits`
summed over the batch + the closed-form KL, and `torch.optim.Adam(lr=1e-3)` with its defaults.

The network is *exactly* vaelab's: the encoder and decoder modules are taken from the
`ARCHITECTURES` registry for the same config (so `--arch resnet` works as soon as it is
registered), i.e. the same layers, sizes and initialisation scheme; only the loop around them is
the user's. Used by benchmarks/train_speed.py (`--arch conv` / `--arch resnet`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class MnistSamples(torch.utils.data.Dataset):
    """One image at a time, as torchvision's MNIST + ToTensor hands them out: float (1, 28, 28) in [0, 1]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels  # numpy uint8 (N, 28, 28), (N,)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        pil = Image.fromarray(self.images[i], mode="L")  # torchvision goes through a PIL image
        x = torch.from_numpy(np.array(pil, dtype=np.uint8)).float().div(255).unsqueeze(0)
        return x, int(self.labels[i])


class JpegFolderSamples(torch.utils.data.Dataset):
    """torchvision's ImageFolder + ToTensor: open and decode the file at every access -> float (3, H, W)."""

    def __init__(self, files: list[Path], labels: list[int]) -> None:
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with open(self.files[i], "rb") as handle:
            pil = Image.open(handle).convert("RGB")
            x = torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
        return x, self.labels[i]


def folder_splits(root: Path, val_fraction: float, split_seed: int = 0):
    """The (train, test) file lists and labels vaelab's folder dataset uses for `root` (same
    seeded hold-outs as `vaelab.data.folder.load_folder`), so both sides see the same images."""
    from vaelab.data.base import Split, holdout
    from vaelab.data.folder import TEST_FRACTION, scan_folder

    files, labels, _ = scan_folder(root)
    index = Split(torch.arange(len(files)))
    rest, test = holdout(index, TEST_FRACTION, seed=split_seed + 1)
    train, _ = holdout(rest, val_fraction, seed=split_seed)

    def pick(split: Split) -> tuple[list[Path], list[int]]:
        rows = split.images.tolist()
        return [files[i] for i in rows], [labels[i] if labels else 0 for i in rows]

    return pick(train), pick(test)


class ReferenceImageVAE(nn.Module):
    """vaelab's encoder and decoder modules with the user's forward: (logits, mu, logvar)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encoder(x, None).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z, None), mu, logvar


def reference_loss(logits, x, mu, logvar):
    """BCE-with-logits summed over the batch + KL (Kingma & Welling 2013, Appendix B)."""
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


class ImageReference:
    """The user's globals (model, optimizer, loaders) and `train` / `test` functions for `model_cfg`
    (a finalised vaelab ModelConfig: arch, image shape, hidden, latent) on `source`:
    ("mnist", idx_folder) or ("folder", image_root, val_fraction)."""

    def __init__(self, model_cfg, source: tuple, seed: int = 1) -> None:
        from vaelab.models import VAE

        torch.manual_seed(seed)
        layers = VAE(model_cfg)  # only its encoder and decoder modules are used
        self.model = ReferenceImageVAE(layers.encoder, layers.decoder)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        if source[0] == "mnist":
            from vaelab.data.idx import read_images_and_labels

            folder = Path(source[1])
            train = MnistSamples(*read_images_and_labels(folder / "train-images-idx3-ubyte.gz",
                                                         folder / "train-labels-idx1-ubyte.gz"))
            test = MnistSamples(*read_images_and_labels(folder / "t10k-images-idx3-ubyte.gz",
                                                        folder / "t10k-labels-idx1-ubyte.gz"))
        else:
            (train_files, train_labels), (test_files, test_labels) = folder_splits(Path(source[1]), source[2])
            train, test = JpegFolderSamples(train_files, train_labels), JpegFolderSamples(test_files, test_labels)
        self.train_loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True)
        self.test_loader = torch.utils.data.DataLoader(test, batch_size=128, shuffle=False)

    def train(self, epoch: int) -> float:
        self.model.train()
        train_loss = 0.0
        for data, _ in self.train_loader:
            self.optimizer.zero_grad()
            logits, mu, logvar = self.model(data)
            loss = reference_loss(logits, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            self.optimizer.step()
        return train_loss / len(self.train_loader.dataset)

    def test(self) -> float:
        self.model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for data, _ in self.test_loader:
                logits, mu, logvar = self.model(data)
                test_loss += reference_loss(logits, data, mu, logvar).item()
        return test_loss / len(self.test_loader.dataset)
