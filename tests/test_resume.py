"""Crash-safe training: a run SIGKILLed at several moments and resumed each time ends bit-identical.

Every training process here is a real `python -m vaelab train` subprocess killed with SIGKILL
(no cleanup, no atexit): once deterministically halfway through writing a checkpoint (the
`VAELAB_FAULT_INJECT` hook in `atomic_write_bytes`), once as soon as a checkpoint's temporary
file is seen on disk, and at seeded random moments. The reference is the same command run without
interruption; weights, optimizer and RNG state must agree bit for bit (`torch.equal` on every
tensor of `model.safetensors` and `checkpoint.safetensors`) and `metrics.jsonl` must have each
epoch exactly once with the same numbers (all but the wall-clock `seconds`), even after a line
written past the checkpoint and a line cut short.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vaelab.checkpoint import CHECKPOINT_FILE, FAULT_ENV, WEIGHTS_FILE, checkpoint_position

EPOCHS = 5
TRAIN_IMAGES, BATCH, EVERY = 600, 20, 3  # 540 after the 10% validation split: 27 batches = 9 checkpoints/epoch
BATCHES_PER_EPOCH = 27
TRAIN_FLAGS = ["--dataset", "mnist", "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--hidden", "128,64",
               "--checkpoint-every", str(EVERY), "--threads", "1", "--binarize", "dynamic", "--kl-warmup", "3",
               "--seed", "3", "--quiet"]


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory) -> Path:
    from conftest import write_idx

    rng = np.random.default_rng(1)
    folder = tmp_path_factory.mktemp("idx")
    for prefix, n in (("train", TRAIN_IMAGES), ("t10k", 50)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    return folder


def _start(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop(FAULT_ENV, None)
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-m", "vaelab", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _temp_files(run: Path) -> list[Path]:
    return sorted(run.glob(f".{CHECKPOINT_FILE}.*.tmp"))


def _kill_after_new_checkpoint(proc: subprocess.Popen, run: Path, delay: float) -> None:
    """SIGKILL `delay` s after the process writes its first checkpoint (or when it exits)."""
    before = (run / CHECKPOINT_FILE).stat().st_mtime_ns
    while proc.poll() is None and (run / CHECKPOINT_FILE).stat().st_mtime_ns == before:
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)


def _kill_when_temp_file_appears(proc: subprocess.Popen, run: Path) -> bool:
    """SIGKILL as soon as a checkpoint temp file exists; True if one was seen."""
    while proc.poll() is None:
        if _temp_files(run):
            proc.send_signal(signal.SIGKILL)
            return True
        time.sleep(0.0005)
    return False


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


def test_sigkilled_and_resumed_run_is_bit_identical(tmp_path, idx_folder):
    flags = [*TRAIN_FLAGS, "--data-dir", str(idx_folder)]
    reference, run = tmp_path / "reference", tmp_path / "killed"
    ref_proc = _start([*flags, "--out", str(reference)])

    # 1. Deterministic: killed halfway through writing checkpoint #21 = the end-of-epoch-2 checkpoint
    #    (1 at step 0, then 9 mid-epoch + 1 end-of-epoch per epoch). The metrics line of epoch 2 is
    #    already written, the mid-epoch checkpoint after epoch 2's last batch is the last good one.
    rc, err = _finish(_start([*flags, "--out", str(run)], {FAULT_ENV: f"kill:{CHECKPOINT_FILE}:21"}))
    assert rc == -signal.SIGKILL, err
    assert _temp_files(run), "the kill should leave a half-written temp file behind"
    last_good = checkpoint_position(run / CHECKPOINT_FILE)
    assert (last_good["epoch"], last_good["batch"], last_good["step"]) == (1, BATCHES_PER_EPOCH, 2 * BATCHES_PER_EPOCH)
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    outcomes = ["fault hook: SIGKILL mid-write of checkpoint #21"]
    with open(run / "metrics.jsonl", "a") as handle:  # as if a kill had also cut a metrics line short
        handle.write('{"epoch": 3, "train_lo')

    # 2. Killed the moment a checkpoint's temp file shows up (racy by nature, hence also step 1).
    proc = _start(["--resume", str(run), "--quiet"])
    seen = _kill_when_temp_file_appears(proc, run)
    outcomes.append(f"killed on temp file: seen={seen}, rc={_finish(proc)[0]}")

    # 3. Seeded random moments after the process has made progress (its first new checkpoint).
    rng = random.Random(20261127)
    for _ in range(3):
        proc = _start(["--resume", str(run), "--quiet"])
        _kill_after_new_checkpoint(proc, run, rng.uniform(0.0, 1.2))
        outcomes.append(f"random kill rc={_finish(proc)[0]} at step {checkpoint_position(run / CHECKPOINT_FILE)}")

    rc, err = _finish(_start(["--resume", str(run), "--quiet"]))
    assert rc == 0, err
    assert _finish(ref_proc)[0] == 0
    print("; ".join(outcomes))

    assert not _temp_files(run)
    for name in (WEIGHTS_FILE, CHECKPOINT_FILE):
        want, got = load_file(reference / name), load_file(run / name)
        assert set(want) == set(got), name
        for key in want:
            assert torch.equal(want[key], got[key]), f"{name}:{key}"
    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert rows == _metrics(reference)
