"""Exact resume with a learned std and with the sigma-VAE's estimated std: a run SIGKILLed halfway
through writing a mid-epoch checkpoint and resumed ends bit-identical to the same run uninterrupted,
the estimated std's running sums included (the helpers are tests/test_resume.py's)."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_resume import _finish, _start, _temp_files
from vaelab.checkpoint import CHECKPOINT_FILE, FAULT_ENV, WEIGHTS_FILE, checkpoint_position

EPOCHS, BATCH, EVERY = 3, 20, 4  # 270 training images: 14 batches per epoch, a checkpoint every 4 steps


@pytest.fixture(scope="module")
def grey_idx(tmp_path_factory):
    from conftest import write_idx

    rng = np.random.default_rng(2)
    folder = tmp_path_factory.mktemp("idx")
    for prefix, n in (("train", 300), ("t10k", 30)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("variance", ["optimal", "learned"])
def test_killed_mid_epoch_and_resumed_is_bit_identical(variance, tmp_path, grey_idx):
    flags = ["--dataset", "mnist", "--data-dir", str(grey_idx), "--epochs", str(EPOCHS), "--batch-size", str(BATCH),
             "--hidden", "32,16", "--latent-dim", "4", "--likelihood", "gaussian", "--gaussian-variance", variance,
             "--gaussian-std", "0.3", "--checkpoint-every", str(EVERY), "--threads", "1", "--seed", "5", "--quiet"]
    reference, run = tmp_path / "reference", tmp_path / "killed"
    ref_proc = _start([*flags, "--out", str(reference)])
    # Checkpoints: #1 at step 0, #2-#4 mid-epoch 1, #5 its end, #6 at step 16 (2 batches into epoch 2),
    # #7 at step 20. Killed halfway through writing #7: the last good one is mid-epoch.
    rc, err = _finish(_start([*flags, "--out", str(run)], {FAULT_ENV: f"kill:{CHECKPOINT_FILE}:7"}))
    assert rc == -signal.SIGKILL, err
    assert _temp_files(run)
    position = checkpoint_position(run / CHECKPOINT_FILE)
    assert (position["epoch"], position["batch"], position["step"]) == (1, 2, 16)
    saved = load_file(run / CHECKPOINT_FILE)
    if variance == "optimal":  # the epoch's running sums of squared errors are part of the checkpoint
        assert float(saved["model.likelihood.count"]) == 2 * BATCH * 784
        assert float(saved["model.likelihood.sq_sum"]) > 0
        assert float(saved["model.likelihood.variance"]) != pytest.approx(0.09)  # set at epoch 1's end
    else:
        assert float(saved["model.likelihood.log_std"]) != pytest.approx(np.log(0.3))  # trained
    rc, err = _finish(_start(["--resume", str(run), "--quiet"]))
    assert rc == 0, err
    assert _finish(ref_proc)[0] == 0
    for name in (WEIGHTS_FILE, CHECKPOINT_FILE):
        want, got = load_file(reference / name), load_file(run / name)
        assert set(want) == set(got), name
        for key in want:
            assert torch.equal(want[key], got[key]), f"{name}:{key}"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    for row in rows + ref_rows:
        row.pop("seconds")
    assert rows == ref_rows and [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
