"""The training loop: one function, in commented sections.

`train(cfg, out)` starts a run; `resume(run_dir)` continues one from its last checkpoint. Both
end in `_fit`, which owns the loop: set-up, then per epoch (learning rate, batches with the
loss/step/log, validation, metrics line, checkpoint), then the final weights and figures.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from vaelab import __version__
from vaelab.checkpoint import (
    CHECKPOINT_FILE,
    WEIGHTS_FILE,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
    save_weights,
)
from vaelab.config import RunConfig
from vaelab.data import ImageData, load_data
from vaelab.data.batches import iterate_batches
from vaelab.errors import ConfigError, DivergenceError, RunError
from vaelab.evaluate import elbo_on_split
from vaelab.models import VAE
from vaelab.models.vae import resolve_hidden
from vaelab.objectives import OBJECTIVES
from vaelab.runs import CONFIG_FILE, METRICS_FILE, default_run_dir, prepare_run_dir

# Called after every epoch with the metrics row and the model (in eval mode).
ProgressHook = Callable[[dict[str, Any], torch.nn.Module], None]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_multiplier(schedule: list[list[float]], epoch: int) -> float:
    """Piecewise-constant schedule [[epochs, multiplier], ...] evaluated at `epoch` (0-based).

    A segment covers [start, start + epochs); past the last segment its multiplier stays.
    """
    start = 0.0
    for length, mult in schedule:
        if epoch + 0.5 < start + length:  # the epoch's midpoint decides, for fractional segments
            return float(mult)
        start += length
    return float(schedule[-1][1]) if schedule else 1.0


def finalize_config(cfg: RunConfig, data: ImageData) -> RunConfig:
    """Fill in what the data decides (image shape, classes) and check it against the flags."""
    cfg.model.image_shape = list(data.image_shape)
    cfg.model.num_classes = data.num_classes
    cfg.model.hidden = resolve_hidden(cfg.model)
    cfg.vaelab_version = __version__
    if cfg.model.conditional and data.num_classes < 2:
        raise ConfigError(f"--conditional needs a labelled dataset; {data.name} has no labels")
    if cfg.train.batch_size > len(data.train):
        raise ConfigError(
            f"--batch-size {cfg.train.batch_size} is larger than the training split ({len(data.train)} images)"
        )
    return cfg.validate()


def train(cfg: RunConfig, out: Optional[str | Path] = None, *, force: bool = False, progress: bool = True,
          data: Optional[ImageData] = None, hook: Optional[ProgressHook] = None) -> Path:
    """Train a new run described by `cfg` into `out` (default runs/<dataset>-<time>); return its folder.

    Everything that can fail on user input (config, data, output folder) is checked before
    anything is written.
    """
    cfg.validate()
    data = data if data is not None else load_data(cfg.data)
    cfg = finalize_config(cfg, data)
    run_dir = Path(out) if out is not None else default_run_dir(cfg.data.dataset)
    prepare_run_dir(run_dir, force)
    atomic_write_text(run_dir / CONFIG_FILE, cfg.to_json())
    atomic_write_text(run_dir / METRICS_FILE, "")
    return _fit(cfg, run_dir, data, resume_from=None, progress=progress, hook=hook)


def resume(run_dir: str | Path, *, progress: bool = True, epochs: Optional[int] = None,
           hook: Optional[ProgressHook] = None) -> Path:
    """Continue `run_dir` from its last checkpoint (optionally to a new total of `epochs`)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir} is not a vaelab run folder (no {CONFIG_FILE})")
    cfg = RunConfig.load(run_dir / CONFIG_FILE)
    checkpoint = run_dir / CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise RunError(f"{run_dir} has no {CHECKPOINT_FILE} to resume from")
    if epochs is not None:
        cfg.train.epochs = epochs
        cfg.validate()
        atomic_write_text(run_dir / CONFIG_FILE, cfg.to_json())
    data = load_data(cfg.data)
    return _fit(cfg, run_dir, data, resume_from=checkpoint, progress=progress, hook=hook)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append_line(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _fit(cfg: RunConfig, run_dir: Path, data: ImageData, *, resume_from: Optional[Path], progress: bool,
         hook: Optional[ProgressHook]) -> Path:
    from tqdm.auto import tqdm

    tc = cfg.train
    # ---- set-up: device, seeds, model, optimiser, data order ----------------------------------
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = pick_device(tc.device)
    seed_everything(tc.seed)
    model = VAE(cfg.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps)
    data_gen = torch.Generator().manual_seed(tc.seed)  # data order + dynamic binarisation
    objective = OBJECTIVES[tc.objective]
    step_fn = model
    if tc.compile:
        step_fn = _try_compile(model)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")
    dynamic = cfg.data.binarize == "dynamic"
    use_labels = model.conditional
    n_train = len(data.train)
    batches_per_epoch = math.ceil(n_train / tc.batch_size)
    warmup_steps = tc.kl_warmup_epochs * batches_per_epoch
    checkpoint_path = run_dir / CHECKPOINT_FILE
    metrics_path = run_dir / METRICS_FILE

    # Loop state: everything needed to continue exactly where a checkpoint left off.
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "sums": [0.0, 0.0, 0.0, 0], "seconds": 0.0}
    order: Optional[torch.Tensor] = None
    if resume_from is not None:
        state, extra = load_checkpoint(resume_from, model, optimizer, data_gen)
        order = extra.get("order")
        # Drop metric lines written after the checkpoint (the run died between the two writes).
        rows = [r for r in _read_metrics(metrics_path) if r["epoch"] <= state["epoch"]]
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def checkpoint() -> None:
        extra = {"order": order} if order is not None else {}
        save_checkpoint(checkpoint_path, model, optimizer, data_gen, state, extra)

    for epoch in range(state["epoch"], tc.epochs):
        # ---- learning rate for this epoch ------------------------------------------------------
        lr = tc.lr * lr_multiplier(tc.lr_schedule, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if order is None:
            order = torch.randperm(n_train, generator=data_gen)
        model.train()
        started = time.perf_counter()
        sums = torch.tensor(state["sums"][:3], dtype=torch.float64)
        count = int(state["sums"][3])
        beta = tc.beta
        bar = tqdm(total=batches_per_epoch, initial=state["batch"], desc=f"epoch {epoch + 1}/{tc.epochs}",
                   disable=not progress, leave=False, dynamic_ncols=True)
        batches = iterate_batches(data.train, tc.batch_size, shuffle=True, generator=data_gen,
                                  dynamic_binarize=dynamic, device=device, start=state["batch"], order=order)
        for x, y in batches:
            # ---- one optimisation step ---------------------------------------------------------
            beta = tc.beta * min(1.0, (state["step"] + 1) / warmup_steps) if warmup_steps else tc.beta
            with torch.autocast(**autocast):
                parts = objective(step_fn, x, y if use_labels else None, beta, tc.iw_samples_train)
            optimizer.zero_grad(set_to_none=True)
            parts.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or math.inf)
            if not torch.isfinite(parts.loss.detach() + grad_norm):
                bar.close()
                where = "the last good checkpoint " + str(checkpoint_path) if checkpoint_path.exists() else \
                    "no checkpoint yet"
                raise DivergenceError(
                    f"training diverged: non-finite loss or gradient at epoch {epoch + 1}, step {state['step'] + 1} "
                    f"({where}); try a lower --lr or --grad-clip"
                )
            optimizer.step()
            b = x.shape[0]
            sums += torch.stack([parts.loss.detach(), parts.recon.detach(), parts.kl.detach()]).double().cpu() * b
            count += b
            state["batch"] += 1
            state["step"] += 1
            bar.update(1)
            if state["step"] % 20 == 0:
                bar.set_postfix(loss=f"{sums[0].item() / count:.2f}")
            if tc.checkpoint_every and state["step"] % tc.checkpoint_every == 0:
                state["sums"] = sums.tolist() + [count]
                state["seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                checkpoint()
        bar.close()

        # ---- validation, metrics line, end-of-epoch checkpoint -------------------------------
        model.eval()
        val = elbo_on_split(model, data.val, dynamic_binarize=dynamic)
        seconds = state["seconds"] + time.perf_counter() - started
        train_loss, train_recon, train_kl = (sums / max(count, 1)).tolist()
        row = {
            "epoch": epoch + 1, "step": state["step"],
            "train_loss": train_loss, "train_recon": train_recon, "train_kl": train_kl,
            "val_loss": val["loss"], "val_recon": val["recon"], "val_kl": val["kl"],
            "lr": lr, "beta": beta, "seconds": round(seconds, 4),
        }
        _append_line(metrics_path, row)
        if progress and (tc.epochs <= 20 or (epoch + 1) % max(1, tc.epochs // 10) == 0 or epoch + 1 == tc.epochs):
            print(f"epoch {epoch + 1}/{tc.epochs}  train {train_loss:.3f}  val {val['loss']:.3f} "
                  f"(recon {val['recon']:.3f}, kl {val['kl']:.3f})  {seconds:.1f}s", flush=True)
        if hook is not None:
            hook(row, model)
        state.update(epoch=epoch + 1, batch=0, sums=[0.0, 0.0, 0.0, 0], seconds=0.0)
        order = None
        checkpoint()

    # ---- final weights and figures -------------------------------------------------------------
    save_weights(model, run_dir / WEIGHTS_FILE)
    from vaelab.plots import write_run_figures

    model.eval()
    write_run_figures(model, data, run_dir, seed=tc.seed)
    return run_dir


def _try_compile(model: torch.nn.Module):
    """torch.compile when it works here; otherwise fall back to eager, silently and safely."""
    try:
        compiled = torch.compile(model)
        return compiled
    except Exception:  # noqa: BLE001 - compile support varies by platform; eager always works
        return model
