"""One anomaly analysis, the work behind `vaelab anomaly`: scores, metrics, percentiles, maps.

`analyse` scores a set of images against a reference of normal training images (with
`score`), measures detection where labels are known (`evaluate`), places each image among
the scores of normal training images (percentiles, for image files), and computes the maps
of the most anomalous images; `write_analysis` writes it all (see `report.py`). The CLI only
turns flags and files into these arguments.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from vaelab.anomaly.maps import MAP_KINDS, AnomalyMaps, anomaly_maps, common_scale, save_map_figure
from vaelab.anomaly.metrics import anomalous_from_classes, evaluate, pixel_metrics
from vaelab.anomaly.names import DEFAULT_BOOTSTRAP, DEFAULT_IW_SAMPLES, DEFAULT_MAPS, SCORE_DEFINITIONS, SCORE_NAMES
from vaelab.anomaly.report import MAPS_DIR, metrics_table, roc_figure, scores_csv, write_json
from vaelab.anomaly.scores import SCORE_SEED, NormalReference, fit_reference, percentiles, score

if TYPE_CHECKING:
    from vaelab.models import VAE

PERCENTILE_REFERENCE = 1000  # normal training images scored to place each file among them


@dataclass
class AnomalyOptions:
    """How to score: importance samples, bootstrap, maps, seeds."""

    iw_samples: int = DEFAULT_IW_SAMPLES
    batch_size: int = 250
    seed: int = SCORE_SEED
    bootstrap: int = DEFAULT_BOOTSTRAP
    maps: int = DEFAULT_MAPS  # most anomalous split images to map (every image file is mapped)
    rank_by: str = "nll"  # the score that orders "most anomalous"
    percentile_reference: int = PERCENTILE_REFERENCE


@dataclass
class Analysis:
    """Everything `vaelab anomaly` reports about one set of images."""

    ids: list[Any]  # split indices, or file names
    id_column: str  # "index" or "file"
    scores: dict[str, np.ndarray]  # name -> (N,)
    labels: Optional[np.ndarray] = None  # class labels (N,), when known
    normal_classes: Optional[list[int]] = None
    metrics: Optional[dict[str, Any]] = None  # `evaluate` output, when labelled
    percentiles: Optional[dict[str, np.ndarray]] = None  # name -> (N,) 0..100 among normal images
    mapped: list[int] = field(default_factory=list)  # rows with maps, most anomalous first
    maps: Optional[AnomalyMaps] = None  # of the mapped rows, in that order
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # mapped row -> ground-truth mask
    pixel: Optional[dict[str, Any]] = None  # map kind -> pixel metrics, with masks
    reference_images: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def analyse(model: VAE, images: torch.Tensor, reference: NormalReference | torch.Tensor, *,
            labels: Optional[Sequence[int]] = None, normal_classes: Optional[Sequence[int]] = None,
            ids: Optional[Sequence[Any]] = None, id_column: str = "index",
            masks: Optional[dict[int, np.ndarray]] = None, options: AnomalyOptions = AnomalyOptions(),
            exclude: Optional[torch.Tensor] = None, progress: bool = False) -> Analysis:
    """Score `images` (N, C, *S) against the normal `reference` and measure what can be measured.

    With `labels` and `normal_classes`: detection metrics of every score. Image files
    (`id_column="file"`) get percentiles among normal training images and a map each; split
    images get maps for the `options.maps` highest by `options.rank_by`. `masks` (row -> bool
    mask) add pixel AUROC and the best Dice of every map kind. `exclude` (N,): per image a
    reference row to leave out of its nearest-neighbour search (scoring the reference's own images).
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if not isinstance(reference, NormalReference):
        reference = fit_reference(model, reference)
    seconds["reference"] = time.perf_counter() - started
    t = time.perf_counter()
    table = score(model, images, reference, iw_samples=options.iw_samples, batch_size=options.batch_size,
                  seed=options.seed, exclude=exclude, progress=progress)
    seconds["scores"] = time.perf_counter() - t
    result = Analysis(ids=list(ids) if ids is not None else list(range(len(images))), id_column=id_column,
                      scores=table, reference_images=reference.num_images, seconds=seconds)
    if labels is not None:
        result.labels = np.asarray(labels)
    if normal_classes is not None and labels is not None:
        t = time.perf_counter()
        result.normal_classes = sorted(int(c) for c in normal_classes)
        result.metrics = evaluate(table, result.labels, normal_classes=result.normal_classes,
                                  n_resamples=options.bootstrap, seed=options.seed)
        seconds["metrics"] = time.perf_counter() - t
    if id_column == "file":
        t = time.perf_counter()
        result.percentiles = percentiles(table, reference_scores(model, reference, options))
        seconds["percentiles"] = time.perf_counter() - t
    t = time.perf_counter()
    if id_column == "file":
        result.mapped = list(range(len(images)))
    else:
        order = np.argsort(-np.nan_to_num(table[options.rank_by], nan=-np.inf), kind="stable")
        result.mapped = [int(i) for i in order[:options.maps]]
    if result.mapped:
        rows = torch.tensor(result.mapped)
        result.maps = anomaly_maps(model, torch.as_tensor(images).index_select(0, rows), options.batch_size)
    if masks:
        result.masks = {i: masks[i] for i in result.mapped if i in masks}
        result.pixel = map_pixel_metrics(result)
    seconds["maps"] = time.perf_counter() - t
    return result


def reference_scores(model: VAE, reference: NormalReference, options: AnomalyOptions) -> dict[str, np.ndarray]:
    """Scores of (a seeded subset of) the normal reference images themselves, nearest neighbours
    leave-one-out: what the percentiles of new images are measured against."""
    n = reference.num_images
    generator = torch.Generator().manual_seed(options.seed)
    rows = torch.randperm(n, generator=generator)[:options.percentile_reference].sort().values
    return score(model, reference.bank.index_select(0, rows), reference, iw_samples=options.iw_samples,
                 batch_size=options.batch_size, seed=options.seed, exclude=rows)


def map_pixel_metrics(result: Analysis) -> dict[str, Any]:
    """Pixel AUROC and best Dice of each map kind over the mapped images that have a mask."""
    position = {row: k for k, row in enumerate(result.mapped)}
    rows = [position[i] for i in result.masks]
    truth = np.stack([result.masks[i] for i in result.masks])
    out: dict[str, Any] = {"images": len(rows)}
    for kind in MAP_KINDS:
        values = result.maps.get(kind)
        if values is None:
            continue
        try:
            out[kind] = pixel_metrics(values[rows], truth)
        except ValueError as exc:  # masks with no anomalous pixel (or only anomalous ones)
            out[kind] = {"pixel_auroc": None, "best_dice": None, "note": str(exc)}
    return out


def summary(values: np.ndarray) -> dict[str, float]:
    """Distribution of one score where there are no labels: mean, std and quantiles."""
    v = values[np.isfinite(values)]
    if not len(v):
        return {"mean": None, "std": None, "min": None, "median": None, "p95": None, "max": None}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "median": float(np.median(v)),
            "p95": float(np.quantile(v, 0.95)), "max": float(v.max())}


def analysis_json(result: Analysis, info: dict[str, Any]) -> dict[str, Any]:
    """The content of anomaly.json: `info` (run, split, settings) and the results."""
    payload: dict[str, Any] = dict(info)
    payload["num_images"] = len(result.ids)
    payload["normal_classes"] = result.normal_classes
    payload["reference_images"] = result.reference_images
    payload["higher_is_more_anomalous"] = True
    payload["score_definitions"] = {name: SCORE_DEFINITIONS[name] for name in result.scores}
    if result.metrics is not None:
        payload.update({k: v for k, v in result.metrics.items() if k != "scores"})
        payload["scores"] = result.metrics["scores"]
    else:
        payload["scores"] = {name: summary(values) for name, values in result.scores.items()}
    if result.percentiles is not None:
        payload["images"] = [
            {"file": str(result.ids[i]),
             "scores": {n: float(v[i]) for n, v in result.scores.items()},
             "percentiles": {n: float(p[i]) for n, p in result.percentiles.items()}}
            for i in range(len(result.ids))]
        payload["percentiles_among"] = "normal training images (nearest neighbour leave-one-out)"
    if result.pixel is not None:
        payload["pixel"] = result.pixel
    payload["seconds"] = {k: round(v, 2) for k, v in result.seconds.items()}
    return payload


def map_name(result: Analysis, rank: int, row: int) -> str:
    """File name of one map figure: the file's stem, or rank + split index."""
    if result.id_column == "file":
        return f"{Path(str(result.ids[row])).stem}.png"
    return f"rank{rank + 1:03d}_index{result.ids[row]}.png"


def write_analysis(result: Analysis, out: Path, info: dict[str, Any], rank_by: str = "nll") -> dict[str, Any]:
    """Write scores.csv, anomaly.json, roc.png (with labels) and maps/ into `out` (prepared by
    `report.prepare_output_dir`); returns the JSON payload."""
    from vaelab.checkpoint import atomic_write_text

    atomic_write_text(out / "scores.csv", scores_csv(result.ids, result.id_column, result.labels, result.scores))
    written = []
    if result.maps is not None:
        scales = {kind: common_scale([result.maps.get(kind)]) for kind in ("residual", "weighted")
                  if result.maps.get(kind) is not None}
        for rank, row in enumerate(result.mapped):
            name = map_name(result, rank, row)
            label = "" if result.labels is None else f", label {int(result.labels[row])}"
            title = (f"{result.id_column} {result.ids[row]}{label}: {rank_by} {float(result.scores[rank_by][row]):.5g}"
                     if rank_by in result.scores else str(result.ids[row]))
            save_map_figure(out / MAPS_DIR / name, result.maps, rank, title, scales, result.masks.get(row))
            written.append(f"{MAPS_DIR}/{name}")
        arrays = {kind: result.maps.get(kind) for kind in MAP_KINDS
                  if result.maps.get(kind) is not None}
        np.savez_compressed(out / MAPS_DIR / "maps.npz", ids=np.asarray([str(result.ids[r]) for r in result.mapped]),
                            reconstruction=result.maps.reconstruction, **arrays)
    payload = analysis_json(result, info)
    payload["maps"] = {"rank_by": rank_by if result.id_column == "index" else None, "files": written,
                       "arrays": f"{MAPS_DIR}/maps.npz" if written else None}
    if result.metrics is not None:
        anomalous = anomalous_from_classes(result.labels, result.normal_classes)
        roc_figure(out / "roc.png", anomalous, result.scores, result.metrics["scores"],
                   f"{info.get('run', '')}: {info.get('split', '')} split, normal classes "
                   f"{','.join(map(str, result.normal_classes))}")
        payload["roc"] = "roc.png"
    write_json(out / "anomaly.json", payload)
    return payload


__all__ = ["SCORE_NAMES", "Analysis", "AnomalyOptions", "analyse", "metrics_table", "write_analysis"]
