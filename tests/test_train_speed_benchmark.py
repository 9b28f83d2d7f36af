"""benchmarks/train_speed.py's MLP lever table runs on a small generated MNIST-shaped folder: each
lever variant takes a real training step (the table crashed once when the fused step's result grew
a field, unnoticed until a measuring session)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_train_speed():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("train_speed_under_test", BENCHMARKS / "train_speed.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_the_mlp_lever_table_times_every_variant(tmp_path, capsys):
    from conftest import write_idx

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 1000), ("t10k", 20)):  # warm-up takes 5 batches of 128
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    threads = torch.get_num_threads()
    try:
        _load_train_speed().lever_step_times(tmp_path, steps=2, rounds=1)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+(.+?)\s+([0-9.]+) ms/step .*?([0-9.]+)x the fast path$", out, flags=re.M)
    assert len(rows) == 7, out
    assert rows[0][0] == "fast path (default)" and float(rows[0][2]) == 1.0
    assert all(float(ms) > 0 for _, ms, _ in rows)
