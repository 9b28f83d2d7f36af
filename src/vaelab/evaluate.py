"""Evaluation over whole splits: the negative ELBO, the importance-weighted bound, active units.

- `elbo_on_split`: mean negative ELBO and its parts (used by training for validation).
- `iwae_bound`: L_K(x) = log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x) (Burda et al. 2015),
  per image, with the log-sum-exp accumulated over chunks of K so any K fits in memory.
- `evaluate_split`: one pass over a split giving neg_elbo (recon + kl), nll = -L_K,
  bits_per_dim, active_units, and psnr / ssim of the reconstructions decode(E_q[z]) against the
  inputs (vaelab.image_metrics); `evaluate_model` adds the classifier-based FID and
  reconstruction accuracy (see `classifier.py`, `fid.py`).

Speed (benchmarks/eval_speed.py): the encoder runs once per image and its posterior serves all
K draws; each chunk decodes k draws of every image of the batch in one call (k·B latents); the
decoder runs under `torch.inference_mode`, in `decoder_precision` (bfloat16 only where the
hardware has it and it keeps L_K within 0.05 nats of float32, tests/test_eval.py), and a loaded
conv model has channels-last weights on a CPU (`vaelab.models.use_fast_memory_format`).
Bits per dimension (`bits_per_dim_protocol`): every dataset is 8-bit (uint8 pixels k, shown to the
model as k/255). For a discrete likelihood (logistic, logistic-mixture; bernoulli on binarised data)
-L_K is a bound on -log P(x) of the data itself, so bits/dim = nll / (D ln 2), D = values per image
(for binarised data, of the binarised pixels: one bit each, labelled so). A Gaussian is a density on
[0, 1]: the standard uniform-dequantization bound (Theis et al. 2016; Ho et al. 2019) scores y = (k
+ u)/256, u ~ U[0, 1)^D, i.e. x + u with x = k/256 and u ~ U[0, 1/256)^D: -log P(k) <= E_u[-log
p(y)] + D·log 256 for the discrete model P(k) = the density's mass over k's cube, so bits/dim <=
(-L_K(y) + D ln 256) / (D ln 2), a bound (labelled so in eval.json and the table). A bernoulli
decoder on grey values is not a likelihood of the data: no bits/dim.

All functions fix their own random seed inside `torch.random.fork_rng`, so evaluating never
disturbs the training RNG (a resumed run stays bit-identical) and repeated evaluations of the
same model agree. Dynamically binarised runs are scored on test images binarised the same way
(a fresh Bernoulli(grey) draw per pixel), from a seeded generator: the standard protocol.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, Optional

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
# A decoder may say how many latents it decodes best at once (`chunk_samples` = {device type: k·B}):
# a conv decoder's activations per latent are ~40x an MLP's, and on a CPU 512 latents a chunk
# measured 1.2-1.6x faster per latent than 2048 or 8000 (their activations outgrow the caches).
# `decoder_precision`: "auto" = bfloat16 where the hardware computes it natively (vaelab.hardware),
# else float32; "fp32" / "bf16" force one. The likelihood is always evaluated in float32.
DecoderPrecision = Literal["auto", "fp32", "bf16"]
DENSITY_NOTE = ("gaussian likelihood: a density on [0, 1] pixel values, not comparable with "
                "discrete-data (binarised MNIST) likelihoods; bits_per_dim is the dequantization bound")
# bits_per_dim_protocol -> (bits_per_dim_kind in eval.json, what it means)
BITS_PER_DIM_PROTOCOLS = {
    "discrete": ("exact", "-L_K / (D ln 2): the model's discrete log-likelihood of the 8-bit data"),
    "binarized": ("exact", "-L_K / (D ln 2): the model's log-likelihood of the binarised data (one bit a "
                           "pixel, not the 8-bit grey values)"),
    "dequantized": ("bound", "upper bound by uniform dequantization: (-L_K(x + u) + D ln 256) / (D ln 2), "
                             "x = k/256, u ~ U[0, 1/256)^D"),
    "none": (None, "a bernoulli decoder on grey values is not a likelihood of the data (train with "
                   "--binarize dynamic, or a logistic likelihood)"),
}


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


def chunk_samples(model: VAE, device: torch.device) -> int:
    """Latents to decode per chunk (k·B) for this model on this device (see CHUNK_SAMPLES)."""
    table = getattr(getattr(model, "decoder", None), "chunk_samples", None) or CHUNK_SAMPLES
    return table.get(device.type, CHUNK_SAMPLES.get(device.type, CHUNK_SAMPLES["cpu"]))


def resolve_precision(precision: DecoderPrecision, device: torch.device) -> str:
    """"auto" -> "bf16" where bfloat16 runs in hardware on `device`, else "fp32"."""
    if precision == "auto":
        from vaelab.hardware import native_bf16

        return "bf16" if native_bf16(device) else "fp32"
    return precision


@contextmanager
def decoder_precision(model: VAE, precision: str) -> Iterator[None]:
    """Run `model.decoder` in `precision` ("bf16": autocast, output cast back to float32, so the
    likelihood and the log-sum-exp stay float32); "fp32" or a model without `.decoder`: no change."""
    decoder = getattr(model, "decoder", None)
    if precision != "bf16" or decoder is None:
        yield
        return
    own = decoder.__dict__.get("forward")  # an instance-level forward someone set, to put back
    forward = decoder.forward
    device_type = model.device.type

    def bf16_forward(*args, **kwargs):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return forward(*args, **kwargs).float()

    decoder.forward = bf16_forward  # an instance attribute: the class's forward is untouched
    try:
        yield
    finally:
        if own is None:
            del decoder.forward
        else:
            decoder.forward = own


def default_chunk(model: VAE, x: torch.Tensor) -> int:
    """Importance samples per chunk for a batch x: `chunk_samples` decodings of an MNIST-sized
    output (784 values) in all, fewer for larger outputs (a colour image's mixture parameters)."""
    values = math.prod(model.image_shape) * model.likelihood.param_channels  # decoder outputs per decoding
    samples = chunk_samples(model, x.device) * 784 // max(values, 784)
    return max(1, samples // x.shape[0])


def iwae_bound(model: VAE, x: torch.Tensor, y: Optional[torch.Tensor], num_samples: int, posterior=None,
               generator: Optional[torch.Generator] = None, chunk_size: Optional[int] = None) -> torch.Tensor:
    """L_K per image (Burda et al. 2015): x (B, C, H, W) -> (B,), K = `num_samples`, in nats.

    Draws K samples in chunks of `chunk_size` (default `default_chunk`) so memory does not grow
    with K; each chunk decodes its k draws of all B images in one call. The encoder is not run
    again: `posterior` (computed here if not given) serves every chunk. L_1 is an unbiased
    estimate of the ELBO; E[L_K] increases with K towards log p(x).
    """
    if posterior is None:
        posterior = model.encode(x, y)
    chunk = chunk_size or default_chunk(model, x)

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


def _elbo_parts(model: VAE, x: torch.Tensor, y: Optional[torch.Tensor], posterior,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """-E_q[log p(x|z)] over ELBO_SAMPLES draws and the KL, (B,) each, and a hierarchical model's KL
    per layer (B, L) or None: in one decode of all draws, or, where they would not fit a chunk
    (`default_chunk`: large colour images, mixture parameters), in groups of draws whose
    draw-weighted mean is taken (a Monte Carlo KL is averaged the same way)."""
    chunk = default_chunk(model, x)
    if chunk >= ELBO_SAMPLES:
        terms = model.elbo_terms(x, y, posterior, num_samples=ELBO_SAMPLES, generator=generator)
        return terms.recon, terms.kl, terms.kl_per_layer
    sums: Optional[list[Optional[torch.Tensor]]] = None
    for start in range(0, ELBO_SAMPLES, chunk):
        k = min(chunk, ELBO_SAMPLES - start)
        terms = model.elbo_terms(x, y, posterior, num_samples=k, generator=generator)
        parts = [terms.recon, terms.kl, terms.kl_per_layer]
        weighted = [None if t is None else t.double() * k for t in parts]
        sums = weighted if sums is None else [None if a is None else a + b for a, b in zip(sums, weighted)]
    dtype = terms.recon.dtype
    recon, kl, per_layer = (None if t is None else (t / ELBO_SAMPLES).to(dtype) for t in sums)
    return recon, kl, per_layer


def bits_per_dim_protocol(likelihood, binarized: bool) -> str:
    """How bits/dim is computed for a likelihood on 8-bit data (see the module docstring): 'discrete'
    (exact, over the 256 values), 'binarized' (exact, of the binarised pixels), 'dequantized' (a
    bound, for densities) or 'none' (bernoulli on grey values)."""
    if not likelihood.discrete:
        return "dequantized"
    if likelihood.levels >= 256:
        return "discrete"
    return "binarized" if binarized else "none"


def dequantize(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """8-bit images x = k/255 -> y = (k + u)/256 with u ~ U[0, 1) per value: the uniform dequantization."""
    k = torch.round(x * 255)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (k + u) / 256


@torch.inference_mode()
def evaluate_split(model: VAE, split: Split, *, iw_samples: int = DEFAULT_IW_SAMPLES, batch_size: int = 100,
                   dynamic_binarize: bool = False, binarized: Optional[bool] = None, seed: int = EVAL_SEED,
                   progress: bool = False, precision: DecoderPrecision = "auto") -> dict[str, Any]:
    """One pass over `split`: neg_elbo (recon + kl), nll = -L_K, bits_per_dim, active_units, psnr, ssim.

    Every statistic of an image is computed from the same (binarised) copy of it. Returns
    per-image means in nats; `nll_std_error` is the standard error of the mean over images;
    `decoder_precision` the precision the decoder ran in (see `decoder_precision`).
    `binarized` says the images are binary (default: `dynamic_binarize`; pass True for a static
    binarisation), which decides what bits/dim means for a bernoulli decoder. For a density
    (gaussian), a second bound L_K of the dequantized images gives `nll_dequantized` and the bits/dim
    bound. `psnr` (dB, peak 1) and `ssim` (Wang et al. 2004, Gaussian window sigma 1.5) are the means
    over images of decode(E_q[z]) against the inputs.
    """
    device = model.device
    precision = resolve_precision(precision, device)
    with decoder_precision(model, precision):
        result = _evaluate_split(model, split, iw_samples, batch_size, dynamic_binarize, binarized, seed, progress)
    result["decoder_precision"] = precision
    return result


def _evaluate_split(model: VAE, split: Split, iw_samples: int, batch_size: int, dynamic_binarize: bool,
                    binarized: Optional[bool], seed: int, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from vaelab.image_metrics import psnr, ssim

    device = model.device
    use_labels = model.conditional
    pixels = math.prod(model.image_shape)
    protocol = bits_per_dim_protocol(model.likelihood, dynamic_binarize if binarized is None else binarized)
    sums = torch.zeros(6, dtype=torch.float64)  # recon, kl, L_K, L_K of the dequantized images, psnr, ssim
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
        # The dequantization bound's noise and draws: their own generators, so the other numbers
        # are the same with and without it.
        noise_gen = torch.Generator(device=device).manual_seed(seed + 3)
        for x, y in iterate_batches(split, batch_size, shuffle=False, generator=data_gen,
                                    dynamic_binarize=dynamic_binarize, device=device):
            y = y if use_labels else None
            posterior = model.encode(x, y)
            # ELBO = E_q[log p(x|z)] - KL(q || p); the expectation over ELBO_SAMPLES draws, the KL
            # in closed form where it exists (else from the same draws): (S, B) -> (B,)
            recon, kl, per_layer = _elbo_parts(model, x, y, posterior, sample_gen)
            if per_layer is not None:
                part = per_layer.double().sum(0).cpu()  # (L,)
                layer_sums = part if layer_sums is None else layer_sums + part
            bound = iwae_bound(model, x, y, iw_samples, posterior, sample_gen)  # (B,)
            x_hat = model.likelihood.mean(model.decode(posterior.mean, y)).float()  # decode(E_q[z]), (B, C, *S)
            deq_bound = torch.zeros_like(bound)
            if protocol == "dequantized":
                x_deq = dequantize(x, noise_gen)
                deq_bound = iwae_bound(model, x_deq, y, iw_samples, generator=noise_gen)  # (B,)
            sums += torch.stack([recon.sum(), kl.sum(), bound.sum(), deq_bound.sum(),
                                 psnr(x_hat, x).sum(), ssim(x_hat, x).sum()]).double().cpu()
            sq_bound += float(bound.double().square().sum())
            means.append(posterior.mean.float().cpu())
            count += x.shape[0]
            bar.update(x.shape[0])
    bar.close()
    recon_mean, kl_mean, bound_mean, deq_mean, psnr_mean, ssim_mean = (sums / max(count, 1)).tolist()
    variance = max(sq_bound / max(count, 1) - bound_mean**2, 0.0)
    n_active, unit_variance = active_units(torch.cat(means))
    kind, meaning = BITS_PER_DIM_PROTOCOLS[protocol]
    bits = {"exact": -bound_mean / (pixels * math.log(2)),
            "bound": (-deq_mean + pixels * math.log(256)) / (pixels * math.log(2)),
            None: None}[kind]
    result: dict[str, Any] = {
        "num_images": count,
        "neg_elbo": recon_mean + kl_mean,
        "recon": recon_mean,
        "kl": kl_mean,
        "nll": -bound_mean,
        "nll_std_error": math.sqrt(variance / max(count - 1, 1)),
        "iw_samples": iw_samples,
        "bits_per_dim": bits,
        "bits_per_dim_kind": kind,
        "bits_per_dim_note": meaning,
        "nll_dequantized": -deq_mean if protocol == "dequantized" else None,
        "psnr": psnr_mean,
        "ssim": ssim_mean,
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
                   precision: DecoderPrecision = "auto", sampler=None) -> dict[str, Any]:
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
                                 dynamic_binarize=dynamic, binarized=cfg.data.binarize != "none", seed=seed,
                                 progress=progress, precision=precision))
    result["note"] = None if model.likelihood.discrete else DENSITY_NOTE
    result.update(fid=None, fid_samples=None, recon_accuracy=None, classifier_accuracy=None, classifier=None,
                  fid_sampler=prior_description(model), fid_gmm=None,
                  fid_gmm_sampler=None if sampler is None else sampler.description)
    grey = grey_data if grey_data is not None else data
    if not fid:
        result["fid_skipped"] = "--no-fid"
    elif len(model.image_shape) != 3:  # the classifier behind FID is a 2-D network (vaelab.classifier)
        result["fid_skipped"] = "volumes: the classifier behind FID and reconstruction accuracy takes 2-D images"
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
