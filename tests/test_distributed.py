"""Multi-process training: sharding, the per-rank loss weighting, and a real 2-process torchrun job.

The reference for everything here is the single-process run with the same global batch: a
torchrun job on N processes must end at the same weights, up to float summation order (each
rank sums its rows' gradients, then gloo sums the ranks': a different order of the same float
additions than one process summing all rows, so results agree to ~1e-6 relative, not bitwise).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaelab.checkpoint import read_safetensors
from vaelab.cli import main
from vaelab.config import ModelConfig, RunConfig
from vaelab.data.base import Split
from vaelab.data.batches import iterate_batches, shard_rows
from vaelab.distributed import DistContext, StepLoss, context_from_env, device_for
from vaelab.errors import ConfigError
from vaelab.models import VAE
from vaelab.objectives import OBJECTIVES
from vaelab.training import seed_everything

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
def test_shard_rows_tile_every_batch(world_size):
    for batch in range(1, 40):
        slices = [shard_rows(batch, r, world_size) for r in range(world_size)]
        assert slices[0].start == 0 and slices[-1].stop == batch
        assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))  # contiguous, in rank order
        sizes = [s.stop - s.start for s in slices]
        assert max(sizes) - min(sizes) <= 1


def test_context_from_torchrun_environment():
    assert context_from_env({}) == DistContext(0, 1, 0)
    ctx = context_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.enabled, ctx.is_main) == (3, 4, 1, True, False)
    with pytest.raises(ConfigError):
        context_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError):
        context_from_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_device_selection():
    single, worker = DistContext(), DistContext(rank=3, world_size=4, local_rank=1)
    assert device_for("auto", single, cuda_available=False) == torch.device("cpu")
    assert device_for("auto", single, cuda_available=True) == torch.device("cuda")
    assert device_for("auto", worker, cuda_available=True) == torch.device("cuda", 1)  # one GPU per process
    assert device_for("cpu", worker, cuda_available=True) == torch.device("cpu")  # gloo on CPUs
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        device_for("cuda", single, cuda_available=False)


@pytest.mark.parametrize("dynamic", [False, True])
def test_shards_reassemble_the_single_process_batches(dynamic):
    gen_images = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (23, 1, 4, 4), dtype=torch.uint8, generator=gen_images),
                  torch.arange(23))
    order = torch.randperm(23, generator=torch.Generator().manual_seed(1))

    def batches(rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(2)  # every rank holds the same generator state
        return list(iterate_batches(split, 5, shuffle=True, order=order, generator=gen, dynamic_binarize=dynamic,
                                    shard=(rank, world)))

    single = batches(0, 1)
    shards = [batches(r, 3) for r in range(3)]
    assert len(single) == 5
    for i, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([s[i][0] for s in shards]), x)
        assert torch.equal(torch.cat([s[i][1] for s in shards]), y)
    if dynamic:
        assert set(torch.cat([x for x, _ in single]).unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_rank_losses_average_to_the_global_batch_gradient(objective):
    """What DDP does (average the ranks' gradients) on the StepLoss of each shard equals one
    process's gradient on the whole batch, uneven shards (7 images over 2 ranks) included."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(hidden=[16], latent_dim=3, likelihood="bernoulli", image_shape=[1, 4, 4]))
    x = torch.rand(7, 1, 4, 4)

    def grads(world: int, rank: int) -> list[torch.Tensor]:
        model.zero_grad()
        rows = shard_rows(7, rank, world)
        torch.manual_seed(123)  # the same RNG state on every rank, as after seeding each process
        step = StepLoss(model, OBJECTIVES[objective], 4, DistContext(rank, world, rank))
        loss, _ = step(x[rows], None, 0.7, 7)
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    single = grads(1, 0)
    per_rank = [grads(2, r) for r in range(2)]
    for g, g0, g1 in zip(single, *per_rank):
        torch.testing.assert_close((g0 + g1) / 2, g, rtol=1e-5, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes_match_a_single_process(tmp_path, fake_mnist):
    # 108 training images in global batches of 15: the last batch (3 images) splits 1 + 2.
    flags = ["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--hidden", "32", "--latent-dim", "4",
             "--likelihood", "bernoulli", "--binarize", "dynamic", "--batch-size", "15", "--epochs", "2",
             "--seed", "3", "--device", "cpu", "--quiet"]
    single = tmp_path / "single"
    assert main([*flags, "--out", str(single)]) == 0

    multi = tmp_path / "multi"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "vaelab",
           *flags, "--out", str(multi)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1  # only rank 0 reports

    a, _ = read_safetensors(single / "model.safetensors")
    b, _ = read_safetensors(multi / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    # The weights did move from their initial values (the comparison is not trivially true).
    seed_everything(3)
    initial = VAE(RunConfig.load(single / "config.json").model).state_dict()
    assert max(float((a[k] - initial[k]).abs().max()) for k in a) > 1e-3
    # Rank 0 wrote one full run folder; its training losses are the all-reduced global ones.
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())
    rows_single = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    rows_multi = [json.loads(line) for line in (multi / "metrics.jsonl").read_text().splitlines()]
    assert len(rows_single) == len(rows_multi) == 2
    for r1, r2 in zip(rows_single, rows_multi):
        for key in ("train_loss", "train_recon", "train_kl", "val_loss"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-4), key


def test_torchrun_resume_continues_to_the_single_process_result(tmp_path, fake_mnist):
    """Stop a 2-process job after epoch 1, `--resume` it under torchrun to epoch 2: the weights
    match one process's uninterrupted 2 epochs (and every rank read the same checkpoint)."""
    flags = ["--dataset", "mnist", "--data-dir", str(fake_mnist), "--hidden", "32", "--latent-dim", "4",
             "--likelihood", "bernoulli", "--binarize", "dynamic", "--batch-size", "15", "--seed", "3",
             "--device", "cpu", "--quiet"]
    single = tmp_path / "single"
    assert main(["train", *flags, "--epochs", "2", "--out", str(single)]) == 0

    multi = tmp_path / "multi"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}

    def torchrun(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "vaelab", "train", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    first = torchrun(*flags, "--epochs", "1", "--out", str(multi))
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun("--resume", str(multi), "--epochs", "2", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("run folder:") == 1

    a, _ = read_safetensors(single / "model.safetensors")
    b, _ = read_safetensors(multi / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    rows = [json.loads(line) for line in (multi / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert RunConfig.load(multi / "config.json").train.epochs == 2
