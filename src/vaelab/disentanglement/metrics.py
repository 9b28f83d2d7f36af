"""Disentanglement metrics on plain arrays: codes (N, D) against discrete factors (N, K).

Each metric takes the representation's codes (vaelab uses the posterior means) and the index
of every factor's value for the same images, and returns its score with the matrix behind it:

- `mig`: the mutual information gap (Chen et al. 2018). I(z_d; v_k) between each binned code
  dimension and each factor; per factor, the gap between its two most informative dimensions
  divided by H(v_k); averaged over factors. 0 (no dimension says more about a factor than
  another) .. 1 (one dimension says everything, all others nothing). Codes are binned into
  `bins` equal-width bins per dimension (20, as disentanglement_lib, Locatello et al. 2019);
  Chen et al. estimate I(z_d; v_k) from q(z_d|x) instead, which needs every image of the data.
- `factor_vae_score` (Kim & Mnih 2018): a vote fixes one factor at a random value, draws a batch
  of images sharing it, and votes for the code dimension of least variance (each dimension
  divided by its standard deviation over all images; collapsed dimensions are left out); a
  majority-vote classifier maps dimensions to factors on training votes, and the score is its
  accuracy on evaluation votes. 1 is perfect; chance is about 1/K, not 0.
- `dci` (Eastwood & Williams 2018): one forest of extremely randomised trees per factor
  (scikit-learn's ExtraTreesClassifier, Geurts et al. 2006, a random-forest variant: 30 trees,
  every dimension a candidate at each split, depth <= 12, >= 20 codes per leaf) predicts the
  factor as a class from the code; R[d, k] is dimension d's importance (mean decrease in
  impurity) for factor k. Eastwood & Williams use a lasso or a random forest regressor,
  disentanglement_lib boosted trees; on the constructed codes of the tests a random forest
  gives the same scores as these trees, 3-6 times slower. Disentanglement: 1 − the
  entropy (base K) of each dimension's importances over factors, weighted by the dimension's share
  of all importance; completeness: 1 − the entropy (base D) of each factor's importances over
  dimensions, averaged; informativeness: the forests' accuracy on held-out codes.
- `sap` (Kumar et al. 2018): S[d, k] is how well dimension d alone predicts factor k on held-out
  codes: R² of a linear regression for an ordered factor, balanced accuracy of a per-bin
  majority classifier for a categorical one; the score is the mean over factors of the gap
  between the two best dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

DEFAULT_BINS = 20


# ---- mutual information of discrete variables ---------------------------------------------------

def discretize(codes: np.ndarray, bins: int = DEFAULT_BINS, edges: Optional[Sequence[np.ndarray]] = None) -> np.ndarray:
    """Codes (N, D) -> bin indices (N, D) in 0..bins-1: `bins` equal-width bins per dimension over
    its range (or over given `edges`, one array of bins + 1 per dimension; values outside go to
    the end bins)."""
    codes = np.asarray(codes, dtype=np.float64)
    out = np.empty(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        e = edges[d] if edges is not None else np.histogram_bin_edges(codes[:, d], bins)
        out[:, d] = np.clip(np.digitize(codes[:, d], e[1:-1]), 0, len(e) - 2)
    return out


def entropy(values: np.ndarray) -> float:
    """Plug-in entropy (nats) of a discrete sample (N,)."""
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in mutual information (nats) of two discrete samples (N,): sum p(a,b) log p(a,b)/(p(a)p(b))."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    joint = np.bincount(a * (b.max() + 1) + b, minlength=(a.max() + 1) * (b.max() + 1))
    joint = joint.reshape(a.max() + 1, b.max() + 1) / len(a)
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def mutual_information_matrix(binned: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """I(z_d; v_k) (D, K) in nats, for binned codes (N, D) and factor indices (N, K)."""
    return np.array([[mutual_information(binned[:, d], factors[:, k]) for k in range(factors.shape[1])]
                     for d in range(binned.shape[1])])


# ---- MIG -------------------------------------------------------------------------------------------

@dataclass
class MIGResult:
    score: float  # mean over factors of the normalised gap
    per_factor: np.ndarray  # (K,) (I_top1 - I_top2) / H(v_k)
    mutual_information: np.ndarray  # (D, K) nats
    factor_entropy: np.ndarray  # (K,) nats


def mig(codes: np.ndarray, factors: np.ndarray, bins: int = DEFAULT_BINS) -> MIGResult:
    """The mutual information gap (Chen et al. 2018) of codes (N, D) for factors (N, K)."""
    mi = mutual_information_matrix(discretize(codes, bins), factors)  # (D, K)
    h = np.array([entropy(factors[:, k]) for k in range(factors.shape[1])])
    top = np.sort(mi, axis=0)[::-1]  # (D, K), largest first
    second = top[1] if len(top) > 1 else np.zeros_like(top[0])
    gaps = np.where(h > 0, (top[0] - second) / np.where(h > 0, h, 1.0), 0.0)
    return MIGResult(float(gaps.mean()), gaps, mi, h)


# ---- FactorVAE score ---------------------------------------------------------------------------

@dataclass
class FactorVAEResult:
    score: float  # evaluation accuracy of the majority-vote classifier
    train_accuracy: float
    active_dims: list[int]  # dimensions that took part (the others collapsed)
    votes: np.ndarray  # (D, K) training votes: how often dimension d had the least variance when factor k was fixed


def factor_vae_score(codes: np.ndarray, factors: np.ndarray, rng: np.random.Generator, batch_size: int = 64,
                     train_votes: int = 10_000, eval_votes: int = 5_000,
                     collapsed_variance: float = 0.05 ** 2) -> FactorVAEResult:
    """The FactorVAE disentanglement score (Kim & Mnih 2018) on a pool of codes (N, D) with factors (N, K).

    A vote's batch is drawn from the pool's images that share the fixed factor value (with
    replacement when fewer than `batch_size` do). Dimensions whose variance over the pool is
    below `collapsed_variance` are left out; with none left the score is 0.
    """
    codes = np.asarray(codes, dtype=np.float64)
    scale = codes.std(axis=0)
    active = np.flatnonzero(scale ** 2 >= collapsed_variance)
    num_factors = factors.shape[1]
    if len(active) == 0:
        return FactorVAEResult(0.0, 0.0, [], np.zeros((codes.shape[1], num_factors), dtype=np.int64))
    normalised = codes[:, active] / scale[active]
    # Where each value of each factor occurs in the pool (drawn from at every vote).
    members = [{v: np.flatnonzero(factors[:, k] == v) for v in np.unique(factors[:, k])} for k in range(num_factors)]

    def votes(count: int) -> np.ndarray:
        table = np.zeros((codes.shape[1], num_factors), dtype=np.int64)
        for _ in range(count):
            k = int(rng.integers(num_factors))
            pool = members[k][factors[rng.integers(len(factors)), k]]
            rows = rng.choice(pool, size=batch_size, replace=len(pool) < batch_size)
            dim = active[int(np.argmin(normalised[rows].var(axis=0)))]
            table[dim, k] += 1
        return table

    train, evaluation = votes(train_votes), votes(eval_votes)
    chosen = train.argmax(axis=1)  # the majority-vote classifier: dimension -> factor
    accuracy = float(evaluation[np.arange(len(chosen)), chosen].sum() / max(evaluation.sum(), 1))
    train_accuracy = float(train[np.arange(len(chosen)), chosen].sum() / max(train.sum(), 1))
    return FactorVAEResult(accuracy, train_accuracy, active.tolist(), train)


# ---- DCI -------------------------------------------------------------------------------------------

@dataclass
class DCIResult:
    disentanglement: float
    completeness: float
    informativeness: float  # mean held-out accuracy of the per-factor forests
    importance: np.ndarray  # (D, K)
    informativeness_per_factor: np.ndarray  # (K,)


def _one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """1 - H(p) / log(base) along axis 0 of a (base, M) matrix of distributions (1 when base is 1)."""
    if base <= 1:
        return np.ones(p.shape[1])
    logs = np.log(np.where(p > 0, p, 1.0))
    return 1.0 + (p * logs).sum(axis=0) / math.log(base)


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) of an importance matrix R (D, K) (Eastwood & Williams 2018)."""
    importance = np.abs(np.asarray(importance, dtype=np.float64))
    total = importance.sum()
    if total <= 0:
        return 0.0, 0.0
    dims, factors = importance.shape
    per_dim = importance.sum(axis=1)  # (D,)
    p_dim = importance / np.where(per_dim > 0, per_dim, 1.0)[:, None]  # rows: a distribution over factors
    disentanglement = float((_one_minus_entropy(p_dim.T, factors) * (per_dim / total)).sum())
    per_factor = importance.sum(axis=0)  # (K,)
    p_factor = importance / np.where(per_factor > 0, per_factor, 1.0)[None, :]  # columns: over dimensions
    completeness = float(_one_minus_entropy(p_factor, dims)[per_factor > 0].mean()) if (per_factor > 0).any() else 0.0
    return disentanglement, completeness


def dci(train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray, test_factors: np.ndarray,
        seed: int = 0, trees: int = 30) -> DCIResult:
    """DCI (Eastwood & Williams 2018) with one forest of randomised trees per factor."""
    from sklearn.ensemble import ExtraTreesClassifier

    dims, num_factors = train_codes.shape[1], train_factors.shape[1]
    importance = np.zeros((dims, num_factors))
    accuracy = np.zeros(num_factors)
    for k in range(num_factors):
        forest = ExtraTreesClassifier(n_estimators=trees, max_features=None, max_depth=12, min_samples_leaf=20,
                                      random_state=seed + k, n_jobs=1)
        forest.fit(train_codes, train_factors[:, k])
        importance[:, k] = forest.feature_importances_
        accuracy[k] = forest.score(test_codes, test_factors[:, k])
    disentanglement, completeness = dci_from_importance(importance)
    return DCIResult(disentanglement, completeness, float(accuracy.mean()), importance, accuracy)


# ---- SAP -------------------------------------------------------------------------------------------

@dataclass
class SAPResult:
    score: float
    per_factor: np.ndarray  # (K,) gap between the two best dimensions
    matrix: np.ndarray  # (D, K) score of each dimension alone for each factor


def _r_squared(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Held-out R² (clipped at 0) of the least-squares line y ~ a x + b fitted on the training pairs."""
    if train_x.std() == 0 or test_y.std() == 0:
        return 0.0
    a, b = np.polyfit(train_x, train_y, 1)
    residual = ((test_y - (a * test_x + b)) ** 2).sum()
    return max(0.0, 1.0 - residual / ((test_y - test_y.mean()) ** 2).sum())


def _binned_balanced_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                              bins: int) -> float:
    """Balanced accuracy on the test pairs of the classifier that predicts each of `bins` bins of
    x (equal width over the training range) as its most frequent training class."""
    edges = np.histogram_bin_edges(train_x, bins)
    train_bin = discretize(train_x[:, None], edges=[edges])[:, 0]
    test_bin = discretize(test_x[:, None], edges=[edges])[:, 0]
    fallback = np.bincount(train_y).argmax()
    predict = np.full(bins, fallback)
    for b in np.unique(train_bin):
        predict[b] = np.bincount(train_y[train_bin == b]).argmax()
    predicted = predict[test_bin]
    return float(np.mean([(predicted[test_y == c] == c).mean() for c in np.unique(test_y)]))


def sap(train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray, test_factors: np.ndarray,
        categorical: Sequence[bool], factor_values: Optional[Sequence[Sequence[float]]] = None,
        bins: int = DEFAULT_BINS) -> SAPResult:
    """The separated attribute predictability (Kumar et al. 2018).

    Ordered factors are regressed on their values (`factor_values[k][index]`, default the index
    itself), categorical ones classified (see the module docstring).
    """
    dims, num_factors = train_codes.shape[1], train_factors.shape[1]
    matrix = np.zeros((dims, num_factors))
    for k in range(num_factors):
        values = np.asarray(factor_values[k], dtype=np.float64) if factor_values is not None else None
        for d in range(dims):
            x_train, x_test = train_codes[:, d], test_codes[:, d]
            if categorical[k]:
                matrix[d, k] = _binned_balanced_accuracy(x_train, train_factors[:, k], x_test, test_factors[:, k], bins)
            else:
                y_train = train_factors[:, k] if values is None else values[train_factors[:, k]]
                y_test = test_factors[:, k] if values is None else values[test_factors[:, k]]
                matrix[d, k] = _r_squared(x_train, y_train.astype(np.float64), x_test, y_test.astype(np.float64))
    top = np.sort(matrix, axis=0)[::-1]
    gaps = top[0] - (top[1] if dims > 1 else 0.0)
    return SAPResult(float(gaps.mean()), gaps, matrix)
