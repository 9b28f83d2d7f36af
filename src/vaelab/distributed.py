"""Multi-process training with DistributedDataParallel (DDP), started by `torchrun`.

    torchrun --nproc_per_node 2 -m vaelab train --dataset mnist ...     # 2 processes, one machine

torchrun starts N copies of `python -m vaelab` with RANK, WORLD_SIZE and LOCAL_RANK (plus
MASTER_ADDR / MASTER_PORT) in the environment; `context_from_env` reads them and
`init_process_group` joins the group: NCCL between GPUs (one per process, cuda:LOCAL_RANK),
gloo between CPU processes. Without those variables everything here is a no-op.

What a run on N processes computes is, by construction, the single-process run with the same
`--batch-size` (the *global* batch), up to float summation order:
- every rank walks the same seeded permutation and takes its rows of each global batch
  (`vaelab.data.batches.shard_rows`; dynamic binarisation is drawn for the whole batch);
- `StepLoss` weights each rank's mean loss by its share of the batch, so DDP's average of the
  ranks' gradients is exactly the gradient of the global batch mean, even when the last batch
  does not split evenly;
- the posterior noise is drawn for the whole global batch on every rank (same seed, same RNG
  stream) and each rank keeps its rows, so the draws equal a single process's draws.
Only rank 0 writes the run folder (config, metrics, checkpoints, weights, figures).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from vaelab.data.batches import shard_rows
from vaelab.errors import ConfigError
from vaelab.objectives import LossParts

# The collective-communication backend per device type.
BACKENDS = {"cuda": "nccl", "cpu": "gloo"}


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a torchrun job (rank 0 of 1 when not started by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0


def context_from_env(environ: Optional[Mapping[str, str]] = None) -> DistContext:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; absent -> a single process."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return DistContext()
    try:
        world_size = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ConfigError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world_size}")
    return DistContext(rank, world_size, local_rank)


def is_main_process() -> bool:
    """True unless this is a torchrun worker other than rank 0."""
    return context_from_env().is_main


def device_for(name: str, ctx: DistContext, cuda_available: Optional[bool] = None) -> torch.device:
    """The device a process trains on: `--device` (auto/cpu/cuda) and, under torchrun, its GPU.

    auto = cuda when a GPU is visible, else cpu. With several processes on GPUs each takes
    cuda:LOCAL_RANK; on CPUs they all use the CPU (gloo).
    """
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if name == "cuda" and not available:
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available")
    kind = ("cuda" if available else "cpu") if name == "auto" else name
    if kind == "cuda" and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    return torch.device(kind)


def init_process_group(ctx: DistContext, device: torch.device) -> None:
    """Join torchrun's process group (env:// rendezvous); a no-op for a single process."""
    if not ctx.enabled:
        return
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(BACKENDS[device.type], rank=ctx.rank, world_size=ctx.world_size)


def close_process_group(ctx: DistContext) -> None:
    """Tear down the process group that `ctx` started, if any."""
    if ctx.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here (a no-op for a single process).

    Called once a run has finished on every rank, before the group is torn down: a rank that
    destroys its gloo group while a peer is still busy (rank 0 writing the final weights and
    figures) can abort at exit ("terminate called without an active exception"). Not called
    on the error path, where a peer may never arrive.
    """
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place (identity for a single process)."""
    if ctx.enabled:
        import torch.distributed as dist

        dist.all_reduce(tensor)
    return tensor


def from_main(value: float, ctx: DistContext, device: torch.device) -> float:
    """Rank 0's `value` on every rank (the others pass anything; a no-op for a single process)."""
    if not ctx.enabled:
        return value
    mine = torch.tensor([value if ctx.is_main else 0.0], dtype=torch.float64, device=device)
    return float(all_reduce_sum(mine, ctx).item())


def first_error(error: Optional[BaseException], ctx: DistContext, device: torch.device) -> None:
    """Raise on every rank if any rank failed a set-up step (so none waits forever for the rest).

    The failing rank re-raises its own error; the others raise a one-line ConfigError.
    """
    failed = torch.tensor([0.0 if error is None else 1.0], device=device)
    if all_reduce_sum(failed, ctx).item() > 0:
        if error is not None:
            raise error
        raise ConfigError("another torchrun process failed to set up (see rank 0's error)")


def wrap_ddp(module: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `module` when running under torchrun; else `module`."""
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


# ---- the per-step loss as a module ------------------------------------------------------------

class StepLoss(nn.Module):
    """The training objective of one (sharded) batch, as a module: what DDP wraps and
    `torch.compile` compiles (the objective calls `encode`/`decode`, not `forward`, so wrapping
    the VAE itself would leave both doing nothing).

    forward(x (b, C, H, W), y, beta, global_batch) -> (objective, parts): b is this rank's share
    of the global batch; `parts` are the objective's per-image means over those b images and
    `objective` = parts.loss * b * world_size / global_batch is what to differentiate (just
    parts.loss for a single process).
    """

    def __init__(self, model: nn.Module, objective: Callable[..., LossParts], num_samples: int,
                 ctx: DistContext = DistContext()) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.num_samples = num_samples
        self.rank, self.world_size = ctx.rank, ctx.world_size

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor], beta: float | torch.Tensor,
                global_batch: int) -> tuple[torch.Tensor, LossParts]:
        if self.world_size == 1:
            parts = self.objective(self.model, x, y, beta, self.num_samples)
            return parts.loss, parts
        rows = shard_rows(global_batch, self.rank, self.world_size)
        parts = self.objective(_GlobalNoise(self.model, global_batch, rows), x, y, beta, self.num_samples)
        # DDP averages gradients over ranks; weighting by the shard's share makes that average
        # the gradient of the mean over the whole global batch.
        share = x.shape[0] * self.world_size / global_batch
        return parts.loss * share, parts


class _GlobalNoise:
    """Stands in for the VAE inside the objective: the posterior it returns draws its noise for
    the whole global batch and keeps this rank's rows (see the module docstring)."""

    def __init__(self, model: nn.Module, global_batch: int, rows: slice) -> None:
        self.model, self.global_batch, self.rows = model, global_batch, rows

    def __getattr__(self, name: str) -> Any:  # likelihood, conditional, decode, elbo_terms, ...
        return getattr(self.model, name)

    def encode(self, x: torch.Tensor, y: Optional[torch.Tensor] = None):
        q = self.model.encode(x, y)
        local_draw = q.draw_noise

        def global_draw(shape: tuple[int, ...], generator: Optional[torch.Generator] = None) -> torch.Tensor:
            # ([K,] b, D) for this rank -> draw ([K,] B_global, D), as a single process would, and
            # keep this rank's rows: the reparameterisation then uses exactly its share of N.
            full = (*shape[:-2], self.global_batch, shape[-1])
            return local_draw(full, generator)[..., self.rows, :]

        q.draw_noise = global_draw  # every posterior draws its noise through draw_noise
        return q
