"""Anomaly scores of images under a trained VAE, higher = more anomalous, one value per image.

`score(model, images, reference)` returns {name: (N,) float64} in the order of `SCORE_NAMES`:

- `neg_elbo`: −ELBO = −E_q[log p(x|z)] + KL(q(z|x) || p(z)) (Kingma & Welling 2013), the
  expectation over ELBO_SAMPLES posterior draws, in nats.
- `nll`: −L_K, the importance-weighted bound with K samples (Burda et al. 2015), in nats; the
  closest this model gets to −log p(x).
- `kl`: KL(q(z|x) || p(z)), how far the image's code is from the prior (An & Cho 2015 and
  others use it alone).
- `recon_mse`, `recon_mae`, `recon_1_minus_ssim`: the reconstruction x̂ = E[x | z = E_q[z|x]]
  against x as mean squared error, mean absolute error and 1 − SSIM (Wang et al. 2004;
  `vaelab.image_metrics.ssim`), the residual scores of most autoencoder papers (Baur et al. 2021).
- `latent_mahalanobis`: sqrt((μ − m)ᵀ Σ⁻¹ (μ − m)) of the code μ = E_q[z|x] under the Gaussian
  (m, Σ) fitted to the codes of the normal training images (Σ + 10⁻⁶·tr(Σ)/D·I, so that an
  unused latent dimension cannot make Σ singular).
- `likelihood_ratio`: −log2 p(x) − L(x) in bits, the input-complexity-corrected likelihood of
  Serrà et al. 2020: the model's code length (−L_K in bits) minus the image's lossless
  compressed length (`complexity.compressed_bits`, PNG), a likelihood ratio against a generic
  compressor that removes the "simple images look likely" bias of raw likelihoods (Nalisnick et
  al. 2019). For a density likelihood (Gaussian on [0, 1]) 8 bits per value are added to −L_K,
  −log2 of the 8-bit bin width, so that both terms are code lengths of the 8-bit image.
- `mean_image_distance`, `nearest_neighbour_distance`: the pixel-space baselines of
  `vaelab.anomaly.baselines`, which use no model at all.

The reference-based scores (`latent_mahalanobis` and the two baselines) need a
`NormalReference` (`fit_reference`) built from normal training images; without one they are
left out. Every random draw comes from a generator seeded with `seed` inside
`torch.random.fork_rng`, so scoring twice gives the same numbers and never disturbs other RNGs.
Images are scored as given (grey values, or the bits of a statically binarised dataset): a
dynamically binarised run is scored on grey values, where the Bernoulli log-likelihood of the
reconstruction term is its expectation over binarisations, with no binarisation noise in a
per-image score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from vaelab.anomaly.baselines import as_float, mean_image, mean_image_distance, nearest_neighbour_distance
from vaelab.anomaly.complexity import compressed_bits, compressor_for
from vaelab.anomaly.names import DEFAULT_IW_SAMPLES, REFERENCE_SCORES, SCORE_NAMES
from vaelab.errors import ConfigError, DataError
from vaelab.image_metrics import ssim

if TYPE_CHECKING:
    from vaelab.models import VAE

ELBO_SAMPLES = 10
SCORE_SEED = 1234
COVARIANCE_RIDGE = 1e-6  # times the mean variance, added to the diagonal of the code covariance


@dataclass
class NormalReference:
    """What the reference-based scores know about the normal training images."""

    code_mean: torch.Tensor  # (D,) float64: mean of E_q[z|x]
    code_covariance: torch.Tensor  # (D, D) float64, ridge included
    code_cholesky: torch.Tensor  # (D, D) lower-triangular factor of code_covariance
    mean_image: torch.Tensor  # (C, *S) float64 in [0, 1]
    bank: torch.Tensor  # (M, C, *S) the normal images themselves (uint8 where given so), for nearest neighbours

    @property
    def num_images(self) -> int:
        """How many normal images the reference was fitted on."""
        return int(len(self.bank))


def _check_model(model: VAE) -> None:
    if getattr(model, "conditional", False):
        raise ConfigError("anomaly scores need an unconditional model: a conditional VAE needs the label of an "
                          "image it has never seen")


def _check_images(model: VAE, images: torch.Tensor, what: str) -> torch.Tensor:
    images = torch.as_tensor(images)
    if tuple(images.shape[1:]) != tuple(model.image_shape):
        raise DataError(f"{what} are {tuple(images.shape[1:])}, the model expects {tuple(model.image_shape)}")
    if len(images) == 0:
        raise DataError(f"no {what} to score")
    return images


def _batches(images: torch.Tensor, batch_size: int, device: torch.device):
    for start in range(0, len(images), batch_size):
        yield as_float(images[start:start + batch_size]).to(device)


@torch.inference_mode()
def encode_means(model: VAE, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """E_q[z|x] of every image -> (N, D) float64 on the CPU."""
    return torch.cat([model.encode(x).mean.double().cpu() for x in _batches(images, batch_size, model.device)])


def fit_reference(model: VAE, normal_images: torch.Tensor, batch_size: int = 1000) -> NormalReference:
    """Fit the reference of the normal images (N, C, *S): code Gaussian, mean image, NN bank."""
    _check_model(model)
    normal_images = _check_images(model, normal_images, "normal images")
    codes = encode_means(model, normal_images, batch_size)  # (M, D)
    mean = codes.mean(0)
    centred = codes - mean
    covariance = centred.T @ centred / max(len(codes) - 1, 1)  # (D, D)
    ridge = COVARIANCE_RIDGE * max(float(covariance.diagonal().mean()), 1e-12)
    covariance = covariance + ridge * torch.eye(len(mean), dtype=torch.float64)
    return NormalReference(mean, covariance, torch.linalg.cholesky(covariance), mean_image(normal_images),
                           normal_images.cpu())


def mahalanobis(codes: torch.Tensor, reference: NormalReference) -> np.ndarray:
    """sqrt((z - m)ᵀ Σ⁻¹ (z - m)) per row of codes (N, D) -> (N,) float64, via the Cholesky factor."""
    centred = (codes.double().cpu() - reference.code_mean)[:, :, None]  # (N, D, 1)
    whitened = torch.linalg.solve_triangular(reference.code_cholesky, centred, upper=False)
    return whitened.squeeze(-1).norm(dim=1).numpy()


def nll_bits(model: VAE, nll_nats: np.ndarray) -> np.ndarray:
    """-L_K in bits of the 8-bit image: nats / ln 2, + 8 bits per value for a density likelihood."""
    bits = nll_nats / math.log(2)
    if not model.likelihood.discrete:
        bits = bits + 8.0 * math.prod(model.image_shape)  # -log2 of the bin width 1/256 per value
    return bits


@torch.inference_mode()
def score(model: VAE, images: torch.Tensor, reference: Optional[NormalReference | torch.Tensor] = None, *,
          iw_samples: int = DEFAULT_IW_SAMPLES, batch_size: int = 250, seed: int = SCORE_SEED,
          scores: Optional[Sequence[str]] = None, exclude: Optional[torch.Tensor] = None,
          progress: bool = False) -> dict[str, np.ndarray]:
    """Every anomaly score of `images` (N, C, *S) (uint8, or float in [0, 1]): {name: (N,) float64}.

    `reference`: a `NormalReference` or the normal training images themselves (fitted here);
    without one the reference-based scores are left out. `scores` picks a subset of
    `SCORE_NAMES`. `exclude` (N,) gives per image a reference-bank index to leave out of the
    nearest-neighbour search (-1: none), for scoring the normal images themselves.
    """
    from tqdm.auto import tqdm

    from vaelab.evaluate import iwae_bound

    _check_model(model)
    images = _check_images(model, images, "images")
    unknown = [name for name in scores or () if name not in SCORE_NAMES]
    if unknown:
        raise ConfigError(f"unknown anomaly score '{unknown[0]}'; choose from {', '.join(SCORE_NAMES)}")
    if reference is not None and not isinstance(reference, NormalReference):
        reference = fit_reference(model, reference)
    wanted = [n for n in (scores or SCORE_NAMES) if reference is not None or n not in REFERENCE_SCORES]
    device = model.device
    # Only what the wanted scores need: the L_K bound (most of the time) and SSIM are skipped otherwise.
    need_elbo = bool({"neg_elbo", "kl"} & set(wanted))
    need_bound = bool({"nll", "likelihood_ratio"} & set(wanted))
    need_recon = bool({"recon_mse", "recon_mae", "recon_1_minus_ssim"} & set(wanted))
    columns: dict[str, list[np.ndarray]] = {"codes": []}
    bar = tqdm(total=len(images), desc="scoring", unit="img", disable=not progress, leave=False, dynamic_ncols=True)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        # One generator per kind of draw, so a score never depends on which other scores were asked.
        elbo_generator = torch.Generator(device=device).manual_seed(seed)
        bound_generator = torch.Generator(device=device).manual_seed(seed + 1)
        for x in _batches(images, batch_size, device):
            posterior = model.encode(x)
            batch: dict[str, torch.Tensor] = {"codes": posterior.mean}
            if need_elbo:
                # (S, B) draws -> (B,): -E_q[log p(x|z)] and the KL, closed form where it exists.
                recon, kl, _ = model.elbo_terms(x, None, posterior, num_samples=ELBO_SAMPLES,
                                                generator=elbo_generator)
                batch.update(neg_elbo=recon + kl, kl=kl)
            if need_bound:
                batch["nll"] = -iwae_bound(model, x, None, iw_samples, posterior, bound_generator)  # (B,) -L_K
            if need_recon:
                x_hat = model.likelihood.mean(model.decode(posterior.mean))  # (B, C, *S) expected image
                residual = (x - x_hat).flatten(1)
                batch.update(recon_mse=residual.square().mean(1), recon_mae=residual.abs().mean(1))
                if "recon_1_minus_ssim" in wanted:
                    batch["recon_1_minus_ssim"] = 1.0 - ssim(x_hat.clamp(0, 1), x)
            for name, values in batch.items():
                columns.setdefault(name, []).append(values.double().cpu().numpy())
            bar.update(len(x))
    bar.close()
    table = {name: np.concatenate(values) for name, values in columns.items()}
    out: dict[str, np.ndarray] = {}
    for name in wanted:
        if name in table:
            out[name] = table[name]
        elif name == "latent_mahalanobis":
            out[name] = mahalanobis(torch.from_numpy(table["codes"]), reference)
        elif name == "likelihood_ratio":
            out[name] = nll_bits(model, table["nll"]) - compressed_bits(images)
        elif name == "mean_image_distance":
            out[name] = mean_image_distance(images, reference.mean_image)
        elif name == "nearest_neighbour_distance":
            out[name] = nearest_neighbour_distance(images, reference.bank, exclude=exclude)
    return out


def complexity_note(model: VAE) -> str:
    """How `likelihood_ratio`'s complexity term was measured, for the JSON output."""
    return f"{compressor_for(tuple(model.image_shape))}: compressed length in bits"


def percentiles(values: dict[str, np.ndarray], reference_values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per score, the percentage of reference (normal) images scoring at most each value: 0..100."""
    out = {}
    for name, v in values.items():
        ref = np.sort(np.asarray(reference_values[name], dtype=np.float64))
        ref = ref[~np.isnan(ref)]
        out[name] = 100.0 * np.searchsorted(ref, np.asarray(v), side="right") / max(len(ref), 1)
    return out
