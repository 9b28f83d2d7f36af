"""The small CNN classifier that vaelab trains itself, for FID features and reconstruction accuracy.

Why its own: FID is only comparable under one fixed feature network (TARGETS.md), and an
Inception network trained on ImageNet photos is both large and a poor judge of 28×28 digits.
vaelab trains this network once per dataset on the *training* split (grey values in [0, 1],
never binarised), records its test accuracy, and caches it as safetensors + JSON under
`$VAELAB_DATA/classifiers/` or `~/.cache/vaelab/classifiers/`, keyed by dataset, image shape
and a fingerprint of the training images, so every evaluation uses identical features.

Network: conv3×3(C→16) ReLU maxpool2 → conv3×3(16→32) ReLU maxpool2 → adaptive avg-pool 4×4 →
linear(512→128) ReLU [= the 128-d features used for FID] → linear(128→classes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from vaelab.checkpoint import atomic_write_bytes, atomic_write_text
from vaelab.data.base import ImageData
from vaelab.data.batches import iterate_batches, to_float
from vaelab.errors import RunError

CLASSIFIER_VERSION = 1  # bump when the network or its training changes: old caches are ignored
FEATURE_DIM = 128
EPOCHS = 2
MIN_STEPS = 60  # tiny datasets still get enough updates
BATCH_SIZE = 128
LR = 1e-3
SEED = 0


class Classifier(nn.Module):
    """CNN classifier; `features(x)` is the penultimate 128-d representation."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(4),  # any image size -> (B, 32, 4, 4)
            nn.Flatten(), nn.Linear(32 * 16, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x float (B, C, H, W) in [0, 1] -> (B, 128)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, classes) logits


def cache_root() -> Path:
    """`$VAELAB_DATA/classifiers` if set, else `~/.cache/vaelab/classifiers`."""
    root = os.environ.get("VAELAB_DATA")
    return (Path(root) if root else Path.home() / ".cache" / "vaelab") / "classifiers"


def cache_key(data: ImageData, dataset_name: str) -> str:
    """dataset + image shape + a fingerprint of the training split (images and labels)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"v{CLASSIFIER_VERSION}".encode())
    digest.update(data.train.images.contiguous().numpy().tobytes())
    if data.train.labels is not None:
        digest.update(data.train.labels.contiguous().numpy().tobytes())
    c, h, w = data.image_shape
    safe_name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset_name) or "data"
    return f"{safe_name}-{c}x{h}x{w}-{digest.hexdigest()}"


@torch.inference_mode()
def predict(net: Classifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """float images (N, C, H, W) in [0, 1] -> predicted classes (N,) int64."""
    device = next(net.parameters()).device
    return torch.cat([net(images[i : i + batch_size].to(device)).argmax(-1).cpu()
                      for i in range(0, len(images), batch_size)])


@torch.inference_mode()
def classifier_features(net: Classifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """float images (N, C, H, W) in [0, 1] -> penultimate features (N, 128) on the CPU."""
    device = next(net.parameters()).device
    return torch.cat([net.features(images[i : i + batch_size].to(device)).cpu()
                      for i in range(0, len(images), batch_size)])


def train_classifier(data: ImageData, progress: bool = False) -> tuple[Classifier, dict[str, Any]]:
    """Train on `data.train` (grey values), report accuracy on `data.test`. Deterministic on CPU."""
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        net = Classifier(data.image_shape[0], data.num_classes)
        optimizer = torch.optim.Adam(net.parameters(), lr=LR)
        gen = torch.Generator().manual_seed(SEED)
        steps_per_epoch = -(-len(data.train) // BATCH_SIZE)
        epochs = max(EPOCHS, -(-MIN_STEPS // steps_per_epoch))
        net.train()
        for epoch in range(epochs):
            for x, y in iterate_batches(data.train, BATCH_SIZE, shuffle=True, generator=gen):
                loss = F.cross_entropy(net(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if progress:
                print(f"classifier epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}", flush=True)
    net.eval()
    test = data.test
    accuracy = float((predict(net, to_float(test.images)) == test.labels).float().mean())
    meta = {"version": CLASSIFIER_VERSION, "image_shape": list(data.image_shape), "num_classes": data.num_classes,
            "train_images": len(data.train), "epochs": epochs, "test_images": len(test),
            "test_accuracy": accuracy, "seconds": round(time.perf_counter() - started, 1)}
    return net, meta


def get_classifier(data: ImageData, dataset_name: str, progress: bool = False) -> tuple[Classifier, dict[str, Any]]:
    """The cached classifier for this dataset, training (and caching) it on first use.

    A missing, unreadable or mismatched cache entry is simply retrained; a cache folder that
    cannot be written leaves the freshly trained network in use, uncached.
    """
    key = cache_key(data, dataset_name)
    root = cache_root()
    weights, meta_path = root / f"{key}.safetensors", root / f"{key}.json"
    try:
        meta = json.loads(meta_path.read_text())
        net = Classifier(data.image_shape[0], data.num_classes)
        net.load_state_dict(st_load(weights.read_bytes()))
        if meta.get("version") == CLASSIFIER_VERSION and meta.get("num_classes") == data.num_classes:
            meta["key"] = key
            return net.eval(), meta
    except (OSError, ValueError, RuntimeError, SafetensorError):
        pass  # not cached yet (or damaged): train it
    if progress:
        print(f"training the evaluation classifier for {dataset_name} (cached in {root}) ...", flush=True)
    net, meta = train_classifier(data, progress=progress)
    meta["dataset"] = dataset_name
    try:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(weights, st_save({k: v.contiguous() for k, v in net.state_dict().items()}))
        atomic_write_text(meta_path, json.dumps(meta, indent=2))
    except (OSError, RunError):  # mkdir raises OSError, the atomic writer RunError: use it uncached
        with contextlib.suppress(OSError):  # weights without their JSON are never read: don't keep them
            weights.unlink(missing_ok=True)
    meta["key"] = key
    return net, meta
