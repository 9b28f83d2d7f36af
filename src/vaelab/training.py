"""The training loop: one function, in commented sections.

`train(cfg, out)` starts a run; `resume(run_dir)` continues one from its last checkpoint. Both
end in `_fit`, which owns the loop: set-up, then per epoch (learning rate, batches with the
loss/step/log, validation, metrics line, checkpoint), then the final weights and figures.
The pieces it steers with live in their own modules: the optimiser (`vaelab.optim`), the
learning-rate schedule (`vaelab.schedules`), the moving average of the weights (`vaelab.ema`),
the best epoch and early stopping (`vaelab.early_stopping`), TensorBoard / MLflow
(`vaelab.tracking`). Rank 0 holds the run folder's one-writer lock (`vaelab.runlock`) for the
whole run and writes nothing before every check on user input has passed.

Speed (measured in benchmarks/train_speed.py; numbers in the README's performance section): the
split is one uint8 tensor and each batch one gather from it (on a GPU the split is moved there
once); plain Adam uses its fused kernel; a constant rate and no EMA cost nothing per step; the
running sums stay on the device and the loop reads them back only to check for divergence (every
step on a CPU, where that is nearly free; every `GPU_CHECK_EVERY` steps on a GPU, where each read
is a sync); the global gradient norm is only computed when `--grad-clip` asks for it.
`--precision bf16` and `--compile` are opt-in.

Under `torchrun` the same loop runs on every process with DistributedDataParallel (see
`vaelab.distributed`): each rank takes its rows of every global batch and only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional

import torch

from vaelab import __version__
from vaelab.checkpoint import (
    CHECKPOINT_FILE,
    WEIGHTS_FILE,
    atomic_write_text,
    checkpoint_position,
    divergence_message,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
    save_weights,
)
from vaelab.config import RunConfig, fused_step_fits
from vaelab.data import ImageData, load_data
from vaelab.data.base import keep_classes
from vaelab.data.batches import iterate_batches, to_device
from vaelab.distributed import (
    DistContext,
    StepLoss,
    all_reduce_sum,
    barrier,
    close_process_group,
    context_from_env,
    device_for,
    first_error,
    from_main,
    init_process_group,
    wrap_ddp,
)
from vaelab.early_stopping import BestEpoch
from vaelab.ema import ParameterEMA
from vaelab.errors import ConfigError, DivergenceError, RunError, VaelabError
from vaelab.evaluate import elbo_on_split
from vaelab.fused import make_fused_step
from vaelab.mlflow_tracking import resolve_uri
from vaelab.models import build_model, use_fast_memory_format
from vaelab.models.vae import resolve_hidden
from vaelab.objectives import LossParts, make_objective
from vaelab.optim import make_optimizer, weight_decay_of
from vaelab.runlock import file_stamp, run_lock
from vaelab.runs import (
    CONFIG_FILE,
    METRICS_FILE,
    check_run_dir,
    create_run_dir,
    default_run_dir,
    prepare_run_dir,
    read_metrics,
)
from vaelab.runtime import flush_denormals, seed_everything
from vaelab.schedules import LRSchedule, set_lr
from vaelab.tracking import Tracking, require_trackers

# Called after every epoch with the metrics row and the validated model (in eval mode: the moving
# average with --ema-decay); rank 0 only under torchrun.
ProgressHook = Callable[[dict[str, Any], torch.nn.Module], None]

# On a GPU, reading the running loss back to the host is a sync; look every this many steps (a
# NaN stays NaN in the running sums, so a later look still catches it).
GPU_CHECK_EVERY = 100
# Validation batch: large on a GPU (one big matmul beats ten), moderate on a CPU.
EVAL_BATCH = {"cuda": 10000, "cpu": 1000}
# --task -> what is wrong when the data are (generate) or are not (translate) image pairs.
PAIRING_MISMATCH = {
    "generate": "{name} holds image pairs (inputs and targets): train them with --task translate --arch unet",
    "translate": "--task translate needs image pairs: --dataset pairs --input-dir A --target-dir B, an npz with "
                 "train_inputs/train_targets, or any dataset with --degrade (e.g. noise=0.1); {name} has none",
}


def pick_device(name: str) -> torch.device:
    """`--device` auto/cpu/cuda -> a torch.device (auto = cuda when available)."""
    return device_for(name, DistContext())


def finalize_config(cfg: RunConfig, data: ImageData) -> RunConfig:
    """Fill in what the data and the defaults decide (image shape, classes, hidden sizes, weight
    decay, the MLflow URI, which weights model.safetensors holds) and check it against the flags."""
    cfg.model.image_shape = list(data.image_shape)
    cfg.model.num_classes = data.num_classes
    cfg.model.input_channels = data.input_channels  # image pairs: the input image's channels
    cfg.model.hidden = resolve_hidden(cfg.model)
    if cfg.data.dimensions == 3:  # written out, so the run does not depend on a later default
        cfg.data.volume_size = list(cfg.data.resolved_volume_size())
    cfg.train.weight_decay = weight_decay_of(cfg.train)
    if cfg.train.mlflow:
        cfg.train.mlflow = resolve_uri(cfg.train.mlflow)
    cfg.weights = "ema" if cfg.train.ema_decay else "raw"
    cfg.vaelab_version = __version__
    if cfg.model.conditional and data.num_classes < 2:
        raise ConfigError(f"--conditional needs a labelled dataset; {data.name} has no labels")
    if (cfg.model.task == "translate") != data.paired:
        raise ConfigError(PAIRING_MISMATCH[cfg.model.task].format(name=data.name))
    if cfg.train.batch_size > len(data.train):
        raise ConfigError(
            f"--batch-size {cfg.train.batch_size} is larger than the training split ({len(data.train)} images)"
        )
    return cfg.validate()


def train(cfg: RunConfig, out: Optional[str | Path] = None, *, force: bool = False, progress: bool = True,
          data: Optional[ImageData] = None, hook: Optional[ProgressHook] = None) -> Path:
    """Train a new run described by `cfg` into `out` (default runs/<dataset>-<time>); return its folder.

    Everything that can fail on user input (config, data, output folder, the run folder's lock)
    is checked before anything is written; the lock is held until training ends.
    """
    cfg.validate()
    require_trackers(cfg)
    if data is None:
        data = load_data(cfg.data)
    elif cfg.data.train_classes:  # data handed in: choose the classes here too (idempotent)
        data = keep_classes(data, cfg.data.train_classes)
    cfg = finalize_config(cfg, data)
    run_dir = Path(out) if out is not None else default_run_dir(cfg.data.dataset)
    ctx = context_from_env()  # torchrun's rank and world size (rank 0 of 1 otherwise)
    _check_step(cfg, ctx)
    device = device_for(cfg.train.device, ctx)
    init_process_group(ctx, device)
    try:
        with ExitStack() as held:
            error = None
            if ctx.is_main:  # only rank 0 writes the run folder, so only rank 0 locks it
                try:
                    check_run_dir(run_dir, force)  # an existing run is refused before it is touched
                    create_run_dir(run_dir)
                    held.enter_context(run_lock(run_dir, "vaelab train"))
                    prepare_run_dir(run_dir, force)  # under the lock: --force clears only an idle run
                    atomic_write_text(run_dir / CONFIG_FILE, cfg.to_json())
                    atomic_write_text(run_dir / METRICS_FILE, "")
                except VaelabError as exc:
                    error = exc
            first_error(error, ctx, device)  # every rank stops if rank 0 could not set up
            return _fit(cfg, run_dir, data, ctx, device, resume_from=None, progress=progress, hook=hook)
    finally:
        close_process_group(ctx)


def _check_step(cfg: RunConfig, ctx: DistContext) -> None:
    """`--step fused` or `--objective beta-tc` under torchrun: refused before anything is written
    (the config alone cannot know the process count; everything else was checked by
    `RunConfig.validate`)."""
    if cfg.train.step == "fused" and not fused_step_fits(cfg, ctx.world_size):
        raise ConfigError("--step fused trains in one process; under torchrun use --step auto or autograd")
    if cfg.train.objective == "beta-tc" and ctx.world_size > 1:  # each rank would see only its shard's codes
        raise ConfigError("--objective beta-tc estimates q(z) from the whole batch and trains in one process, "
                          "not under torchrun")


def resume(run_dir: str | Path, *, progress: bool = True, epochs: Optional[int] = None,
           hook: Optional[ProgressHook] = None) -> Path:
    """Continue `run_dir` from its last checkpoint (optionally to a new total of `epochs`).

    Nothing in the run folder changes until everything that can fail on user input has passed:
    the config, `epochs`, the data, the lock and the checkpoint itself (config.json gets the new
    `epochs` only once the checkpoint has been loaded).
    """
    run_dir = Path(run_dir)
    checkpoint = run_dir / CHECKPOINT_FILE
    # Read before the lock is taken (so that a refusal leaves even the lock file alone); compared
    # again under the lock, in case another writer came and went in between.
    stamps = {path: file_stamp(path) for path in (run_dir / CONFIG_FILE, checkpoint)}
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir} is not a vaelab run folder (no {CONFIG_FILE})")
    cfg = RunConfig.load(run_dir / CONFIG_FILE)
    if not checkpoint.is_file():
        raise RunError(f"{run_dir} has no {CHECKPOINT_FILE} to resume from")
    ctx = context_from_env()
    _check_step(cfg, ctx)
    if epochs is not None and epochs != cfg.train.epochs:
        done = (checkpoint_position(checkpoint) or {}).get("epoch", 0)
        if epochs < done:
            raise ConfigError(f"--epochs {epochs} is fewer than the {done} epochs {run_dir} has already trained")
        cfg.train.epochs = epochs
        cfg.validate()
    else:
        epochs = None  # config.json stays as it is
    require_trackers(cfg)
    data = load_data(cfg.data)
    device = device_for(cfg.train.device, ctx)
    init_process_group(ctx, device)
    try:
        with ExitStack() as held:
            def commit() -> None:
                """Called by the loop once the checkpoint has loaded: from here on the run changes."""
                held.enter_context(run_lock(run_dir, "vaelab train --resume"))
                if any(file_stamp(path) != stamp for path, stamp in stamps.items()):
                    raise RunError(f"{run_dir} changed while this command started (another vaelab process wrote "
                                   f"to it); run the command again")
                remove_stale_temp_files(run_dir)  # debris of a write that a kill interrupted
                if epochs is not None:  # --epochs N
                    atomic_write_text(run_dir / CONFIG_FILE, cfg.to_json())

            return _fit(cfg, run_dir, data, ctx, device, resume_from=checkpoint, progress=progress, hook=hook,
                        commit=commit)
    finally:
        close_process_group(ctx)


def _append_line(path: Path, row: dict[str, Any]) -> None:
    try:
        with open(path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:  # e.g. a full disk: a partial line is dropped on resume
        raise RunError(f"cannot write {path}: {exc.strerror or exc}; the last checkpoint is intact, "
                       f"continue with --resume {path.parent}") from None


def _fit(cfg: RunConfig, run_dir: Path, data: ImageData, ctx: DistContext, device: torch.device, *,
         resume_from: Optional[Path], progress: bool, hook: Optional[ProgressHook],
         commit: Optional[Callable[[], None]] = None) -> Path:
    tracking = Tracking(hook)  # its loggers start inside the loop, once the checkpoint has loaded
    try:
        with flush_denormals():
            _fit_loop(cfg, run_dir, data, ctx, device, resume_from=resume_from, progress=progress,
                      tracking=tracking, commit=commit)
    except BaseException:
        tracking.close(failed=True)
        raise
    tracking.close()
    barrier(ctx)  # every rank done (rank 0 wrote the final files) before the group is torn down
    return run_dir


def _fit_loop(cfg: RunConfig, run_dir: Path, data: ImageData, ctx: DistContext, device: torch.device, *,
              resume_from: Optional[Path], progress: bool, tracking: Tracking,
              commit: Optional[Callable[[], None]]) -> Path:
    from tqdm.auto import tqdm

    tc = cfg.train
    main = ctx.is_main  # rank 0 writes files and prints; every rank trains
    progress = progress and main
    # ---- set-up: device, seeds, model, optimiser, schedule, data order -------------------------
    if tc.threads:
        torch.set_num_threads(tc.threads)
    seed_everything(tc.seed)  # the same seed on every rank: same initial weights, same draws
    model = build_model(cfg.model).to(device)
    if ctx.world_size == 1:  # conv weights channels-last on a CPU (DDP's gradient buckets keep the default)
        use_fast_memory_format(model, device)
    optimizer = make_optimizer(model, tc)
    data_gen = torch.Generator().manual_seed(tc.seed)  # data order + dynamic binarisation
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")
    dynamic = cfg.data.binarize == "dynamic"
    use_labels = model.conditional
    # The training split as uint8 on the device, moved once (a no-op on a CPU).
    train_split = to_device(data.train, device)
    n_train = len(train_split)
    batches_per_epoch = math.ceil(n_train / tc.batch_size)
    warmup_steps = tc.kl_warmup_epochs * batches_per_epoch
    schedule = LRSchedule(tc, batches_per_epoch)
    lr_warmup_steps = schedule.warmup_steps  # 0: the rate only changes at epoch starts
    # Rank 0 validates; the others need the loss too when it steers the run (plateau, early stopping).
    share_val = ctx.enabled and (tc.lr_schedule == "plateau" or tc.early_stopping > 0)
    ema = ParameterEMA(model, tc.ema_decay) if tc.ema_decay and main else None
    best = BestEpoch(keep_weights=tc.keep == "best" and main)

    def kl_weight(steps_taken: int) -> float:
        """beta, ramped linearly from 0 over the warm-up steps (KL warm-up), then constant."""
        return tc.beta * min(1.0, steps_taken / warmup_steps) if warmup_steps else tc.beta
    check_every = 1 if device.type == "cpu" else GPU_CHECK_EVERY
    checkpoint_path = run_dir / CHECKPOINT_FILE
    metrics_path = run_dir / METRICS_FILE

    # Loop state: everything needed to continue exactly where a checkpoint left off.
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "sums": [0.0, 0.0, 0.0, 0], "seconds": 0.0,
                             "optimizer": tc.optimizer}
    order: Optional[torch.Tensor] = None
    if resume_from is not None:
        state, extra = load_checkpoint(resume_from, model, optimizer, data_gen)
        _check_resumable(resume_from, state, extra, tc, n_train, ema)
        state.setdefault("optimizer", tc.optimizer)  # a checkpoint from before --optimizer (Adam's)
        order = extra.get("order")
        schedule.load_state_dict(state.get("schedule"))
        best.load_state_dict(state.get("best"))
        best.load_state_tensors(extra)
    # ---- every check has passed: from here on the run folder changes (rank 0) ------------------
    error = None
    if main and commit is not None:
        try:
            commit()  # resume: the lock, then config.json's new --epochs
        except VaelabError as exc:
            error = exc
    first_error(error, ctx, device)  # every rank stops if rank 0 could not go on
    if main:
        if resume_from is not None:  # drop metric lines written after the checkpoint (a kill between the two)
            rows = [r for r in read_metrics(metrics_path) if r["epoch"] <= state["epoch"]]
            atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        tracking.start(cfg, run_dir, data, resumed=resume_from is not None)  # TensorBoard / MLflow

    # The per-step loss as one module: DDP wraps it under torchrun, --compile compiles it.
    step_loss = wrap_ddp(StepLoss(model, make_objective(tc, n_train), tc.iw_samples_train, ctx), ctx, device)
    if tc.compile:
        step_loss = _try_compile(step_loss, train_split, tc, ctx, autocast, use_labels, optimizer)
    fused = make_fused_step(model, cfg, ctx.world_size)  # None: autograd computes the gradients

    def compute_gradients(x: torch.Tensor, y: Optional[torch.Tensor], beta: float, global_batch: int) -> LossParts:
        """The step's loss parts; leaves d(objective)/d(parameter) in every `.grad`."""
        if fused is not None:  # hand-derived forward + backward (vaelab.fused)
            return fused(x, y, beta, global_batch)
        with torch.autocast(**autocast):
            objective, parts = step_loss(x, y, beta, global_batch)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        return parts

    def checkpoint() -> None:
        if main:
            extra = {"order": order} if order is not None else {}
            if ema is not None:
                extra.update(ema.state_tensors())
            extra.update(best.state_tensors())
            state.update(schedule=schedule.state_dict(), best=best.state_dict())
            save_checkpoint(checkpoint_path, model, optimizer, data_gen, state, extra)

    def global_sums(local: torch.Tensor) -> list[float]:
        """This epoch's (loss, recon, kl) x images summed over all ranks, as floats."""
        return all_reduce_sum(local.clone(), ctx).tolist()

    if resume_from is None:
        checkpoint()  # step 0: a run killed before its first step can still be resumed

    for epoch in range(state["epoch"], tc.epochs):
        # ---- early stopping: N epochs in a row without a better validation loss --------------------
        if best.should_stop(epoch, tc.early_stopping):
            if progress:
                print(f"early stopping after epoch {epoch}: no better validation loss for {tc.early_stopping} "
                      f"epochs (best {best.val_loss:.3f} at epoch {best.epoch})", flush=True)
            break
        # ---- learning rate for this epoch (during a warm-up also before each step) -------------
        lr = schedule.lr(epoch, state["step"] + 1)
        set_lr(optimizer, lr)
        if order is None:
            order = torch.randperm(n_train, generator=data_gen)
        model.train()
        started = time.perf_counter()
        # Running (loss, recon, kl) x images of this epoch, on the device: no host sync per step.
        # A resumed epoch's sums so far are global; rank 0 carries them, the others start at 0.
        sums = torch.tensor(state["sums"][:3] if main else [0.0] * 3, dtype=torch.float64, device=device)
        count = int(state["sums"][3])  # images of the global batches so far
        extra_sums = ExtraSums(state.get("extra_sums", {}), main, device)  # an objective's extra terms
        # The KL weight of the last step taken (the same value when resumed past the epoch's last batch).
        beta = kl_weight(state["step"])
        bar = tqdm(total=batches_per_epoch, initial=state["batch"], desc=f"epoch {epoch + 1}/{tc.epochs}",
                   disable=not progress, leave=False, dynamic_ncols=True)
        batches = iterate_batches(train_split, tc.batch_size, shuffle=True, generator=data_gen,
                                  dynamic_binarize=dynamic, device=device, start=state["batch"], order=order,
                                  shard=(ctx.rank, ctx.world_size), with_labels=use_labels)
        for x, y in batches:
            # ---- one optimisation step ---------------------------------------------------------
            beta = kl_weight(state["step"] + 1)
            if state["step"] < lr_warmup_steps:  # linear learning-rate warm-up, per step
                lr = schedule.lr(epoch, state["step"] + 1)
                set_lr(optimizer, lr)
            global_batch = min(tc.batch_size, n_train - state["batch"] * tc.batch_size)  # x holds our share
            parts = compute_gradients(x, y, beta, global_batch)
            sums.add_(torch.stack(parts[:3]).detach().double(), alpha=x.shape[0])  # (loss, recon, kl) x images
            extra_sums.add(parts.extras, x.shape[0])
            # A non-finite loss stays non-finite in the sums. A non-finite gradient behind a finite
            # loss breaks the weights in optimizer.step() and so the next loss; the weights are
            # only inspected once that happens, to name the step whose gradient did it (no cost on
            # the normal path). Checkpoints refuse non-finite weights in any case.
            if (state["step"] + 1) % check_every == 0 and not bool(torch.isfinite(sums[0])):
                bar.close()
                step, what = state["step"] + 1, "non-finite loss"
                if check_every == 1 and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                    step, what = state["step"], "non-finite gradient"
                raise DivergenceError(divergence_message(epoch + 1, step, checkpoint_path, what))
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update()
            count += global_batch
            state["batch"] += 1
            state["step"] += 1
            bar.update(1)
            if progress and state["step"] % 20 == 0:
                bar.set_postfix(loss=f"{sums[0].item() / count * ctx.world_size:.2f}")
            if tc.checkpoint_every and state["step"] % tc.checkpoint_every == 0:
                state["sums"] = global_sums(sums) + [count]
                state["extra_sums"] = extra_sums.totals(ctx)
                state["seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                checkpoint()
        bar.refresh()  # draw the full count: updates between refreshes are not drawn
        bar.close()
        lr = schedule.lr(epoch, state["step"])  # the rate of the epoch's last step (before plateau decays)
        end_epoch(model)  # statistics kept over the epoch, e.g. the sigma-VAE's std (likelihoods.OptimalGaussian)
        totals = global_sums(sums)
        extra_totals = extra_sums.totals(ctx)
        if not all(math.isfinite(t) for t in totals):  # steps since the last look (GPU) or on other ranks
            raise DivergenceError(divergence_message(epoch + 1, state["step"], checkpoint_path))

        # ---- validation (of the moving average with --ema-decay), metrics line, checkpoint -------
        model.eval()
        validated = ema.model if ema is not None else model
        val = {"loss": 0.0}
        if main:
            val = elbo_on_split(validated, data.val, batch_size=EVAL_BATCH.get(device.type, 1000),
                                dynamic_binarize=dynamic)
        val_loss = from_main(val["loss"], ctx, device) if share_val else val["loss"]
        schedule.end_epoch(val_loss, state["step"])
        best.update(epoch + 1, val_loss, validated)
        if main:
            seconds = state["seconds"] + time.perf_counter() - started
            train_loss, train_recon, train_kl = (t / max(count, 1) for t in totals)
            row = {
                "epoch": epoch + 1, "step": state["step"],
                "train_loss": train_loss, "train_recon": train_recon, "train_kl": train_kl,
                "val_loss": val["loss"], "val_recon": val["recon"], "val_kl": val["kl"],
                "lr": lr, "beta": beta, "seconds": round(seconds, 4), "best_epoch": best.epoch,
                **{f"train_{name}": total / max(count, 1) for name, total in extra_totals.items()},
            }
            _append_line(metrics_path, row)
            if progress and (tc.epochs <= 20 or (epoch + 1) % max(1, tc.epochs // 10) == 0 or epoch + 1 == tc.epochs):
                print(f"epoch {epoch + 1}/{tc.epochs}  train {train_loss:.3f}  val {val['loss']:.3f} "
                      f"(recon {val['recon']:.3f}, kl {val['kl']:.3f})  {format_seconds(seconds)}", flush=True)
            tracking(row, validated)
        state.update(epoch=epoch + 1, batch=0, sums=[0.0, 0.0, 0.0, 0], extra_sums={}, seconds=0.0)
        order = None
        checkpoint()

    # ---- final weights and figures (rank 0): the kept epoch's, averaged with --ema-decay -------
    if main:
        final = ema.model if ema is not None else model
        if best.weights is not None:  # --keep best
            final.load_state_dict(best.weights)
        save_weights(final, run_dir / WEIGHTS_FILE)
        from vaelab.plots import write_run_figures

        final.eval()
        try:
            write_run_figures(final, data, run_dir, seed=tc.seed)
        except (OSError, RunError) as exc:  # e.g. a full disk: training is done and saved, only pictures are missing
            reason = getattr(exc, "strerror", None) or exc
            raise RunError(f"training finished and {run_dir / WEIGHTS_FILE} is saved, but its figures could not "
                           f"be written ({reason}); free space, then draw them with "
                           f"vaelab.plots.write_run_figures(vaelab.load(RUN), data, RUN)") from None
    return run_dir


def _check_resumable(path: Path, state: dict[str, Any], extra: dict[str, torch.Tensor], tc, n_train: int,
                     ema: Optional[ParameterEMA]) -> None:
    """What a checkpoint must agree on with the run it continues (one RunError line if not)."""
    order = extra.get("order")
    if order is not None and (order.numel() != n_train or order.dtype != torch.int64):
        raise RunError(f"the training data changed since {path} was written ({n_train} training "
                       f"images now, {order.numel()} then); resume needs the same data")
    saved = state.get("optimizer", "adam")  # checkpoints from before --optimizer were Adam's
    if saved != tc.optimizer:
        raise RunError(f"{path} holds the state of --optimizer {saved}, config.json says {tc.optimizer}")
    if ema is not None and not ema.load_state_tensors(extra):
        raise RunError(f"{path} has no moving average of the weights, but config.json asks for --ema-decay")


def format_seconds(seconds: float) -> str:
    """'2.3s', or '12ms' below 0.05 s (where one decimal of a second would read 0.0s)."""
    return f"{seconds * 1000:.0f}ms" if seconds < 0.05 else f"{seconds:.1f}s"
def end_epoch(model: torch.nn.Module) -> None:
    """Call `end_epoch()` on every sub-module that has one, after an epoch's last training step
    (before validation and the end-of-epoch checkpoint): a module that estimates something over
    the epoch's training batches (the sigma-VAE's std) turns its sums into the estimate."""
    for module in model.modules():
        hook = getattr(module, "end_epoch", None)
        if callable(hook):
            hook()


class ExtraSums:
    """Running sums (x images) of the extra terms an objective reports in `LossParts.extras`
    (e.g. the KL of each latent layer), kept on the device like the main sums; a resumed epoch
    carries its sums so far (global, on rank 0) in the checkpoint's `extra_sums`."""

    def __init__(self, saved: dict[str, float], main: bool, device: torch.device) -> None:
        self.device = device
        self.sums = {k: torch.tensor(v if main else 0.0, dtype=torch.float64, device=device) for k, v in saved.items()}

    def add(self, extras: dict[str, torch.Tensor], images: int) -> None:
        for name, value in extras.items():
            total = self.sums.get(name)
            if total is None:
                total = self.sums[name] = torch.zeros((), dtype=torch.float64, device=self.device)
            total.add_(value.detach().double(), alpha=images)

    def totals(self, ctx: DistContext) -> dict[str, float]:
        """The sums over all ranks, by name (sorted: every rank reduces in the same order)."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        reduced = all_reduce_sum(torch.stack([self.sums[n] for n in names]), ctx).tolist()
        return dict(zip(names, reduced))


def _try_compile(step_loss: torch.nn.Module, split, tc, ctx: DistContext, autocast: dict, use_labels: bool,
                 optimizer: Any) -> torch.nn.Module:
    """`torch.compile` the per-step loss if it compiles and runs here; otherwise eager, with a warning.

    Compilation is lazy (it happens at the first call, the backward graph at the first
    backward), so trial forward + backward passes are run here, one per batch size the loop
    will see (the full batch and a smaller last one): shapes are compiled static, so each size
    is its own graph, and a graph that fails to build must fail now, not in the middle of the
    run (a dynamic-shape recompile for the last batch used to crash there). The trials'
    gradients are discarded and every RNG they drew from (the CPU's and the training device's)
    is restored, so the run itself is unaffected.
    """
    import warnings

    # A persistent compile cache (Inductor's FX-graph and AOTAutograd caches live under this
    # folder): a second run of the same set-up skips code generation (benchmarks/train_speed.py
    # --arch conv --levers measures both). /tmp, Inductor's default, is emptied on reboot.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "vaelab" / "torch-compile"))
    sizes = [min(tc.batch_size, len(split))]  # global batch sizes; the last batch may be smaller
    if len(split) > tc.batch_size and len(split) % tc.batch_size:
        sizes.append(len(split) % tc.batch_size)
    device = split.images.device
    # The trial steps must leave no trace: buffers a training-mode forward updates (the sigma-VAE's sums) are put back.
    buffers = {name: b.clone() for name, b in step_loss.named_buffers()}
    try:
        import torch._inductor.config as inductor_config

        # fallback_random: the compiled graph draws its noise with ATen's generator, like eager, instead of
        # Inductor's own RNG, so a compiled run draws the same posterior noise as an eager one.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type), \
                inductor_config.patch(fallback_random=True):
            compiled = _TensorBeta(torch.compile(step_loss, dynamic=False))
            for b in sizes:  # our rows of the first b images, unshuffled
                x, y = next(iterate_batches(split, b, shuffle=False, device=device, shard=(ctx.rank, ctx.world_size)))
                with torch.autocast(**autocast):
                    objective, _ = compiled(x, y if use_labels else None, tc.beta, b)
                objective.backward()
        return compiled
    except Exception as exc:  # noqa: BLE001 - compiler support varies by platform; eager always works
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"--compile: torch.compile failed here, training eagerly ({first[:200]})", stacklevel=2)
        return step_loss
    finally:
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, b in step_loss.named_buffers():
                b.copy_(buffers[name])


class _TensorBeta(torch.nn.Module):
    """Calls the compiled step with the KL weight as a 0-d tensor: dynamo specialises on Python
    floats, so under KL warm-up (a new weight every step) each step would compile a new graph."""

    def __init__(self, compiled: torch.nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor], beta: float | torch.Tensor,
                global_batch: int) -> tuple[torch.Tensor, LossParts]:
        return self.compiled(x, y, torch.as_tensor(beta, dtype=torch.float32, device=x.device), global_batch)
