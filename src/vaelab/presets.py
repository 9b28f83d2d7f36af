"""Named training set-ups (`--preset NAME`) and defaults per kind of dataset: dotted config keys -> values.

- `paper`: the paper's experiment — MNIST, MLP encoder/decoder, 2-D latent, MSE (a gaussian with
  the fixed std 1/sqrt(2)), whatever the dataset.
- `iwae-paper-vae` / `iwae-paper-iwae`: Burda et al. 2015, Table 1, one stochastic layer on
  dynamically binarised MNIST: MLP 784-200-200-50 tanh, Bernoulli, Adam(0.9, 0.999, eps 1e-4),
  batch 20, learning rate 1e-3 * 10^(-i/7) for 3^i passes, i = 0..7 (3280 passes). `--epochs E`
  scales every segment by E / 3280, keeping the shape of the schedule.

`DATASET_DEFAULTS`: what a folder or npz of 8-bit photographs or scans (and DICOM / NIfTI slices;
`VOLUME_DEFAULTS` for their volumes) trains with when the
settings do not say otherwise (`vaelab train` / `vaelab config` apply them under the preset, the
config file and the flags: dataclass defaults < dataset kind < preset < file < flags; the resolved
values are written to config.json). The fixed-std Gaussian of the paper weighs the
reconstruction so little against the KL term that on photos the code collapses to a few nats
and every reconstruction is a blur of the mean colour; an MLP with a 2-D code cannot draw a
photo either. So these datasets get a ResNet with a 64-d code and the sigma-VAE's Gaussian
(`--gaussian-variance optimal`: the std set to the reconstruction error in closed form, which
balances reconstruction and KL with no weight to tune). The default std applies only where the
likelihood is the Gaussian and no `--gaussian-std` is given (a std given is a fixed std).
digits, mnist and fashion-mnist keep the paper's set-up (their printed numbers do not change).
"""

from __future__ import annotations

from typing import Any

from vaelab.config import VOLUME_DATASETS

IWAE_PAPER_EPOCHS = sum(3**i for i in range(8))  # 3280


def iwae_schedule(total_epochs: float = IWAE_PAPER_EPOCHS) -> list[list[float]]:
    """[[3^i * scale, 10^(-i/7)] for i = 0..7] with scale = total_epochs / 3280."""
    scale = total_epochs / IWAE_PAPER_EPOCHS
    return [[3**i * scale, 10 ** (-i / 7)] for i in range(8)]


_IWAE_COMMON: dict[str, Any] = {
    "data.dataset": "mnist",
    "data.binarize": "dynamic",
    "model.arch": "mlp",
    "model.hidden": [200, 200],
    "model.activation": "tanh",
    "model.latent_dim": 50,
    "model.likelihood": "bernoulli",
    "train.lr": 1e-3,
    "train.adam_betas": [0.9, 0.999],
    "train.adam_eps": 1e-4,
    "train.batch_size": 20,
    "train.epochs": IWAE_PAPER_EPOCHS,
    "train.lr_schedule": "piecewise",
    "train.lr_segments": iwae_schedule(),
}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "data.dataset": "mnist",
        "model.arch": "mlp",
        "model.latent_dim": 2,
        "model.likelihood": "gaussian",
        "model.gaussian_variance": "fixed",
        "train.epochs": 10,
    },
    "iwae-paper-vae": {**_IWAE_COMMON, "train.objective": "elbo", "train.iw_samples_train": 1},
    "iwae-paper-iwae": {**_IWAE_COMMON, "train.objective": "iwae", "train.iw_samples_train": 50},
}

# Photographs and scans (folder, npz): see the module docstring.
PHOTO_DEFAULTS: dict[str, Any] = {
    "model.arch": "resnet",
    "model.latent_dim": 64,
    "model.likelihood": "gaussian",
    "model.gaussian_variance": "optimal",
}

# Volumes (`--dimensions 3` on dicom or nifti): the same reasoning in 3-D; the ResNet is 2-D only,
# so the 3-D convolutional network (models/conv3d.py).
VOLUME_DEFAULTS: dict[str, Any] = {**PHOTO_DEFAULTS, "model.arch": "conv3d"}

# Slices of scans (dicom, nifti with --dimensions 2, the default) are images like any other.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {"folder": PHOTO_DEFAULTS, "npz": PHOTO_DEFAULTS,
                                               "dicom": PHOTO_DEFAULTS, "nifti": PHOTO_DEFAULTS}


def dataset_defaults(dataset: Any, dimensions: Any = 2) -> dict[str, Any]:
    """The defaults of a dataset kind (a copy): DATASET_DEFAULTS, or VOLUME_DEFAULTS for volumes."""
    if not isinstance(dataset, str) or dataset not in DATASET_DEFAULTS:
        return {}
    return dict(VOLUME_DEFAULTS if dimensions == 3 and dataset in VOLUME_DATASETS else DATASET_DEFAULTS[dataset])
