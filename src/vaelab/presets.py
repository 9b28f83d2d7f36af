"""Named training set-ups (`--preset NAME`): dotted config keys -> values, applied before flags.

- `paper`: the paper's experiment — MNIST, MLP encoder/decoder, 2-D latent, MSE (gaussian).
- `iwae-paper-vae` / `iwae-paper-iwae`: Burda et al. 2015, Table 1, one stochastic layer on
  dynamically binarised MNIST: MLP 784-200-200-50 tanh, Bernoulli, Adam(0.9, 0.999, eps 1e-4),
  batch 20, learning rate 1e-3 * 10^(-i/7) for 3^i passes, i = 0..7 (3280 passes). `--epochs E`
  scales every segment by E / 3280, keeping the shape of the schedule.
"""

from __future__ import annotations

from typing import Any

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
        "train.epochs": 10,
    },
    "iwae-paper-vae": {**_IWAE_COMMON, "train.objective": "elbo", "train.iw_samples_train": 1},
    "iwae-paper-iwae": {**_IWAE_COMMON, "train.objective": "iwae", "train.iw_samples_train": 50},
}
