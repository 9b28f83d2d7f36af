"""Shared by the optimizer / schedule / EMA / early-stopping tests: SIGKILL a real training process
halfway through a mid-epoch checkpoint write, resume it, and compare with an uninterrupted run.

The kill is deterministic (`VAELAB_FAULT_INJECT=kill:checkpoint.safetensors:N` in
vaelab.checkpoint), so the last good checkpoint is always the one before it; the caller checks
where that was. The reference run goes through the same `main(argv)` in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from vaelab.checkpoint import CHECKPOINT_FILE, FAULT_ENV, WEIGHTS_FILE, checkpoint_position
from vaelab.cli import main

REPO = Path(__file__).resolve().parents[1]


def killed_then_resumed(tmp_path: Path, flags: list[str], kill_at: int) -> tuple[Path, Path, dict]:
    """(reference run, killed-and-resumed run, loop state of the checkpoint the resume started from)."""
    reference, run = tmp_path / "reference", tmp_path / "killed"
    assert main(["train", *flags, "--out", str(reference), "--quiet"]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=str(REPO / "src"))
    env[FAULT_ENV] = f"kill:{CHECKPOINT_FILE}:{kill_at}"
    proc = subprocess.run([sys.executable, "-m", "vaelab", "train", *flags, "--out", str(run), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr  # the kill really happened
    state = checkpoint_position(run / CHECKPOINT_FILE)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    return reference, run, state


def assert_same_run(reference: Path, run: Path) -> None:
    """Every tensor of the weights and the last checkpoint bit-identical; the same metrics lines."""
    for name in (WEIGHTS_FILE, CHECKPOINT_FILE):
        want, got = load_file(reference / name), load_file(run / name)
        assert set(want) == set(got), name
        for key in want:
            assert torch.equal(want[key], got[key]), f"{name}:{key}"
    assert metrics(reference) == metrics(run)


def metrics(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock seconds."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
