"""`vaelab eval` for image-to-image runs: the model against classical baselines on the same images.

On the test pairs (or any split), with the inputs fixed once (a `--degrade` run's degradation is
drawn from a generator seeded with EVAL_SEED, so every method and every repeat sees the same inputs):

- PSNR and SSIM (vaelab.image_metrics) of the mean prediction (`translate`'s mean of K samples),
  of the best of the K samples (per image, the highest PSNR and, separately, the highest SSIM),
  and of the baselines (translate/baselines.py: the input itself, and a classical method for the
  degradation tuned on the validation split);
- sample diversity: the mean pairwise RMS distance between the K samples of an input;
- calibration of the predicted per-pixel std σ against the error e = mean − target
  (translate/metrics.py `Calibration`): corr(σ, |e|) over all pixels, the fraction of pixels with
  |e| <= 2σ, and the same fraction after one factor s, fitted on the validation split so that
  95.45 % of its pixels fall within ±2sσ, rescales σ (`std_scale`);
- the generalised energy distance of Kohl et al. 2018 between the samples and the targets (with
  `--targets B1 B2 ...`, several per input);
- the likelihood terms: −ELBO = recon + KL(q(z | y, x) ‖ p(z | y)) (10 draws) and −L_K, the
  importance-weighted bound of −log p(target | input) (Burda et al. 2015), in nats per image.

With several targets per input, PSNR, SSIM, calibration and the likelihood terms are averaged
over the (input, target) pairs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from vaelab.data.base import Split
from vaelab.data.batches import iterate_batches
from vaelab.evaluate import ELBO_SAMPLES, EVAL_SEED, iwae_bound
from vaelab.image_metrics import psnr, ssim
from vaelab.translate.baselines import BASELINES, DENOISERS, TUNE_IMAGES, baselines_for
from vaelab.translate.metrics import Calibration, coverage_scale, generalised_energy_distance, sample_diversity

DEFAULT_SAMPLES = 8
DEFAULT_IW_SAMPLES = 100  # the U-Net's head runs once per importance sample: 5000 would take hours on a CPU
CALIBRATION_IMAGES = 1000  # validation images the std scale is fitted on


@dataclass
class EvalPairs:
    """Fixed evaluation pairs: inputs float (N, C_in, H, W), targets float (R, N, C, H, W), R per input."""

    inputs: torch.Tensor
    targets: torch.Tensor
    source: str

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def head(self, n: int) -> EvalPairs:
        """The first n pairs."""
        return EvalPairs(self.inputs[:n], self.targets[:, :n], self.source)


def fixed_pairs(split: Split, source: str, seed: int = EVAL_SEED, max_images: Optional[int] = None,
                batch_size: int = 500) -> EvalPairs:
    """A paired split's (input, target) pairs with the inputs drawn once: a degradation from a
    generator seeded with `seed`, so repeated evaluations see identical inputs."""
    if max_images is not None and max_images < len(split):
        split = split.take(slice(0, max_images))
    generator = torch.Generator().manual_seed(seed)
    inputs, targets = [], []
    for x, y in iterate_batches(split, batch_size, shuffle=False, generator=generator):
        targets.append(x)
        inputs.append(y)
    return EvalPairs(torch.cat(inputs), torch.cat(targets)[None], source)


def _batches(pairs: EvalPairs, batch_size: int):
    for lo in range(0, len(pairs), batch_size):
        yield pairs.inputs[lo : lo + batch_size], pairs.targets[:, lo : lo + batch_size]


@torch.inference_mode()
def std_scale_on(model, pairs: EvalPairs, num_samples: int, batch_size: int, seed: int) -> float:
    """The factor s that makes ±2sσ cover 95.45 % of the pixels of `pairs` (see `coverage_scale`)."""
    generator = torch.Generator().manual_seed(seed)
    stds, errors = [], []
    for y, targets in _batches(pairs, batch_size):
        out = model.translate(y.to(model.device), num_samples, generator)
        for target in targets:
            stds.append(out.std.float().cpu())
            errors.append(out.mean.float().cpu() - target)
    return coverage_scale(torch.cat(stds), torch.cat(errors), seed=seed)


def _fit_baselines(names: list[str], val: EvalPairs, noise_std: float, kinds: Optional[list[str]]) -> dict[str, Any]:
    """Each baseline fitted on the first TUNE_IMAGES validation pairs; a missing optional one is a string (why)."""
    tune = val.head(TUNE_IMAGES)
    fitted: dict[str, Any] = {}
    for name in names:
        cls = BASELINES[name]
        missing = cls.available()
        fitted[name] = missing if missing else cls(noise_std, kinds).fit(tune.inputs, tune.targets[0])
    return fitted


@torch.inference_mode()
def evaluate_translation(model, test: EvalPairs, val: EvalPairs, *, num_samples: int = DEFAULT_SAMPLES,
                         iw_samples: int = DEFAULT_IW_SAMPLES, batch_size: int = 100,
                         kinds: Optional[list[str]] = None, noise_std: float = 0.0, seed: int = EVAL_SEED,
                         progress: bool = False) -> dict[str, Any]:
    """Every number of `vaelab eval` for an image-to-image model, as a flat-ish JSON-able dict
    (see the module docstring). `kinds`: the degradation's steps (None for pairs of unknown kind);
    `noise_std`: its noise, for the non-local means baseline."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    device = model.device
    names = baselines_for(kinds)
    fitted = _fit_baselines(names, val, noise_std, kinds)
    scale = std_scale_on(model, val.head(CALIBRATION_IMAGES), num_samples, batch_size, seed)
    totals: dict[str, float] = {}

    def add(key: str, values: torch.Tensor) -> None:
        totals[key] = totals.get(key, 0.0) + float(values.double().sum())

    raw, rescaled = Calibration(), Calibration()
    sample_gen = torch.Generator().manual_seed(seed + 1)  # prior draws (on the CPU)
    posterior_gen = torch.Generator(device=device).manual_seed(seed + 2)  # posterior draws (likelihood terms)
    count, pair_count = 0, 0
    bar = tqdm(total=len(test), desc="translate eval", unit="img", disable=not progress, leave=False)
    for y_cpu, targets in _batches(test, batch_size):
        y = y_cpu.to(device)
        out = model.translate(y, num_samples, sample_gen)
        mean, samples, std = out.mean.float().cpu(), out.samples.float().cpu(), out.std.float().cpu()
        add("diversity", sample_diversity(samples))
        add("ged", generalised_energy_distance(samples, targets))
        predictions = {name: b(y_cpu) for name, b in fitted.items() if not isinstance(b, str)}
        for target in targets:  # R targets per input
            add("psnr", psnr(mean, target))
            add("ssim", ssim(mean, target))
            flat = samples.flatten(0, 1)  # (K·B, C, H, W)
            repeated = target.expand(num_samples, *target.shape).flatten(0, 1)
            add("psnr_best", psnr(flat, repeated).view(num_samples, -1).max(0).values)
            add("ssim_best", ssim(flat, repeated).view(num_samples, -1).max(0).values)
            raw.add(std, mean - target)
            rescaled.add(std, mean - target, scale)
            x = target.to(device)
            terms = model.elbo_terms(x, y, num_samples=ELBO_SAMPLES, generator=posterior_gen)
            add("recon", terms.recon)
            add("kl", terms.kl)
            add("bound", iwae_bound(model, x, y, iw_samples, generator=posterior_gen))
            for name, prediction in predictions.items():
                add(f"{name}_psnr", psnr(prediction, target))
                add(f"{name}_ssim", ssim(prediction, target))
        count += len(y_cpu)
        pair_count += len(y_cpu) * len(targets)
        bar.update(len(y_cpu))
    bar.close()

    def per_pair(key: str) -> float:
        return totals[key] / pair_count

    baselines: dict[str, Any] = {}
    for name, baseline in fitted.items():
        if isinstance(baseline, str):
            baselines[name] = {"psnr": None, "ssim": None, "skipped": baseline}
        else:
            baselines[name] = {"psnr": per_pair(f"{name}_psnr"), "ssim": per_pair(f"{name}_ssim"),
                               "method": baseline.describe(), **baseline.params}
    scored = [n for n in DENOISERS if n in baselines and baselines[n]["psnr"] is not None] or ["identity"]
    classical = max(scored, key=lambda n: baselines[n]["psnr"])
    pixels = math.prod(model.image_shape)
    recon, kl, bound = per_pair("recon"), per_pair("kl"), per_pair("bound")
    return {
        "task": "translate",
        "num_images": count,
        "targets_per_input": int(test.targets.shape[0]),
        "samples": num_samples,
        "psnr": per_pair("psnr"), "ssim": per_pair("ssim"),
        "psnr_best_of_samples": per_pair("psnr_best"), "ssim_best_of_samples": per_pair("ssim_best"),
        "baselines": baselines,
        "classical": classical,
        "gain_over_classical_db": per_pair("psnr") - baselines[classical]["psnr"],
        "diversity": totals["diversity"] / count,
        "ged": totals["ged"] / count,
        "calibration": {
            "std_error_correlation": raw.correlation,
            "within_2std": raw.within_2std,
            "std_scale": scale,
            "within_2std_rescaled": rescaled.within_2std,
            "mean_std": raw.mean_std,
            "rms_error": raw.rms_error,
        },
        "neg_elbo": recon + kl, "recon": recon, "kl": kl,
        "nll": -bound, "iw_samples": iw_samples, "bits_per_dim": -bound / (pixels * math.log(2)),
        "likelihood": model.cfg.likelihood,
        "note": None if model.likelihood.discrete else "gaussian likelihood: recon, neg_elbo and nll are densities "
                                                       "on [0, 1] pixel values",
        "eval_seconds": round(time.perf_counter() - started, 2),
    }


def format_translation(r: dict[str, Any]) -> str:
    """The table `vaelab eval` prints for an image-to-image run."""
    k = r["samples"]
    rows = [("model (mean)", r["psnr"], r["ssim"], f"the mean of {k} samples"),
            (f"model (best of {k})", r["psnr_best_of_samples"], r["ssim_best_of_samples"], "oracle: per image")]
    for name, b in r["baselines"].items():
        rows.append((name, b["psnr"], b["ssim"], b.get("method") or b.get("skipped", "")))

    def number(v: Optional[float], digits: int) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    c = r["calibration"]
    lines = [f"{r['split']} split: {r['num_images']} inputs × {r['targets_per_input']} target(s) ({r['pairs']}), "
             f"K = {k} samples, {r['likelihood']} likelihood",
             f"  {'':<20}{'PSNR dB':>9}{'SSIM':>8}"]
    lines += [f"  {label:<20}{number(p, 2):>9}{number(s, 4):>8}   {note}" for label, p, s, note in rows]
    lines += [
        f"  {'gain':<20}{r['gain_over_classical_db']:+.2f} dB PSNR over {r['classical']}",
        f"  {'diversity':<20}{r['diversity']:.4f} (mean pairwise RMS distance between samples; pixels in [0, 1])",
        f"  {'calibration':<20}corr(std, |error|) {c['std_error_correlation']:.3f}; |error| <= 2 std for "
        f"{100 * c['within_2std']:.1f} % of pixels (95.4 % if calibrated); std × {c['std_scale']:.3g} "
        f"(fitted on val): {100 * c['within_2std_rescaled']:.1f} %",
        f"  {'':<20}mean std {c['mean_std']:.4f}, RMS error {c['rms_error']:.4f}",
        f"  {'ged':<20}{r['ged']:.4f} (generalised energy distance, RMS distance)",
        f"  {'likelihood':<20}-ELBO {r['neg_elbo']:.3f} (recon {r['recon']:.3f} + kl {r['kl']:.3f}), "
        f"-L_{r['iw_samples']} {r['nll']:.3f} nats per image" + (" (densities)" if r["note"] else ""),
        f"  {'time':<20}{r['seconds']:.1f} s",
    ]
    return "\n".join(lines)


def evaluate_run(model, *, split: str = "test", data_dir: Optional[str] = None, num_samples: int = DEFAULT_SAMPLES,
                 iw_samples: int = DEFAULT_IW_SAMPLES, batch_size: int = 100, targets: Optional[list[str]] = None,
                 inputs: Optional[str] = None, max_images: Optional[int] = None,
                 progress: bool = False, data=None) -> dict[str, Any]:
    """`vaelab eval` of an image-to-image run: its own `split` pairs, or `--inputs DIR` with
    `--targets B1 ...`, or its split's inputs (a pairs run) with further `--targets` folders.
    `data`: the run's dataset when already loaded (else loaded from its config)."""
    import dataclasses

    from vaelab.data import load_data
    from vaelab.data.degrade import Degradation
    from vaelab.data.pairs import pair_split_keys
    from vaelab.errors import ConfigError
    from vaelab.translate.io import folder_inputs, folder_targets

    cfg = model.run_config
    data_cfg = dataclasses.replace(cfg.data, data_dir=data_dir) if data_dir else cfg.data
    data = data if data is not None else load_data(data_cfg)
    if tuple(data.image_shape[1:]) != tuple(model.image_shape[1:]) or data.image_shape[0] != model.image_shape[0]:
        raise ConfigError(f"the data's images are {data.image_shape}, the model expects {tuple(model.image_shape)}")
    degradation = Degradation(cfg.data.degrade) if cfg.data.degrade is not None else None
    kinds = degradation.kinds if degradation is not None else None
    noise_std = cfg.data.degrade.noise if cfg.data.degrade is not None else 0.0
    val = fixed_pairs(data.val, "validation split", max_images=max(TUNE_IMAGES, CALIBRATION_IMAGES))
    if inputs is not None:
        if not targets:
            raise ConfigError("--inputs DIR needs the targets of its images: --targets B1 [B2 ...]")
        keys, x = folder_inputs(inputs, model.input_shape, data_cfg)
        test = EvalPairs(x, folder_targets(keys, targets, model.image_shape, data_cfg), f"--inputs {inputs}")
        split = "inputs"
    elif targets:
        if cfg.data.dataset != "pairs":
            raise ConfigError("--targets folders are matched to the inputs by relative path: give --inputs DIR "
                              "too (this run's inputs are not files)")
        keys = pair_split_keys(data_cfg)[split]
        own = data.split(split)
        test = EvalPairs(own.inputs.float() / 255.0, folder_targets(keys, targets, model.image_shape, data_cfg),
                         f"{split} inputs, targets from {len(targets)} folder(s)")
    else:
        description = degradation.describe() if degradation is not None else f"{cfg.data.dataset} pairs"
        test = fixed_pairs(data.split(split), description)
    if max_images is not None:
        test = test.head(max_images)
    result = evaluate_translation(model, test, val, num_samples=num_samples, iw_samples=iw_samples,
                                  batch_size=batch_size, kinds=kinds, noise_std=noise_std, progress=progress)
    from vaelab import __version__

    return {"split": split, "dataset": cfg.data.dataset, "pairs": test.source,
            "degradation": dataclasses.asdict(cfg.data.degrade) if cfg.data.degrade is not None else None,
            **result, "seed": EVAL_SEED, "vaelab_version": __version__}
