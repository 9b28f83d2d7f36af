"""A 2-process torchrun job (gloo, CPU) in which one rank fails: every process ends, non-zero,
each with exactly one line of its own, within a time limit; no hang, no traceback, no abort.

- Set-up: rank 0 cannot create the run folder (it exists and holds a user's file). Rank 0 says
  why; `first_error` makes rank 1 stop too with one line, instead of waiting for rank 0 forever.
- Mid-run: rank 0's third checkpoint write hits a full disk (the `VAELAB_FAULT_INJECT` hook).
  Rank 1 is then waiting in DDP's gradient all-reduce, which fails once rank 0's connections
  close (and torchrun sends it SIGTERM); it ends with one line saying another rank stopped.

Each rank's stderr is read on its own (torchrun `--redirects 3 --log-dir`), and its exit code
from torchrun's failure report.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_idx
from vaelab.checkpoint import CHECKPOINT_FILE, FAULT_ENV, checkpoint_position

REPO = Path(__file__).resolve().parents[1]
TIME_LIMIT = 240  # seconds for the whole job: generous for a loaded 2-core machine; a hang would never end
ABORT_SIGNS = ("terminate called", "Aborted", "core dumped", "Fatal Python error", "SIGABRT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(2)
    folder = tmp_path_factory.mktemp("mnist")
    for prefix, n in (("train", 80), ("t10k", 20)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    return folder


def torchrun(tmp_path: Path, args: list[str], env_extra: dict[str, str]) -> tuple[subprocess.CompletedProcess,
                                                                                    dict[int, str], dict[int, int]]:
    """Run `torchrun --nproc_per_node 2 -m vaelab ARGS`; (process, stderr per rank, exit code per rank)."""
    logs = tmp_path / "logs"
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"), **env_extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "--log-dir", str(logs),
           "--redirects", "3", "-m", "vaelab", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIME_LIMIT)
    stderr = {rank: next(logs.glob(f"*/attempt_0/{rank}/stderr.log")).read_text() for rank in (0, 1)}
    # torchrun's report: "rank      : 1 (local_rank: 1)" then "exitcode  : 2 (pid: ...)" for each failed rank.
    codes = {int(rank): int(code) for rank, code in
             re.findall(r"rank\s*:\s*(\d+) \(local_rank.*?\n\s*exitcode\s*:\s*(-?\d+)", proc.stderr)}
    return proc, stderr, codes


def assert_each_rank_one_line(proc, stderr: dict[int, str], codes: dict[int, int]) -> None:
    assert proc.returncode != 0
    assert set(codes) == {0, 1}, proc.stderr[-3000:]
    for rank in (0, 1):
        assert codes[rank] > 0, f"rank {rank} exited with {codes[rank]} (a signal, not its own error)"
        lines = stderr[rank].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vaelab: error: "), (rank, stderr[rank][-3000:])
    everything = proc.stderr + "".join(stderr.values())
    assert not [sign for sign in ABORT_SIGNS if sign in everything], everything[-3000:]
    assert "Traceback" not in "".join(stderr.values())


def test_rank_0_failing_at_set_up_stops_both_ranks_with_one_line_each(tmp_path, mnist_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    args = ["train", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--hidden", "16", "--batch-size", "8",
            "--epochs", "1", "--device", "cpu", "--quiet", "--out", str(out)]
    proc, stderr, codes = torchrun(tmp_path, args, {})
    assert_each_rank_one_line(proc, stderr, codes)
    assert "already exists and is not empty" in stderr[0]
    assert "another torchrun process failed to set up" in stderr[1]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_rank_failing_mid_run_stops_both_ranks_with_one_line_each(tmp_path, mnist_dir):
    out = tmp_path / "run"
    # 72 training images in global batches of 8: 9 steps an epoch; checkpoints at step 0, 2, 4 (#3 fails).
    args = ["train", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--hidden", "16", "--batch-size", "8",
            "--epochs", "2", "--checkpoint-every", "2", "--device", "cpu", "--quiet", "--out", str(out)]
    proc, stderr, codes = torchrun(tmp_path, args, {FAULT_ENV: f"enospc:{CHECKPOINT_FILE}:3"})
    assert_each_rank_one_line(proc, stderr, codes)
    assert "No space left on device" in stderr[0] and "unchanged" in stderr[0]
    assert "rank 1 stopped" in stderr[1] and "another torchrun process" in stderr[1]
    assert checkpoint_position(out / CHECKPOINT_FILE)["step"] == 2  # the last good checkpoint, intact
