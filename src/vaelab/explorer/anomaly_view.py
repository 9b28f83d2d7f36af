"""The explorer's anomaly panel: an uploaded image's anomaly scores, their percentiles among the
normal training images, and its anomaly maps (`POST /api/anomaly`).

`AnomalyService` fits the reference of `vaelab.anomaly` (code Gaussian, mean image, nearest-
neighbour bank) on the run's normal training images, the training split of its config (which
`--train-classes` restricts to the normal classes), and scores a seeded subset of them, nearest
neighbours leave-one-out, as the distribution each upload is placed in. Both happen once, on
the first request (a lock keeps concurrent first requests from doing it twice). A model without
a run config (an app built around a model in Python) uses the mapped split as its reference,
and says so in every answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import torch

from vaelab.anomaly.maps import anomaly_maps, display_rgb, overlay_rgb, to_png_array
from vaelab.anomaly.names import SCORE_DEFINITIONS, SCORE_NAMES
from vaelab.data import Split
from vaelab.explorer.codec import data_url, png_bytes
from vaelab.explorer.session import ExplorerSession, InputError

EXPLORER_IW_SAMPLES = 50  # K of nll = -L_K per upload: ~0.1 s for an MLP on 28×28
REFERENCE_SCORED = 500  # normal training images scored once, for the percentiles
MAP_SIDE = 168  # pixels of the drawn maps (an integer zoom of the image)
SCALE_IMAGES = 100  # normal images whose maps fix the colour scale: a normal upload looks faint


class AnomalyService:
    """Scores uploads for the explorer against a reference of normal images (built on first use)."""

    def __init__(self, session: ExplorerSession, normal_images: Callable[[], Split], reference_name: str,
                 iw_samples: int = EXPLORER_IW_SAMPLES, reference_scored: int = REFERENCE_SCORED) -> None:
        self.session = session
        self._normal_images = normal_images
        self.reference_name = reference_name
        self.iw_samples = iw_samples
        self.reference_scored = reference_scored
        self._lock = threading.Lock()
        self._state: Optional[tuple[Any, dict[str, np.ndarray], dict[str, float]]] = None

    def _reference(self):
        """(NormalReference, scores of the scored subset, map colour scales), computed once.

        The colour scale of each map is the 99.9th percentile of the maps of normal images, so an
        upload's map is bright only where it departs from what normal images show."""
        with self._lock:
            if self._state is None:
                from vaelab.anomaly.analysis import AnomalyOptions, reference_scores
                from vaelab.anomaly.scores import fit_reference

                split = self._normal_images()
                if len(split) < 2:
                    raise InputError("the anomaly reference needs at least 2 normal images")
                reference = fit_reference(self.session.model, split.images)
                options = AnomalyOptions(iw_samples=self.iw_samples, percentile_reference=self.reference_scored)
                from vaelab.anomaly.maps import common_scale

                normal_maps = anomaly_maps(self.session.model, reference.bank[:SCALE_IMAGES])
                scales = {kind: common_scale([normal_maps.get(kind)]) for kind in ("residual", "weighted")
                          if normal_maps.get(kind) is not None}
                self._state = (reference, reference_scores(self.session.model, reference, options), scales)
            return self._state

    def analyse_upload(self, data: bytes, invert: bool = False) -> dict[str, Any]:
        """Upload bytes -> scores, percentiles and map images (data URLs) of the image."""
        from vaelab.anomaly.scores import percentiles, score

        if self.session.model.conditional:
            raise InputError("anomaly scores need an unconditional model; this run is conditional")
        encoded = self.session.encode_upload(data, None, invert)  # validated, converted, resized
        image = torch.tensor(encoded.image)[None]  # (1, C, H, W) uint8, a copy (the upload may be read-only)
        reference, reference_values, scales = self._reference()
        values = score(self.session.model, image, reference, iw_samples=self.iw_samples)
        ranks = percentiles(values, reference_values)
        maps = anomaly_maps(self.session.model, image)
        scale, weighted_scale = scales["residual"], scales.get("weighted")
        images = {"input": display_rgb(maps.image[0]), "reconstruction": display_rgb(maps.reconstruction[0]),
                  "residual": overlay_rgb(maps.image[0], maps.residual[0], scale)}
        if maps.weighted is not None and weighted_scale is not None:
            images["weighted"] = overlay_rgb(maps.image[0], maps.weighted[0], weighted_scale)
        urls = {k: data_url(png_bytes(to_png_array(v, MAP_SIDE).transpose(2, 0, 1))) for k, v in images.items()}
        return {
            "scores": [{"name": n, "value": _finite(values[n][0]), "percentile": _finite(ranks[n][0]),
                        "definition": SCORE_DEFINITIONS[n]} for n in SCORE_NAMES if n in values],
            "reference": {"images": reference.num_images, "scored": len(reference_values["nll"]),
                          "source": self.reference_name},
            "iw_samples": self.iw_samples,
            "input": urls["input"], "reconstruction": urls["reconstruction"], "residual_map": urls["residual"],
            "residual_scale": scale, "weighted_map": urls.get("weighted"),
            "weighted_scale": weighted_scale if "weighted" in urls else None,
        }


def _finite(value: float) -> Optional[float]:
    value = float(value)
    return value if np.isfinite(value) else None


def service_for(session: ExplorerSession, model, run_dir, data_dir) -> AnomalyService:
    """The service of an app: the run's normal training images, or the mapped split without a run config."""
    cfg = getattr(model, "run_config", None)
    if cfg is None:
        return AnomalyService(session, lambda: session.split, "the mapped split (no run config)")

    def normal_images() -> Split:
        from vaelab.data import load_data
        from vaelab.explorer.session import _resolve_data_config

        return load_data(_resolve_data_config(cfg.data, data_dir, run_dir)).train

    classes = ",".join(map(str, cfg.data.train_classes))
    name = f"the run's training images (classes {classes})" if classes else "the run's training images"
    return AnomalyService(session, normal_images, name)
