"""scikit-learn's bundled 8×8 handwritten digits: the offline default, no download needed."""

from __future__ import annotations

import numpy as np

from vaelab.config import DataConfig
from vaelab.data.base import ImageData, Split, holdout, to_labels, to_nchw

TEST_FRACTION = 0.2


def load_digits(cfg: DataConfig) -> ImageData:
    """scikit-learn's 8×8 digits: a fixed 20 % test split, then `val_fraction` of the rest for validation."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    # Pixel values are 0..16; stretch to the 0..255 range every other dataset uses.
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # (1797, 8, 8)
    full = Split(to_nchw(images, "digits"), to_labels(bunch.target, len(images), "digits"))
    rest, test = holdout(full, TEST_FRACTION, seed=12345)  # fixed test set whatever the split seed
    train, val = holdout(rest, cfg.val_fraction, seed=cfg.split_seed)
    return ImageData("digits", train, val, test, [str(d) for d in range(10)])
