"""The run folder: what a training run writes, and how a trained model is loaded back.

    RUN/config.json            the resolved RunConfig (rebuilds the model)
    RUN/model.safetensors      final weights
    RUN/checkpoint.safetensors last training checkpoint (for --resume)
    RUN/metrics.jsonl          one JSON line per epoch
    RUN/figures/*.png          latent.png, latent_hist.png, reconstructions.png, samples.png,
                               manifold.png (2-D latents), loss.png; translate runs: translations.png, loss.png
    RUN/sampler.{safetensors,json}  a Gaussian mixture over the training codes (vaelab fit-sampler)
    RUN/translations/          `vaelab translate`'s outputs (its default --out)
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vaelab.checkpoint import CHECKPOINT_FILE, WEIGHTS_FILE, load_weights, remove_stale_temp_files
from vaelab.config import RunConfig
from vaelab.errors import RunError
from vaelab.runlock import LOCK_FILE

if TYPE_CHECKING:
    from vaelab.models import VAE

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
FIGURES_DIR = "figures"
# Everything vaelab writes into a run folder; --force removes exactly these, nothing else.
RUN_ARTIFACTS = (CONFIG_FILE, WEIGHTS_FILE, CHECKPOINT_FILE, METRICS_FILE, FIGURES_DIR, "eval.json", "report.html",
                 "tensorboard", "export", "mlflow.json", "anomaly", "sampler.safetensors", "sampler.json",
                 "disentanglement.json", "translations")
# LOCK_FILE (the one-writer lock, vaelab.runlock) is never removed and does not count as content.


def default_run_dir(dataset: str) -> Path:
    """runs/<dataset>-<YYYYmmdd-HHMMSS>, relative to the working directory."""
    return Path("runs") / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(out: Path, force: bool) -> None:
    """Refuse, touching nothing, an `--out` that is a file or an existing run (without `force`)."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a folder")
    if not force and _has_content(out):
        raise RunError(
            f"run folder {out} already exists and is not empty; use --force to overwrite it, "
            f"--resume {out} to continue it, or another --out"
        )


def _has_content(out: Path) -> bool:
    return out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir())


def create_run_dir(out: Path) -> None:
    """`mkdir -p out` (so that its lock can be taken); one RunError line if it cannot be made."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot write to run folder {out}: {exc.strerror or exc}") from None


def prepare_run_dir(out: Path, force: bool) -> None:
    """Create `out` for a new run; refuse to touch an existing run unless `force`, which removes
    vaelab's own files (RUN_ARTIFACTS) and nothing else. Call it holding the run's lock."""
    check_run_dir(out, force)
    if _has_content(out):
        try:
            for name in RUN_ARTIFACTS:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            remove_stale_temp_files(out)  # half-written files a killed run left behind
        except OSError as exc:
            raise RunError(f"cannot clear run folder {out} for --force: {exc.strerror or exc}") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / FIGURES_DIR).mkdir(exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"cannot write to run folder {out}: {exc.strerror or exc}") from None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl` ([] if absent); a line cut short by a kill is skipped.

    (A cut-short line can only be the last epoch's, and resume redoes that epoch.)
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> VAE:
    """Load a trained model from a run folder: `config.json` + `model.safetensors` -> VAE in eval mode."""
    from vaelab.models import build_model, use_fast_memory_format

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder not found: {run_dir}")
    cfg = RunConfig.load(run_dir / CONFIG_FILE)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise RunError(f"{run_dir} has no {WEIGHTS_FILE}: training did not finish (try --resume {run_dir})")
    model = build_model(cfg.model)
    load_weights(model, weights)
    model.run_config = cfg  # type: ignore[attr-defined]
    return use_fast_memory_format(model.to(device), device).eval()
