"""Training objectives and the importance weights they share.

- `elbo`: the evidence lower bound (Kingma & Welling 2013),
  ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)), one reparameterised sample per image; the
  KL term (closed-form where it exists, see `VAE.elbo_terms`) is weighted by beta (beta-VAE,
  Higgins et al. 2017).
- `iwae`: the importance-weighted bound (Burda et al. 2015),
  L_K(x) = log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x); L_1 = ELBO, L_K increases with K.
- free bits (`--free-bits lambda`, Kingma et al. 2016, Sec. 4 / Appendix C): the ELBO's KL term
  becomes sum_j max(lambda_j, E_batch[KL_j]) over groups j of latent dimensions, so no group is
  pushed below its floor (below it, the group's KL gets no gradient). See `free_bits_kl`.
- `beta-tc`: beta-TCVAE (Chen et al. 2018): the KL split into index-code MI, total correlation
  and dimension-wise KL, estimated by minibatch-weighted sampling (vaelab.total_correlation);
  loss = recon + MI + tc_weight * TC + dim-KL.

`OBJECTIVES` maps `--objective` to a function returning `LossParts` (per-image means, in nats);
`make_objective` binds a run's further settings (the TC weight, the training set's size) to it.
Objectives only call the model's API (`encode`, `elbo_terms`, `log_weights`), so they work for
every prior, posterior and likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, NamedTuple, Optional

import torch

from vaelab.config import DEFAULT_TC_WEIGHT
from vaelab.errors import ConfigError
from vaelab.total_correlation import kl_decomposition

if TYPE_CHECKING:
    from vaelab.config import TrainConfig
    from vaelab.models import VAE
    from vaelab.models.vae import ElboTerms


class LossParts(NamedTuple):
    """What every objective returns: the loss to minimise and its named parts."""

    loss: torch.Tensor  # scalar to minimise (batch mean)
    recon: torch.Tensor  # scalar: mean over the batch of -log p(x|z)
    kl: torch.Tensor  # scalar: mean over the batch of KL(q(z|x) || p(z))
    # Further batch-mean terms to log (e.g. each latent layer's KL), by name: metrics.jsonl gets
    # train_<name> per epoch. Never part of the loss; never modified (a shared default).
    extras: dict[str, torch.Tensor] = {}


def free_bits_kl(terms: ElboTerms, layer_sizes: tuple[int, ...], free_bits: float) -> torch.Tensor:
    """The free-bits KL term sum_j max(floor_j, mean over the batch of KL_j) (Kingma et al. 2016).

    Groups j, from the finest the KL allows: each latent dimension (floor lambda) where the KL is
    closed-form per dimension (`terms.kl_per_dim`, a diagonal posterior against N(0, I), or every
    layer of a hierarchical model given the layer above); else each stochastic layer of D_l
    dimensions (floor lambda * D_l, the same total as its dimensions' floors) where the model
    reports `kl_per_layer`; else the whole code of D dimensions (floor lambda * D) -- a flow
    posterior or a mixture prior, whose Monte Carlo KL does not split into dimensions.
    """
    if terms.kl_per_dim is not None:
        kl = terms.kl_per_dim.mean(0)  # (D,)
        floors = torch.full_like(kl, free_bits)
    elif terms.kl_per_layer is not None:
        kl = terms.kl_per_layer.mean(0)  # (L,)
        floors = free_bits * torch.tensor(layer_sizes, dtype=kl.dtype, device=kl.device)
    else:
        kl = terms.kl.mean()[None]  # (1,)
        floors = torch.full_like(kl, free_bits * sum(layer_sizes))
    return torch.maximum(kl, floors).sum()


def layer_extras(terms: ElboTerms) -> dict[str, torch.Tensor]:
    """{kl_layer1: ..., kl_layerL: ...}: each stochastic layer's batch-mean KL (layer 1 = bottom)."""
    if terms.kl_per_layer is None:
        return {}
    means = terms.kl_per_layer.mean(0)  # (L,)
    return {f"kl_layer{layer + 1}": means[layer] for layer in range(means.shape[0])}


def elbo_loss(model: VAE, x: torch.Tensor, y: Optional[torch.Tensor], beta: float, num_samples: int = 1,
              free_bits: float = 0.0) -> LossParts:
    """Negative ELBO with a beta-weighted KL (floored by free bits when `free_bits` > 0). x (B, C, H, W) -> scalars.

    `kl` is always the plain KL; with free bits the loss uses `free_bits_kl`, also logged as
    extras["kl_free_bits"]. A hierarchical model's per-layer KLs are logged as kl_layer<l>.
    """
    posterior = model.encode(x, y)
    terms = model.elbo_terms(x, y, posterior)  # one draw z (B, D) per image: h = sigma * N + mu
    recon, kl = terms.recon.mean(), terms.kl.mean()
    extras = layer_extras(terms)
    kl_term = kl
    if free_bits > 0:
        kl_term = free_bits_kl(terms, tuple(getattr(model, "layer_sizes", (model.latent_dim,))), free_bits)
        extras["kl_free_bits"] = kl_term
    return LossParts(recon + beta * kl_term, recon, kl, extras)


def log_importance_weights(model: VAE, x: torch.Tensor, y: Optional[torch.Tensor], num_samples: int,
                           posterior=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for K draws z_k ~ q(z|x) -> (K, B)."""
    if posterior is None:
        posterior = model.encode(x, y)
    return model.log_weights(x, y, num_samples, posterior, generator)


def iwae_loss(model: VAE, x: torch.Tensor, y: Optional[torch.Tensor], beta: float, num_samples: int = 1) -> LossParts:
    """Negative IWAE bound -L_K (beta is ignored: the bound has no separate KL weight).

    The reported parts are those of the ELBO on the same K draws, for comparison with `elbo`:
    -mean log p(x|z_k), and the KL in closed form where it exists, else mean log q - log p.
    """
    posterior = model.encode(x, y)
    terms = model.log_terms(x, y, num_samples, posterior)  # each (K, B)
    log_w = terms.log_px_z + terms.log_pz - terms.log_qz
    bound = torch.logsumexp(log_w, dim=0) - math.log(num_samples)  # (B,)
    kl = model.closed_form_kl(posterior)
    kl = (terms.log_qz - terms.log_pz).mean(0) if kl is None else kl  # (B,)
    recon = -terms.log_px_z.mean()
    return LossParts(-bound.mean(), recon.detach(), kl.mean().detach())


def beta_tc_loss(model: VAE, x: torch.Tensor, y: Optional[torch.Tensor], beta: float, num_samples: int = 1, *,
                 tc_weight: float = DEFAULT_TC_WEIGHT, dataset_size: Optional[int] = None) -> LossParts:
    """beta-TCVAE (Chen et al. 2018): recon + beta * (MI + tc_weight * TC + dim-KL), one draw per image.

    `beta` is the KL weight of the training loop: 1, ramped from 0 by --kl-warmup (it scales all
    three terms). `dataset_size` N is the training split's size (the MWS estimator weighs the
    batch by it); None treats the batch as the whole data set. `kl` is the closed-form KL, as
    for `elbo`; the three estimated terms are in `extras` (they sum to the Monte Carlo KL).
    """
    posterior = model.encode(x, y)
    # (A model whose prior is a network of its input, the Probabilistic U-Net, has no fixed `prior`.)
    if not (hasattr(model, "prior") and hasattr(posterior, "kl_per_dim") and model.kl_is_closed_form(posterior)):
        raise ConfigError("--objective beta-tc needs a diagonal Gaussian posterior and the N(0, I) prior")
    z, log_qz_given_x = posterior.rsample_with_log_prob()  # (B, D), (B,): h = sigma * N + mu
    recon = -model.likelihood.log_prob(x, model.decode(z, y))  # (B,)
    parts = kl_decomposition(z, posterior.mean, posterior.log_var, log_qz_given_x, model.prior.log_prob(z),
                             dataset_size or x.shape[0])
    mi, tc, dim_kl = (term.mean() for term in parts)
    recon = recon.mean()
    loss = recon + beta * (mi + tc_weight * tc + dim_kl)
    extras = {"index_code_mi": mi.detach(), "total_correlation": tc.detach(), "dim_kl": dim_kl.detach()}
    return LossParts(loss, recon, posterior.kl().mean(), extras)


OBJECTIVES: dict[str, Callable[..., LossParts]] = {"elbo": elbo_loss, "iwae": iwae_loss, "beta-tc": beta_tc_loss}


def make_objective(train: TrainConfig, dataset_size: Optional[int] = None) -> Callable[..., LossParts]:
    """The training objective of a run: `OBJECTIVES[train.objective]`, with the run's settings bound
    in (elbo: its free bits; beta-tc: its TC weight and N, the size of the training split)."""
    objective = OBJECTIVES[train.objective]
    if train.objective == "beta-tc":
        return partial(objective, tc_weight=train.tc_weight, dataset_size=dataset_size)
    if train.free_bits > 0:  # only the ELBO takes free bits (checked by TrainConfig.problems)
        return partial(objective, free_bits=train.free_bits)
    return objective
