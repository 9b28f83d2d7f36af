"""Anomaly detection with a VAE trained on normal images: scores, baselines, metrics, maps.

    >>> import vaelab, vaelab.anomaly
    >>> model = vaelab.load("runs/mnist-digit0")              # trained with --train-classes 0
    >>> reference = vaelab.anomaly.fit_reference(model, normal_train_images)
    >>> table = vaelab.anomaly.score(model, test_images, reference)  # {name: (N,) array}
    >>> result = vaelab.anomaly.evaluate(table, test_labels, normal_classes=[0])
    >>> result["scores"]["nll"]["auroc"], result["scores"]["nll"]["auroc_ci"]

Modules: `names` (score names and defaults, no torch), `scores` (the model's scores and
`score`), `baselines` (pixel-space scores that use no model), `complexity` (compressed length,
for the likelihood ratio), `metrics` (AUROC, AP, thresholds, bootstrap, pixel metrics,
`evaluate`), `maps` (per-pixel maps and their figures), `analysis` (one whole analysis, what
`vaelab anomaly` runs) and `report` (its files). The public names below are imported on first
use, so `vaelab anomaly --help` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from vaelab.anomaly.names import SCORE_DEFINITIONS, SCORE_NAMES

_LAZY = {
    "Analysis": "analysis", "AnomalyOptions": "analysis", "analyse": "analysis", "write_analysis": "analysis",
    "AnomalyMaps": "maps", "anomaly_maps": "maps",
    "evaluate": "metrics", "pixel_metrics": "metrics",
    "NormalReference": "scores", "fit_reference": "scores", "percentiles": "scores", "score": "scores",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"vaelab.anomaly.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vaelab.anomaly' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["SCORE_DEFINITIONS", "SCORE_NAMES", *_LAZY]
