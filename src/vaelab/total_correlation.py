"""The KL term split in three (Chen et al. 2018, "Isolating sources of disentanglement in VAEs").

With n the index of an image (uniform over the N training images), q(z) = (1/N) Σ_n q(z|n) the
aggregate posterior and q(z_d) its marginals, the average KL to a factorised prior splits as

    E_n KL(q(z|n) || p(z)) =  E_q(z,n)[log q(z|n) − log q(z)]            index-code MI  I(z; n)
                            + E_q(z)[log q(z) − Σ_d log q(z_d)]           total correlation TC
                            + E_q(z)[Σ_d log q(z_d) − log p(z_d)]        dimension-wise KL

and β-TCVAE minimises  recon + α·MI + β·TC + γ·dim-KL  (vaelab: α = γ = 1, β = --tc-weight).

q(z) and q(z_d) need the whole data set; the minibatch-weighted sampling estimator (MWS, Chen
et al. 2018, Sec. 4.1) estimates them at each draw z_i ~ q(z|n_i) of a batch of M images from
the densities of that draw under every posterior of the batch:

    q(z_i) ≈ Σ_j w_ij q(z_i|n_j),   w_ii = 1/N,   w_ij = (N − 1) / (N (M − 1)) for j ≠ i,

and the same per dimension for q(z_id). The weights are those of a batch drawn uniformly
without replacement (what vaelab's shuffled batches are): the image's own posterior stands for
itself, the M − 1 others for the N − 1 images not drawn, so the estimate of q(z_i) is unbiased
and the estimated MI, TC and dim-KL converge to the true ones as M grows (tested against the
exact TC of a Gaussian). Chen et al.'s equation (and their code) weighs every term by 1/(NM)
instead; their estimate of each term is then offset by a constant (log N in log q(z), D log N in
Σ_d log q(z_d)), and its gradient is that of the plain minibatch average (1/M) Σ_j, which
differs from this one only in the weight of the image's own posterior. A batch of one image
has no others: its q(z) is taken to be its own posterior (MI = TC = 0 for that batch).
The three terms always sum to log q(z|n) − log p(z), the Monte Carlo estimate of the KL.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

LOG_2PI = math.log(2 * math.pi)


class KLDecomposition(NamedTuple):
    """Per-image estimates (B,) of the three parts of KL(q(z|x) || p(z)), in nats."""

    index_code_mi: torch.Tensor  # log q(z|n) - log q(z)
    total_correlation: torch.Tensor  # log q(z) - sum_d log q(z_d)
    dim_kl: torch.Tensor  # sum_d log q(z_d) - log p(z)


def pairwise_log_density(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log q(z_id | n_j) of every draw i under every diagonal-Gaussian posterior j, per dimension.

    z (M, D) draws; mean, log_var (M, D) the posteriors -> (M, M, D), [i, j, d].
    """
    diff = z[:, None, :] - mean[None, :, :]  # (M, M, D)
    return -0.5 * (diff.square() * torch.exp(-log_var)[None] + log_var[None] + LOG_2PI)


def mws_log_weights(batch: int, dataset_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """log w_ij (M, M) of the minibatch-weighted estimate (see the module docstring)."""
    if batch == 1:
        return torch.zeros(1, 1, dtype=dtype, device=device)
    if dataset_size < batch:
        raise ValueError(f"dataset_size ({dataset_size}) must be at least the batch size ({batch})")
    others = math.log(dataset_size - 1) - math.log(dataset_size) - math.log(batch - 1)
    weights = torch.full((batch, batch), others, dtype=dtype, device=device)
    weights.fill_diagonal_(-math.log(dataset_size))
    return weights


def aggregate_log_densities(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor,
                            dataset_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MWS estimates at each draw of (log q(z_i), sum_d log q(z_id)), each (M,).

    z (M, D): z_i ~ q(z|n_i); mean, log_var (M, D): the batch's diagonal-Gaussian posteriors.
    """
    log_q = pairwise_log_density(z, mean, log_var)  # (M, M, D)
    log_w = mws_log_weights(z.shape[0], dataset_size, z.dtype, z.device)  # (M, M)
    log_qz = torch.logsumexp(log_w + log_q.sum(-1), dim=1)  # (M,) the joint
    log_qz_marginals = torch.logsumexp(log_w[:, :, None] + log_q, dim=1).sum(-1)  # (M,) each dim, summed
    return log_qz, log_qz_marginals


def kl_decomposition(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, log_qz_given_x: torch.Tensor,
                     log_pz: torch.Tensor, dataset_size: int) -> KLDecomposition:
    """The three terms at each draw (see the module docstring), each (M,).

    log_qz_given_x (M,): log q(z_i | n_i); log_pz (M,): log p(z_i) under a factorised prior.
    """
    log_qz, log_qz_marginals = aggregate_log_densities(z, mean, log_var, dataset_size)
    return KLDecomposition(log_qz_given_x - log_qz, log_qz - log_qz_marginals, log_qz_marginals - log_pz)


def gaussian_total_correlation(covariance: torch.Tensor) -> float:
    """The exact TC of N(mu, Sigma): -1/2 log det(correlation matrix), in nats (a reference)."""
    std = covariance.diagonal().sqrt()
    correlation = covariance / (std[:, None] * std[None, :])
    return float(-0.5 * torch.linalg.slogdet(correlation.double()).logabsdet)
