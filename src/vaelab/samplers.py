"""Post-hoc samplers: a Gaussian mixture fitted to the aggregate posterior of the training codes.

Ghosh et al. 2020 ("From Variational to Deterministic Autoencoders", Sec. 4, "ex-post density
estimation") fit a Gaussian mixture with 10 components to the latent codes of the training
images and sample it instead of the prior; the samples follow where the encoder actually puts
images (the aggregate posterior q(z) = E_x q(z|x)), which the prior often matches poorly. vaelab
fits scikit-learn's `GaussianMixture` (EM, k-means initialisation, a seeded random state) to the
posterior means of the training split (binarised as in training), and saves the result in the run
folder without pickle:

    RUN/sampler.safetensors   weights (K,), means (K, D), covariances (K, D, D) as float64
    RUN/sampler.json          how it was fitted: K, covariance type, codes, images, seed, fit scores

`vaelab sample RUN --sampler gmm` draws from it (k ~ weights, z = mean_k + t * L_k N, with L_k the
Cholesky factor of covariance_k and t the temperature) and `vaelab eval` reports the FID of its
samples (`fid_gmm`) beside the prior's (`fid`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from vaelab.errors import ConfigError, RunError

if TYPE_CHECKING:
    from vaelab.data import ImageData
    from vaelab.models import VAE

SAMPLER_WEIGHTS = "sampler.safetensors"
SAMPLER_META = "sampler.json"
COVARIANCES = ("full", "diag")
REG_COVAR = 1e-6  # added to every covariance's diagonal (scikit-learn's default): keeps it invertible
FIT_SEED = 0


@dataclass
class GaussianMixtureSampler:
    """A fitted mixture over codes (D,): `weights` (K,), `means` (K, D), `covariances` (K, D, D)."""

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_components(self) -> int:
        return int(self.weights.shape[0])

    @property
    def description(self) -> str:
        """How figures and eval.json name it."""
        codes = self.meta.get("num_codes")
        fitted = f" fitted to {codes} training codes" if codes else ""
        return f"a {self.num_components}-component Gaussian mixture{fitted} (vaelab fit-sampler)"

    def sample(self, n: int, generator: Optional[torch.Generator] = None, temperature: float = 1.0) -> torch.Tensor:
        """n draws (n, D) on the CPU: k ~ Categorical(weights), z = mean_k + t * chol(cov_k) N."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)  # (n, D)
        chol = torch.linalg.cholesky(self.covariances)  # (K, D, D)
        z = self.means[k] + temperature * (chol[k] @ noise[:, :, None])[:, :, 0]
        return z.float()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log sum_k w_k N(z; mean_k, cov_k): z (N, D) -> (N,), in float64."""
        dist = torch.distributions.MultivariateNormal(self.means, covariance_matrix=self.covariances)
        log_comp = dist.log_prob(z.double()[:, None, :])  # (N, K)
        return torch.logsumexp(log_comp + self.weights.log(), dim=1)

    # ---- the run folder ---------------------------------------------------------------------------
    def save(self, run_dir: str | Path) -> None:
        """Write sampler.safetensors and sampler.json into `run_dir` (each atomically)."""
        from safetensors.torch import save as st_save

        from vaelab.checkpoint import atomic_write_bytes, atomic_write_text

        run_dir = Path(run_dir)
        tensors = {"weights": self.weights, "means": self.means, "covariances": self.covariances}
        atomic_write_bytes(run_dir / SAMPLER_WEIGHTS, st_save({k: v.double().contiguous() for k, v in tensors.items()}))
        atomic_write_text(run_dir / SAMPLER_META, json.dumps(self.meta, indent=2) + "\n")


def load_sampler(run_dir: str | Path, latent_dim: int) -> Optional[GaussianMixtureSampler]:
    """The fitted sampler of `run_dir`, or None when it has none; one RunError if it is damaged or
    does not fit the model's `latent_dim`."""
    from vaelab.checkpoint import read_safetensors

    run_dir = Path(run_dir)
    if not (run_dir / SAMPLER_WEIGHTS).is_file():
        return None
    tensors, _ = read_safetensors(run_dir / SAMPLER_WEIGHTS)
    try:
        meta = json.loads((run_dir / SAMPLER_META).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        meta = {}
    weights, means, covs = (tensors.get(k) for k in ("weights", "means", "covariances"))
    if weights is None or means is None or covs is None:
        raise RunError(f"{run_dir / SAMPLER_WEIGHTS} lacks weights, means or covariances; fit it again with "
                       f"vaelab fit-sampler {run_dir} --gmm K")
    k = weights.shape[0]
    if weights.dim() != 1 or means.shape != (k, latent_dim) or covs.shape != (k, latent_dim, latent_dim):
        raise RunError(f"{run_dir / SAMPLER_WEIGHTS} does not fit this model's {latent_dim}-d codes; fit it again "
                       f"with vaelab fit-sampler {run_dir} --gmm K")
    ok = bool(torch.isfinite(weights).all() and torch.isfinite(means).all() and torch.isfinite(covs).all()
              and (weights >= 0).all() and weights.sum() > 0)
    if ok:
        try:
            torch.linalg.cholesky(covs.double())
        except RuntimeError:
            ok = False
    if not ok:
        raise RunError(f"{run_dir / SAMPLER_WEIGHTS} holds invalid mixture parameters (non-finite, negative "
                       f"weights or covariances that are not positive definite); fit it again")
    return GaussianMixtureSampler(weights.double() / weights.double().sum(), means.double(), covs.double(),
                                  meta if isinstance(meta, dict) else {})


@torch.inference_mode()
def training_codes(model: VAE, data: ImageData, *, dynamic_binarize: bool, max_images: Optional[int] = None,
                   seed: int = FIT_SEED, batch_size: int = 1000) -> torch.Tensor:
    """Posterior means (N, D) of the training split (a seeded subset of `max_images`), each image
    binarised as in training for a dynamically binarised run."""
    from vaelab.data.batches import iterate_batches
    from vaelab.latent import subsample

    split = data.train if max_images is None else subsample(data.train, max_images, seed)
    gen = torch.Generator().manual_seed(seed)
    codes = []
    for x, y in iterate_batches(split, batch_size, shuffle=False, generator=gen, dynamic_binarize=dynamic_binarize,
                                device=model.device, with_labels=model.conditional):
        codes.append(model.encode(x, y if model.conditional else None).mean.double().cpu())
    return torch.cat(codes)


def fit_gmm(codes: torch.Tensor, num_components: int, covariance: str = "full", seed: int = FIT_SEED,
            max_iter: int = 200) -> GaussianMixtureSampler:
    """scikit-learn's GaussianMixture fitted to `codes` (N, D) -> a sampler (covariances as (K, D, D))."""
    from sklearn.mixture import GaussianMixture

    if covariance not in COVARIANCES:
        raise ConfigError(f"--covariance must be one of {', '.join(COVARIANCES)}, got {covariance!r}")
    n = codes.shape[0]
    if not 1 <= num_components <= n:
        raise ConfigError(f"--gmm {num_components}: needs between 1 and the number of codes ({n}) components")
    if not torch.isfinite(codes).all():
        raise RunError("the training codes are not finite; the model's weights may have diverged")
    started = time.perf_counter()
    gmm = GaussianMixture(num_components, covariance_type=covariance, reg_covar=REG_COVAR, max_iter=max_iter,
                          random_state=seed)
    array = codes.double().numpy()
    gmm.fit(array)
    covs = torch.from_numpy(gmm.covariances_).double()
    if covariance == "diag":
        covs = torch.diag_embed(covs)  # (K, D) -> (K, D, D)
    meta = {"kind": "gmm", "components": num_components, "covariance": covariance, "num_codes": int(n),
            "codes": "posterior means of the training split", "seed": seed, "reg_covar": REG_COVAR,
            "converged": bool(gmm.converged_), "iterations": int(gmm.n_iter_),
            "mean_log_likelihood": float(gmm.score(array)), "bic": float(gmm.bic(array)),
            "fit_seconds": round(time.perf_counter() - started, 2), "reference": "Ghosh et al. 2020, ex-post density"}
    if not math.isfinite(meta["mean_log_likelihood"]):
        raise RunError("the Gaussian mixture fit is not finite; try fewer components or --covariance diag")
    return GaussianMixtureSampler(torch.from_numpy(gmm.weights_).double(), torch.from_numpy(gmm.means_).double(),
                                  covs, meta)
