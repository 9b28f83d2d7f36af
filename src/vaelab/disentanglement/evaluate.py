"""`vaelab disentanglement RUN`: the four metrics of a trained run, as one JSON-able result.

Protocol (`Protocol`; the defaults follow disentanglement_lib, Locatello et al. 2019, where the
papers leave sample sizes open): a seeded random pool of `images` images of one split of the
run's dataset (default the training split, 15,000 images) is encoded to its posterior means.
MIG and the FactorVAE score use the whole pool (Chen et al. 2018 compute MIG over all 737,280
dSprites images with their own estimator: see vaelab.disentanglement.metrics); DCI and SAP fit
on the first two thirds of the pool (10,000 codes) and score on the rest (5,000).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vaelab.data.base import FactorSpec, ImageData, Split
from vaelab.disentanglement.metrics import DEFAULT_BINS, dci, factor_vae_score, mig, sap
from vaelab.errors import DataError

if TYPE_CHECKING:
    from vaelab.models import VAE

DISENTANGLEMENT_FILE = "disentanglement.json"
# A dimension "captures" the factor it shares the most information with, as a share of the
# factor's entropy; below this share it captures none.
CAPTURE_THRESHOLD = 0.05
INACTIVE_KL = 0.01  # nats: a dimension whose average KL to the prior is below this is unused
MIN_IMAGES = 20


@dataclass(frozen=True)
class Protocol:
    """Sample sizes and seeds of one evaluation (written into disentanglement.json)."""

    split: str = "train"
    images: int = 15_000  # the pool
    seed: int = 0
    bins: int = DEFAULT_BINS  # MIG (and SAP's categorical classifier): equal-width bins per dimension
    factor_vae_batch: int = 64
    factor_vae_train_votes: int = 10_000
    factor_vae_eval_votes: int = 5_000
    fit_share: float = 2 / 3  # DCI and SAP: the share of the pool they fit on


def pool(split: Split, images: int, seed: int) -> Split:
    """A seeded random subset of at most `images` of a split with factors (sorted, as a Split)."""
    if split.factors is None:
        raise DataError("this split has no factor labels")
    if len(split) <= images:
        return split
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:images].sort().values
    return split.take(idx)


def scores(codes: np.ndarray, factors: np.ndarray, spec: FactorSpec, protocol: Protocol) -> dict[str, Any]:
    """Every metric of codes (N, D) against factor indices (N, K), with the matrices behind them."""
    rng = np.random.default_rng(protocol.seed)
    n_fit = int(round(len(codes) * protocol.fit_share))
    fit, held = slice(0, n_fit), slice(n_fit, None)
    mig_result = mig(codes, factors, protocol.bins)
    factor_vae = factor_vae_score(codes, factors, rng, protocol.factor_vae_batch, protocol.factor_vae_train_votes,
                                  protocol.factor_vae_eval_votes)
    dci_result = dci(codes[fit], factors[fit], codes[held], factors[held], seed=protocol.seed)
    sap_result = sap(codes[fit], factors[fit], codes[held], factors[held], spec.is_categorical(),
                     spec.values, protocol.bins)
    return {
        "mig": mig_result.score,
        "factor_vae": factor_vae.score,
        "dci_disentanglement": dci_result.disentanglement,
        "dci_completeness": dci_result.completeness,
        "dci_informativeness": dci_result.informativeness,
        "sap": sap_result.score,
        "details": {
            "mig_per_factor": _by_factor(spec, mig_result.per_factor),
            "mutual_information_nats": mig_result.mutual_information.round(6).tolist(),  # (D, K)
            "factor_entropy_nats": _by_factor(spec, mig_result.factor_entropy),
            "factor_vae_train_accuracy": factor_vae.train_accuracy,
            "factor_vae_active_dims": factor_vae.active_dims,
            "factor_vae_votes": factor_vae.votes.tolist(),  # (D, K)
            "dci_importance": dci_result.importance.round(6).tolist(),  # (D, K)
            "dci_informativeness_per_factor": _by_factor(spec, dci_result.informativeness_per_factor),
            "sap_per_factor": _by_factor(spec, sap_result.per_factor),
            "sap_matrix": sap_result.matrix.round(6).tolist(),  # (D, K)
        },
    }


def _by_factor(spec: FactorSpec, values: np.ndarray) -> dict[str, float]:
    return {name: float(v) for name, v in zip(spec.names, values)}


def captured_factors(mutual_information: np.ndarray, entropy: np.ndarray, kl_per_dim: np.ndarray,
                     spec: FactorSpec) -> list[dict[str, Any]]:
    """Per latent dimension: the factor it shares the most information with (as a share of the
    factor's entropy), or None when it is unused (KL < INACTIVE_KL) or captures no factor."""
    share = mutual_information / np.where(entropy > 0, entropy, 1.0)[None, :]  # (D, K)
    rows = []
    for d in range(share.shape[0]):
        k = int(share[d].argmax())
        active = bool(kl_per_dim[d] >= INACTIVE_KL)
        factor = spec.names[k] if active and share[d, k] >= CAPTURE_THRESHOLD else None
        rows.append({"dim": d, "factor": factor, "share_of_entropy": float(share[d, k]), "kl": float(kl_per_dim[d]),
                     "active": active})
    return rows


@torch.inference_mode()
def evaluate(model: VAE, data: ImageData, protocol: Protocol) -> tuple[dict[str, Any], Split, np.ndarray]:
    """The disentanglement result of `model` on `data` (-> disentanglement.json), the pool it
    used and the pool's codes (N, D) (for the figures)."""
    from vaelab.latent import encode_split

    if data.factors is None:
        raise DataError(f"the {data.name} dataset has no factor labels")
    split = data.split(protocol.split)
    if len(split) < MIN_IMAGES:
        raise DataError(f"the {protocol.split} split has {len(split)} images; the metrics need at least {MIN_IMAGES}")
    chosen = pool(split, protocol.images, protocol.seed)
    encoded = encode_split(model, chosen)
    codes = encoded.mean.double().numpy()  # (N, D) posterior means
    if not np.isfinite(codes).all():
        raise DataError("the model's codes are not finite; its weights may have diverged")
    factors = chosen.factors.numpy()
    result = scores(codes, factors, data.factors, protocol)
    entropy = np.array(list(result["details"]["factor_entropy_nats"].values()))
    mi = np.array(result["details"]["mutual_information_nats"])
    kl = encoded.kl_per_dim().double().numpy()
    out = {
        "metrics": {k: result[k] for k in ("mig", "factor_vae", "dci_disentanglement", "dci_completeness",
                                           "dci_informativeness", "sap")},
        "factors": list(data.factors.names),
        "factor_sizes": list(data.factors.sizes),
        "latent_dim": int(codes.shape[1]),
        "images": int(len(chosen)),
        "captures": captured_factors(mi, entropy, kl, data.factors),
        "protocol": asdict(protocol),
        "details": result["details"],
    }
    return out, chosen, codes
