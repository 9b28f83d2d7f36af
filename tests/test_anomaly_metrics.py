"""vaelab.anomaly.metrics against scikit-learn, and the bootstrap interval's behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from vaelab.anomaly import metrics


def _case(seed: int, n: int = 300, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    s = rng.normal(size=n) + 0.8 * y
    if ties:  # coarse scores: many exact ties, between and within the classes
        s = np.round(s * 2) / 2
    return y, s


CASES = [_case(0), _case(1, ties=True), _case(2, n=40), _case(3, n=1000, ties=True)]


@pytest.mark.parametrize("y,s", CASES)
def test_roc_curve_and_auroc_match_sklearn(y, s):
    fpr, tpr, thr = metrics.roc_curve(y, s)
    ref_fpr, ref_tpr, ref_thr = sk.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_array_equal(thr[1:], ref_thr[1:])
    assert thr[0] == np.inf
    assert metrics.auroc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("y,s", CASES)
def test_precision_recall_and_average_precision_match_sklearn(y, s):
    p, r, t = metrics.precision_recall_curve(y, s)
    ref_p, ref_r, ref_t = sk.precision_recall_curve(y, s)
    np.testing.assert_allclose(p, ref_p)
    np.testing.assert_allclose(r, ref_r)
    np.testing.assert_array_equal(t, ref_t)
    assert metrics.average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("y,s", CASES)
def test_best_f1_is_the_best_threshold_by_brute_force(y, s):
    best = metrics.best_f1(y, s)
    f1s = {t: sk.f1_score(y, s >= t) for t in np.unique(s)}
    t_best = max(f1s, key=f1s.get)
    assert best["f1"] == pytest.approx(f1s[t_best], abs=1e-12)
    assert sk.f1_score(y, s >= best["threshold"]) == pytest.approx(best["f1"], abs=1e-12)
    assert best["precision"] == pytest.approx(sk.precision_score(y, s >= best["threshold"]))
    assert best["recall"] == pytest.approx(sk.recall_score(y, s >= best["threshold"]))


@pytest.mark.parametrize("y,s", CASES)
def test_threshold_at_95_sensitivity(y, s):
    out = metrics.at_sensitivity(y, s, 0.95)
    flagged = s >= out["threshold"]
    assert flagged[y].mean() == pytest.approx(out["sensitivity"]) and out["sensitivity"] >= 0.95
    assert (~flagged[~y]).mean() == pytest.approx(out["specificity"])
    # The highest such threshold: the next distinct score above it misses the target.
    higher = np.unique(s[s > out["threshold"]])
    if len(higher):
        assert (s[y] >= higher[0]).mean() < 0.95


def test_bootstrap_matches_resampling_indices_directly():
    y, s = _case(5, n=60, ties=True)
    low, high = metrics.bootstrap_auroc(y, s, n_resamples=2000, seed=1)
    # An independent, slow reference: resample indices, AUROC from the full pairwise comparison.
    rng = np.random.default_rng(2)
    pos, neg = s[y], s[~y]
    ref = []
    for _ in range(2000):
        a, b = rng.choice(pos, len(pos)), rng.choice(neg, len(neg))
        ref.append(((a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :])).mean())
    ref_low, ref_high = np.quantile(ref, [0.025, 0.975])
    assert low == pytest.approx(ref_low, abs=0.02) and high == pytest.approx(ref_high, abs=0.02)


def test_bootstrap_contains_the_estimate_shrinks_with_n_and_is_seeded():
    widths = []
    for n in (100, 400, 1600):
        y, s = _case(7, n=n)
        low, high = metrics.bootstrap_auroc(y, s, n_resamples=500, seed=0)
        assert low <= metrics.auroc(y, s) <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4.0, rel=0.35)  # width ~ 1/sqrt(n)
    y, s = _case(7)
    assert metrics.bootstrap_auroc(y, s, 300, seed=3) == metrics.bootstrap_auroc(y, s, 300, seed=3)
    assert metrics.bootstrap_auroc(y, s, 300, seed=3) != metrics.bootstrap_auroc(y, s, 300, seed=4)


def test_evaluate_every_score_with_class_labels():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4, 200)
    anomalous = classes != 2
    scores = {"good": anomalous + rng.normal(0, 0.5, 200), "noise": rng.normal(size=200),
              "broken": np.where(np.arange(200) == 5, np.nan, 1.0)}
    out = metrics.evaluate(scores, classes, normal_classes=[2], n_resamples=100)
    assert out["num_anomalous"] == int(anomalous.sum()) and out["num_normal"] == int((~anomalous).sum())
    good = out["scores"]["good"]
    assert good["auroc"] == pytest.approx(sk.roc_auc_score(anomalous, scores["good"]))
    assert good["average_precision"] == pytest.approx(sk.average_precision_score(anomalous, scores["good"]))
    assert good["auroc_ci"][0] <= good["auroc"] <= good["auroc_ci"][1]
    assert {"threshold_best_f1", "threshold_95_sensitivity", "specificity_at_95_sensitivity"} <= set(good)
    assert 0.35 < out["scores"]["noise"]["auroc"] < 0.65
    assert out["scores"]["broken"]["auroc"] is None and "NaN" in out["scores"]["broken"]["note"]
    # Binary labels give the same numbers.
    same = metrics.evaluate({"good": scores["good"]}, anomalous.astype(int), n_resamples=100)
    assert same["scores"]["good"] == good


def test_evaluate_needs_both_kinds_of_image():
    with pytest.raises(ValueError, match="both anomalous"):
        metrics.evaluate({"a": np.arange(5.0)}, np.zeros(5, int))
    with pytest.raises(ValueError, match="1 \\(anomalous\\) or 0"):
        metrics.evaluate({"a": np.arange(3.0)}, np.array([0, 1, 2]))


def test_pixel_auroc_and_best_dice():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 16, 16), bool)
    masks[:, 4:9, 5:11] = True
    maps = rng.random((6, 16, 16)) + 0.7 * masks
    out = metrics.pixel_metrics(maps, masks)
    assert out["pixel_auroc"] == pytest.approx(sk.roc_auc_score(masks.ravel(), maps.ravel()))
    # Best Dice by brute force over a grid of thresholds can only be lower or equal, and close.
    dice = [2 * (masks & (maps >= t)).sum() / (masks.sum() + (maps >= t).sum()) for t in np.linspace(0, 1.7, 400)]
    assert max(dice) <= out["best_dice"] + 1e-12 and out["best_dice"] - max(dice) < 0.01
    t = out["best_dice_threshold"]
    assert 2 * (masks & (maps >= t)).sum() / (masks.sum() + (maps >= t).sum()) == pytest.approx(out["best_dice"])
