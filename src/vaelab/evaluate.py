"""Evaluation over whole splits: the negative ELBO, the importance-weighted bound, active units.

- `elbo_on_split`: mean negative ELBO and its parts (used by training for validation).
- `iwae_bound`: L_K(x) = log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x) (Burda et al. 2015),
  per image, with the log-sum-exp accumulated over chunks of K so any K fits in memory.
- `evaluate_split`: one pass over a split giving neg_elbo (recon + kl), nll = -L_K,
  bits_per_dim and active_units; `evaluate_model` adds the classifier-based FID and
  reconstruction accuracy (see `classifier.py`, `fid.py`).

All functions fix their own random seed inside `torch.random.fork_rng`, so evaluating never
disturbs the training RNG (a resumed run stays bit-identical) and repeated evaluations of the
same model agree. Dynamically binarised runs are scored on test images binarised the same way
(a fresh Bernoulli(grey) draw per pixel), from a seeded generator: the standard protocol.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Optional

import torch

from vaelab.config import DEFAULT_IW_SAMPLES, MAX_IW_SAMPLES  # noqa: F401 (re-exported)
from vaelab.data.base import Split
from vaelab.data.batches import iterate_batches
from vaelab.objectives import elbo_loss, log_importance_weights

if TYPE_CHECKING:
    from vaelab.data import ImageData
    from vaelab.models import VAE

EVAL_SEED = 1234
ACTIVE_UNIT_THRESHOLD = 0.01  # Cov_x(E_q[z_d]) above this counts as active (Burda et al. 2015)
ELBO_SAMPLES = 10  # posterior draws per image for the reconstruction term of the reported ELBO
# Decoded samples per chunk (K_chunk * B), per device type. On a CPU, 2048 (a (2048, 784) float32
# block is 6.4 MB): with 8192 (25 MB blocks) the fresh memory each chunk's tensors touch cost
# more than the larger matmuls gain (L_5000 of 100 MNIST images, 2 cores: 3.2 s vs 1.8 s). On a
# GPU, large chunks keep it busy.
CHUNK_SAMPLES = {"cpu": 2048, "cuda": 65536}
DENSITY_NOTE = ("gaussian likelihood: a density on [0, 1] pixel values, not comparable with "
                "discrete-data (binarised MNIST) likelihoods")


def _devices(device: torch.device) -> list[torch.device]:
    return [device] if device.type == "cuda" else []


@torch.inference_mode()
def elbo_on_split(model: VAE, split: Split, batch_size: int = 1000, dynamic_binarize: bool = False,
                  seed: int = EVAL_SEED, max_images: Optional[int] = None) -> dict[str, float]:
    """Mean per-image negative ELBO, reconstruction term and KL over `split` (beta = 1)."""
    device = model.device
    totals = torch.zeros(3, dtype=torch.float64)
    count = 0
    with torch.random.fork_rng(devices=_devices(device)):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        for x, y in iterate_batches(split, batch_size, shuffle=False, generator=gen,
                                    dynamic_binarize=dynamic_binarize, device=device):
            parts = elbo_loss(model, x, y if model.conditional else None, beta=1.0)
            b = x.shape[0]
            totals += torch.stack([parts.loss, parts.recon, parts.kl]).double().cpu() * b
            count += b
            if max_images is not None and count >= max_images:
                break
    loss, recon, kl = (totals / max(count, 1)).tolist()
    return {"loss": loss, "recon": recon, "kl": kl}


def log_mean_exp_chunks(log_weight_chunks: Iterator[torch.Tensor], total: int) -> torch.Tensor:
    """log (1/K) sum_k exp(a_k) over chunks (k_i, B) with sum k_i = K = `total` -> (B,).

    A running log-sum-exp (logaddexp of the per-chunk log-sum-exps) is exact: no chunk ever
    needs the others, so memory is bounded by one chunk whatever K is.
    """
    running: Optional[torch.Tensor] = None
    for chunk in log_weight_chunks:
        part = torch.logsumexp(chunk, dim=0)  # (B,)
        running = part if running is None else torch.logaddexp(running, part)
    if running is None:
        raise ValueError("no importance weights")
    return running - math.log(total)


def iwae_bound(model: VAE, x: torch.Tensor, y: Optional[torch.Tensor], num_samples: int, posterior=None,
               generator: Optional[torch.Generator] = None, chunk_size: Optional[int] = None) -> torch.Tensor:
    """L_K per image (Burda et al. 2015): x (B, C, H, W) -> (B,), K = `num_samples`, in nats.

    Draws K samples in chunks of `chunk_size` (default CHUNK_SAMPLES[device] // B) so memory does not grow
    with K. L_1 is an unbiased estimate of the ELBO; E[L_K] increases with K towards log p(x).
    """
    if posterior is None:
        posterior = model.encode(x, y)
    batch = x.shape[0]
    chunk = chunk_size or max(1, CHUNK_SAMPLES.get(x.device.type, CHUNK_SAMPLES["cpu"]) // batch)

    def chunks() -> Iterator[torch.Tensor]:
        for start in range(0, num_samples, chunk):
            k = min(chunk, num_samples - start)
            yield log_importance_weights(model, x, y, k, posterior, generator)  # (k, B)

    return log_mean_exp_chunks(chunks(), num_samples)


def active_units(means: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> tuple[int, torch.Tensor]:
    """Active latent units (Burda et al. 2015): A_d = Cov_x(E_{q(z|x)}[z_d]) > threshold.

    `means` (N, D) are the posterior means over a split -> (count, per-dimension variance (D,)).
    """
    variance = means.double().var(dim=0, unbiased=True) if means.shape[0] > 1 else torch.zeros(means.shape[1])
    return int((variance > threshold).sum()), variance.float()


@torch.inference_mode()
def evaluate_split(model: VAE, split: Split, *, iw_samples: int = DEFAULT_IW_SAMPLES, batch_size: int = 100,
                   dynamic_binarize: bool = False, seed: int = EVAL_SEED, progress: bool = False) -> dict[str, Any]:
    """One pass over `split`: neg_elbo (recon + kl), nll = -L_K, bits_per_dim, active_units.

    Every statistic of an image is computed from the same (binarised) copy of it. Returns
    per-image means in nats; `nll_std_error` is the standard error of the mean over images.
    """
    from tqdm.auto import tqdm

    device = model.device
    use_labels = model.conditional
    pixels = math.prod(model.image_shape)
    sums = torch.zeros(3, dtype=torch.float64)  # recon, kl, L_K
    layer_sums: Optional[torch.Tensor] = None  # a hierarchical model's KL per layer, summed over images
    sq_bound = 0.0
    means: list[torch.Tensor] = []
    count = 0
    started = time.perf_counter()
    bar = tqdm(total=len(split), desc=f"L_{iw_samples}", unit="img", disable=not progress, leave=False,
               dynamic_ncols=True)
    with torch.random.fork_rng(devices=_devices(device)):
        torch.manual_seed(seed)
        data_gen = torch.Generator().manual_seed(seed)  # binarisation of the split
        sample_gen = torch.Generator(device=device).manual_seed(seed + 1)  # posterior draws
        for x, y in iterate_batches(split, batch_size, shuffle=False, generator=data_gen,
                                    dynamic_binarize=dynamic_binarize, device=device):
            y = y if use_labels else None
            posterior = model.encode(x, y)
            # ELBO = E_q[log p(x|z)] - KL(q || p); the expectation over ELBO_SAMPLES draws, the KL
            # in closed form where it exists (else from the same draws): (S, B) -> (B,)
            terms = model.elbo_terms(x, y, posterior, num_samples=ELBO_SAMPLES, generator=sample_gen)
            recon, kl = terms.recon, terms.kl
            if terms.kl_per_layer is not None:
                part = terms.kl_per_layer.double().sum(0).cpu()  # (L,)
                layer_sums = part if layer_sums is None else layer_sums + part
            bound = iwae_bound(model, x, y, iw_samples, posterior, sample_gen)  # (B,)
            sums += torch.stack([recon.sum(), kl.sum(), bound.sum()]).double().cpu()
            sq_bound += float(bound.double().square().sum())
            means.append(posterior.mean.float().cpu())
            count += x.shape[0]
            bar.update(x.shape[0])
    bar.close()
    recon_mean, kl_mean, bound_mean = (sums / max(count, 1)).tolist()
    variance = max(sq_bound / max(count, 1) - bound_mean**2, 0.0)
    n_active, unit_variance = active_units(torch.cat(means))
    result: dict[str, Any] = {
        "num_images": count,
        "neg_elbo": recon_mean + kl_mean,
        "recon": recon_mean,
        "kl": kl_mean,
        "nll": -bound_mean,
        "nll_std_error": math.sqrt(variance / max(count - 1, 1)),
        "iw_samples": iw_samples,
        "bits_per_dim": -bound_mean / (pixels * math.log(2)),
        "active_units": n_active,
        "latent_dim": int(model.latent_dim),
        "unit_variances": [round(v, 5) for v in unit_variance.tolist()],
        "likelihood_seconds": round(time.perf_counter() - started, 2),
    }
    if layer_sums is not None:  # layer 1 = the bottom (next to the pixels); they sum to `kl`
        result["kl_per_layer"] = (layer_sums / max(count, 1)).tolist()
    return result


@torch.inference_mode()
def reconstructions(model: VAE, split: Split, *, batch_size: int = 500, dynamic_binarize: bool = False,
                    seed: int = EVAL_SEED) -> torch.Tensor:
    """Expected images decode(E_q[z]) of the (identically binarised) split -> (N, C, H, W) on the CPU."""
    out = []
    with torch.random.fork_rng(devices=_devices(model.device)):
        torch.manual_seed(seed)
        data_gen = torch.Generator().manual_seed(seed)  # same seed: the same bits as evaluate_split
        for x, y in iterate_batches(split, batch_size, shuffle=False, generator=data_gen,
                                    dynamic_binarize=dynamic_binarize, device=model.device):
            out.append(model.reconstruct(x, y if model.conditional else None).float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def generated_samples(model: VAE, n: int, labels: Optional[torch.Tensor], *, batch_size: int = 500,
                      seed: int = EVAL_SEED, sampler=None) -> torch.Tensor:
    """n expected images decoded from draws of the model's prior (or of `sampler`, e.g. the fitted
    Gaussian mixture of `vaelab.samplers`), conditioned on `labels` for a CVAE -> (n, C, H, W)."""
    gen = torch.Generator().manual_seed(seed + 2)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        y = labels[start : start + b] if model.conditional and labels is not None else None
        if sampler is None:
            out.append(model.sample(b, y, generator=gen).float().cpu())
        else:
            z = sampler.sample(b, generator=gen).to(model.device)
            out.append(model.decode_images(z, y).float().cpu())
    return torch.cat(out)


def prior_description(model: VAE) -> str:
    """The sampler behind `fid`: the model's own prior, by name."""
    cfg = getattr(model, "cfg", None)
    name = cfg.prior if cfg is not None else "normal"
    layers = len(getattr(model, "layer_sizes", (0,)))
    return f"the model's prior ({name}{f', {layers} stochastic layers' if layers > 1 else ''})"


def evaluate_model(model: VAE, data: ImageData, split_name: str = "test", *, iw_samples: int = DEFAULT_IW_SAMPLES,
                   batch_size: int = 100, fid: bool = True, grey_data: Optional[ImageData] = None,
                   dataset_name: str = "", progress: bool = False, seed: int = EVAL_SEED,
                   sampler=None) -> dict[str, Any]:
    """Every number of `vaelab eval` for `model` on `data.<split_name>` as a flat JSON-able dict.

    `data` is what the model was trained on (static binarisation applied); `grey_data` the same
    images in grey values, for the classifier (defaults to `data`). FID and reconstruction
    accuracy need labels: they are None (with a reason) for unlabelled datasets or `fid=False`.
    `fid` uses samples of the model's prior; with a fitted `sampler` (`vaelab fit-sampler`),
    `fid_gmm` those of the sampler, against the same real images (`fid_sampler`/`fid_gmm_sampler`
    say which was which).
    """
    from vaelab import __version__

    cfg = model.run_config
    dynamic = cfg.data.binarize == "dynamic"
    split = data.split(split_name)
    result: dict[str, Any] = {"split": split_name, "dataset": cfg.data.dataset, "binarize": cfg.data.binarize,
                              "likelihood": cfg.model.likelihood}
    result.update(evaluate_split(model, split, iw_samples=iw_samples, batch_size=batch_size,
                                 dynamic_binarize=dynamic, seed=seed, progress=progress))
    result["note"] = None if model.likelihood.discrete else DENSITY_NOTE
    result.update(fid=None, fid_samples=None, recon_accuracy=None, classifier_accuracy=None, classifier=None,
                  fid_sampler=prior_description(model), fid_gmm=None,
                  fid_gmm_sampler=None if sampler is None else sampler.description)
    grey = grey_data if grey_data is not None else data
    if not fid:
        result["fid_skipped"] = "--no-fid"
    elif grey.num_classes < 2 or split.labels is None:
        result["fid_skipped"] = "unlabelled dataset: no classifier to compute FID with"
    else:
        result.update(_classifier_scores(model, data, grey, split_name, dynamic, dataset_name or cfg.data.dataset,
                                         progress, seed, sampler))
    if result["fid_gmm"] is None and "fid_skipped" not in result:
        result["fid_gmm_skipped"] = "no fitted sampler: vaelab fit-sampler RUN --gmm K"
    result["seed"] = seed
    result["vaelab_version"] = __version__
    return result


def _classifier_scores(model: VAE, data: ImageData, grey: ImageData, split_name: str, dynamic: bool,
                       dataset_name: str, progress: bool, seed: int, sampler=None) -> dict[str, Any]:
    """FID of generated samples against the split, and the classifier's accuracy on reconstructions."""
    from vaelab.classifier import classifier_features, get_classifier, predict
    from vaelab.data.batches import to_float
    from vaelab.fid import FID_SAMPLES, feature_statistics, frechet_distance

    started = time.perf_counter()
    net, meta = get_classifier(grey, dataset_name, progress=progress)
    split = data.split(split_name)
    x_hat = reconstructions(model, split, dynamic_binarize=dynamic, seed=seed)
    recon_accuracy = float((predict(net, x_hat) == split.labels).float().mean())
    real_split = grey.split(split_name)
    n = min(FID_SAMPLES, len(real_split))
    real = to_float(real_split.images[:n])
    real_stats = feature_statistics(classifier_features(net, real))
    fake = generated_samples(model, n, real_split.labels[:n], seed=seed)
    fid = frechet_distance(*real_stats, *feature_statistics(classifier_features(net, fake)))
    fid_gmm = None
    if sampler is not None:  # the same real images and seed, codes from the fitted mixture
        fake = generated_samples(model, n, real_split.labels[:n], seed=seed, sampler=sampler)
        fid_gmm = frechet_distance(*real_stats, *feature_statistics(classifier_features(net, fake)))
    return {"fid": fid, "fid_gmm": fid_gmm, "fid_samples": n, "recon_accuracy": recon_accuracy,
            "classifier_accuracy": meta["test_accuracy"], "classifier": meta["key"],
            "classifier_seconds": round(time.perf_counter() - started, 2)}
