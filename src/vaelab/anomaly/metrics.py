"""Detection metrics for anomaly scores (higher = more anomalous), in numpy.

Conventions are scikit-learn's, so the numbers can be checked against it (tests/test_anomaly_metrics.py):
an image is called anomalous when its score is >= the threshold; the curves have one point per
distinct score value.

- `roc_curve`: false- and true-positive rates at every distinct threshold, starting at (0, 0)
  with threshold +inf (`sklearn.metrics.roc_curve(..., drop_intermediate=False)`).
- `auroc`: the area under that curve by the trapezoid rule, which equals the Mann-Whitney
  probability P(score of an anomaly > score of a normal image), ties counted one half.
- `precision_recall_curve`, `average_precision`: AP = sum_k (R_k - R_{k-1}) P_k over the
  thresholds, no interpolation (`sklearn.metrics.average_precision_score`).
- `best_f1`: the threshold that maximises F1 = 2PR / (P + R).
- `at_sensitivity`: the highest threshold that still flags >= 95 % of the anomalies, with the
  specificity it leaves.
- `bootstrap_auroc`: a stratified percentile bootstrap interval for the AUROC: anomalies and
  normal images are resampled with replacement separately (their counts stay fixed, as in a
  study that chose them), B resamples from a seeded generator (Efron & Tibshirani 1993). Each
  resample's AUROC is computed exactly from the resampled multiplicities, without re-sorting.
- `pixel_metrics`: pixel-level AUROC over every pixel of every image, and the best achievable
  Dice over one threshold shared by the whole set (Baur et al. 2021, "⌈Dice⌉"); Dice = 2TP /
  (2TP + FP + FN) is the pixel-level F1, so its maximum is read off the pooled PR curve exactly.
- `evaluate(scores, labels)`: all of the above for every score of a table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from vaelab.anomaly.names import DEFAULT_BOOTSTRAP

DEFAULT_SENSITIVITY = 0.95
BOOTSTRAP_CHUNK = 200  # resamples per vectorised step: (200, N) count arrays


def _check(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """(bool (N,), float64 (N,)); both classes present, scores without NaN."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"labels and scores must be 1-D of one length, got {y.shape} and {s.shape}")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be 1 (anomalous) or 0 (normal)")
        y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError("need both anomalous (1) and normal (0) images to measure detection")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return y, s


def _counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positives when flagging score >= t, for every distinct t (decreasing)."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of equal scores
    tps = np.cumsum(y)[ends].astype(np.float64)
    fps = (ends + 1) - tps
    return fps, tps, s[ends]


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, from (0, 0) at threshold +inf."""
    y, s = _check(labels, scores)
    fps, tps, thresholds = _counts(y, s)
    fpr = np.r_[0.0, fps] / fps[-1]
    tpr = np.r_[0.0, tps] / tps[-1]
    return fpr, tpr, np.r_[np.inf, thresholds]


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (trapezoids) = P(anomaly scores higher) + P(tie) / 2."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def precision_recall_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds), thresholds increasing, ending at precision 1, recall 0
    (scikit-learn's layout)."""
    y, s = _check(labels, scores)
    fps, tps, thresholds = _counts(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def average_precision(labels: Any, scores: Any) -> float:
    """AP = sum_k (R_k - R_{k-1}) P_k over the thresholds (no interpolation)."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def best_f1(labels: Any, scores: Any) -> dict[str, float]:
    """The threshold with the highest F1, and its F1, precision and recall."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    p, r = precision[:-1], recall[:-1]  # one per threshold
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    k = int(np.argmax(f1))
    return {"threshold": float(thresholds[k]), "f1": float(f1[k]), "precision": float(p[k]), "recall": float(r[k])}


def at_sensitivity(labels: Any, scores: Any, target: float = DEFAULT_SENSITIVITY) -> dict[str, float]:
    """The highest threshold whose sensitivity (true-positive rate) is >= `target`, with the
    sensitivity and specificity it gives."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    k = int(np.argmax(tpr >= target - 1e-12))  # first (highest) threshold reaching the target
    return {"threshold": float(thresholds[k]), "sensitivity": float(tpr[k]), "specificity": float(1.0 - fpr[k])}


def bootstrap_auroc(labels: Any, scores: Any, n_resamples: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float]:
    """Stratified percentile bootstrap interval (low, high) for the AUROC; see the module docstring."""
    y, s = _check(labels, scores)
    positives = s[y]  # (n1,)
    negatives = np.sort(s[~y])  # (n0,)
    n1, n0 = len(positives), len(negatives)
    # For each anomaly: how many normal scores lie strictly below it and how many at most equal.
    below = np.searchsorted(negatives, positives, side="left")
    at_most = np.searchsorted(negatives, positives, side="right")
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    for start in range(0, n_resamples, BOOTSTRAP_CHUNK):
        b = min(BOOTSTRAP_CHUNK, n_resamples - start)
        # Multiplicities of each image in a resample with replacement: Multinomial(n, uniform).
        w = rng.multinomial(n1, np.full(n1, 1.0 / n1), size=b)  # (b, n1)
        v = rng.multinomial(n0, np.full(n0, 1.0 / n0), size=b)  # (b, n0), in sorted order
        cum = np.concatenate([np.zeros((b, 1)), np.cumsum(v, axis=1)], axis=1)  # (b, n0 + 1)
        wins = cum[:, below] + 0.5 * (cum[:, at_most] - cum[:, below])  # (b, n1) resampled normals beaten
        values[start:start + b] = (w * wins).sum(1) / (n1 * n0)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def score_metrics(labels: Any, scores: Any, *, n_resamples: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                  sensitivity: float = DEFAULT_SENSITIVITY) -> dict[str, Any]:
    """Every metric of one score: AUROC with its interval, AP, thresholds at best F1 and at the
    target sensitivity. A score with NaN values gets None metrics and a note."""
    s = np.asarray(scores, dtype=np.float64)
    bad = int(np.isnan(s).sum())
    if bad:
        keys = ("auroc", "auroc_ci", "average_precision", "threshold_best_f1", "best_f1",
                "threshold_95_sensitivity", "specificity_at_95_sensitivity")
        return {**dict.fromkeys(keys), "note": f"{bad} score(s) are NaN (has the model diverged?)"}
    f1 = best_f1(labels, s)
    sens = at_sensitivity(labels, s, sensitivity)
    low, high = bootstrap_auroc(labels, s, n_resamples, seed) if n_resamples > 0 else (None, None)
    return {
        "auroc": auroc(labels, s),
        "auroc_ci": [low, high],
        "average_precision": average_precision(labels, s),
        "threshold_best_f1": f1["threshold"],
        "best_f1": f1["f1"],
        "precision_at_best_f1": f1["precision"],
        "recall_at_best_f1": f1["recall"],
        "threshold_95_sensitivity": sens["threshold"],
        "sensitivity_at_threshold": sens["sensitivity"],
        "specificity_at_95_sensitivity": sens["specificity"],
    }


def anomalous_from_classes(labels: Any, normal_classes: Sequence[int]) -> np.ndarray:
    """Class labels (N,) -> bool (N,): True where the class is not one of `normal_classes`."""
    return ~np.isin(np.asarray(labels), np.asarray(list(normal_classes)))


def evaluate(scores: Mapping[str, Any], labels: Any, *, normal_classes: Optional[Sequence[int]] = None,
             n_resamples: int = DEFAULT_BOOTSTRAP, seed: int = 0,
             sensitivity: float = DEFAULT_SENSITIVITY) -> dict[str, Any]:
    """Detection metrics of every score in `scores` ({name: (N,) array}, e.g. `vaelab.anomaly.score`).

    `labels` are 1/True for anomalous and 0/False for normal images; or class labels together
    with `normal_classes` (every other class is anomalous). Returns
    {"num_images", "num_anomalous", "num_normal", "bootstrap": {...}, "scores": {name: metrics}}
    with the metrics of `score_metrics`.
    """
    y = anomalous_from_classes(labels, normal_classes) if normal_classes is not None else np.asarray(labels)
    y, _ = _check(y, np.zeros(len(y)))  # validates the labels once, before any score
    per_score = {name: score_metrics(y, values, n_resamples=n_resamples, seed=seed, sensitivity=sensitivity)
                 for name, values in scores.items()}
    return {
        "num_images": int(len(y)), "num_anomalous": int(y.sum()), "num_normal": int((~y).sum()),
        "bootstrap": {"resamples": int(n_resamples), "seed": int(seed), "level": 0.95,
                      "method": "stratified percentile bootstrap of the AUROC"},
        "sensitivity_target": sensitivity,
        "scores": per_score,
    }


def pixel_metrics(maps: Any, masks: Any) -> dict[str, float]:
    """Pixel AUROC and the best achievable Dice (one threshold over the whole set) of anomaly
    maps (N, *S) float against ground-truth masks (N, *S) bool."""
    m = np.asarray(maps, dtype=np.float64).ravel()
    g = np.asarray(masks, dtype=bool).ravel()
    if m.shape != g.shape:
        raise ValueError(f"maps and masks differ in size: {np.shape(maps)} vs {np.shape(masks)}")
    if not g.any():
        raise ValueError("the masks mark no anomalous pixel")
    if g.all():
        raise ValueError("the masks mark every pixel anomalous")
    dice = best_f1(g, m)
    return {"pixel_auroc": auroc(g, m), "best_dice": dice["f1"], "best_dice_threshold": dice["threshold"],
            "pixels": int(g.size), "anomalous_pixels": int(g.sum())}
