"""`--compile` that succeeds: the run ends where the eager run ends, and no RNG is disturbed.

The compiled run must (1) really compile (no fall-back warning; dynamo built graphs), (2) survive
the smaller last batch of every epoch and a KL weight that changes every step (a dynamic-shape
recompile for the last batch used to crash the run with a traceback), (3) end at the eager run's
weights, Adam moments and metrics within float tolerance (compiled kernels may sum in another
order), and (4) leave every random stream exactly where the eager run leaves it: the trial
compile restores the RNG it drew from, and the compiled graph draws its posterior noise with
ATen's generator like eager code, so the checkpoints' RNG states are equal bit for bit.

torch.compile on a CPU builds C++ with the system compiler: about 20-60 s here, hence `slow`.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file

from vaelab.cli import main

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")),
                    reason="torch.compile on a CPU needs a C++ compiler")
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_run_equals_the_eager_run_and_leaves_the_rng_alone(tmp_path, fake_mnist, device):
    import torch._dynamo.utils

    # 108 training images in batches of 16: six full batches and a last one of 12, twice.
    flags = ["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--hidden", "16", "--latent-dim", "2",
             "--batch-size", "16", "--epochs", "2", "--kl-warmup", "1", "--seed", "4", "--threads", "1",
             "--device", device, "--quiet"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert main([*flags, "--step", "autograd", "--out", str(eager)]) == 0  # --compile trains with autograd too
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*flags, "--compile", "--out", str(compiled)]) == 0
    assert not [w for w in caught if "--compile" in str(w.message)], "torch.compile fell back to eager"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs_before  # it really compiled

    assert json.loads((compiled / "config.json").read_text())["train"]["compile"] is True
    want, got = load_file(eager / "checkpoint.safetensors"), load_file(compiled / "checkpoint.safetensors")
    assert set(want) == set(got)
    rng_keys = [k for k in want if k.startswith("rng.")]
    assert rng_keys
    for key in want:
        if key in rng_keys:
            assert torch.equal(want[key], got[key]), key  # every random stream exactly where eager left it
        else:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    a, b = load_file(eager / "model.safetensors"), load_file(compiled / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            for run in (eager, compiled)]
    assert len(rows[0]) == len(rows[1]) == 2
    for r0, r1 in zip(*rows):
        for key in ("train_loss", "train_recon", "train_kl", "val_loss", "beta", "lr"):
            assert r1[key] == pytest.approx(r0[key], rel=1e-5), key
