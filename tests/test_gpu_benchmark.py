"""benchmarks/gpu.py runs end to end on the CPU (`--device cpu --quick`) on tiny generated data, so
the one-shot GPU benchmark is known to work before any GPU time is spent on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.mark.slow  # two tiny trainings, L_100, a torchrun subprocess: ~30 s on one core
def test_gpu_benchmark_runs_on_cpu_quick(tmp_path):
    from conftest import write_idx

    rng = np.random.default_rng(0)
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for prefix, n in (("train", 600), ("t10k", 40)):
        write_idx(mnist / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(mnist / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--data-dir", str(mnist),
                           "--cifar-dir", str(tmp_path / "no-cifar")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for line in ("CPU: ", "MLP 784-400-20 epoch on MNIST:", "conv epoch on MNIST", "ResNet epoch on CIFAR-10",
                 "L_100 of the conv model over 20 MNIST test images", "explorer decode latency",
                 "torchrun, 1 process, 1 MLP epoch on MNIST (cpu): ok", "total: "):
        assert line in out, (line, out)
