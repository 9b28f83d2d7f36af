"""The speed levers of image-model training, each switched alone (used by train_speed.py --levers).

Milliseconds per training step (loss, gradients, Adam) of `vaelab train FLAGS`'s step on real
batches, variants alternating `rounds` times: the default path against each lever alone, then the
compile time of `--compile` in a fresh process with an empty and with a warm compile cache.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

# Run in a child process: the first `--compile` step of the config in argv, timed (seconds).
COMPILE_CHILD = """
import sys, time, torch
sys.path.insert(0, {here!r})
from conv_levers import build
cfg, data, model, _, _ = build(sys.argv[1:])
from vaelab.distributed import DistContext, StepLoss
from vaelab.objectives import OBJECTIVES
from vaelab.optim import make_optimizer
from vaelab.training import _try_compile
started = time.perf_counter()
step = StepLoss(model, OBJECTIVES[cfg.train.objective], 1)
_try_compile(step, data.train, cfg.train, DistContext(), dict(device_type="cpu", enabled=False), False,
             make_optimizer(model, cfg.train))
print(time.perf_counter() - started)
"""


def build(flags: list[str], layout: str | None = None):
    """(cfg, data, model laid out as training does, batches, Adam) for `vaelab train FLAGS`."""
    from vaelab.cli.options import build_config, flag_overrides
    from vaelab.cli.train_cmd import register
    from vaelab.data import load_data
    from vaelab.models import build_model, use_fast_memory_format
    from vaelab.optim import make_optimizer
    from vaelab.training import finalize_config

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    cfg = build_config(None, None, flag_overrides(parser.parse_args(["train", *flags])))
    if layout:
        cfg.model.conv_layout = layout
    data = load_data(cfg.data)
    cfg = finalize_config(cfg, data)
    torch.manual_seed(0)
    model = use_fast_memory_format(build_model(cfg.model), "cpu")
    order = torch.randperm(len(data.train))[: 128 * 8]
    batches = [data.train.images.index_select(0, order[i:i + 128]) / 255.0 for i in range(0, len(order), 128)]
    return cfg, data, model, batches, make_optimizer(model, cfg.train)


def _stepper(model, batches, optimizer, *, bf16=False, compiled=False, torch_adam=False):
    from vaelab.distributed import StepLoss
    from vaelab.objectives import elbo_loss

    step_loss = StepLoss(model, elbo_loss, 1)
    if compiled:
        step_loss = torch.compile(step_loss)
    if torch_adam:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = {"i": 0}

    def step() -> None:
        x = batches[state["i"] % len(batches)]
        state["i"] += 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = step_loss(x, None, 1.0, x.shape[0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def image_lever_table(flags: list[str], steps: int = 20, rounds: int = 3, compile_times: bool = True) -> None:
    """Print ms/step of the default path and of each lever alone, and --compile's start-up cost."""
    cfg, data, model, batches, optimizer = build(flags)
    other = "resize" if cfg.model.conv_layout == "transposed" else "transposed"
    _, _, other_model, _, other_opt = build(flags, layout=other)
    nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    from vaelab.optim import make_optimizer

    threads = torch.get_num_threads()
    variants = {
        f"the default ({cfg.model.conv_layout} layout, channels-last, vaelab Adam, fp32)":
            _stepper(model, batches, optimizer),
        "contiguous (NCHW) weights instead of channels-last": _stepper(nchw, batches, make_optimizer(nchw, cfg.train)),
        "bf16 autocast (--precision bf16)": _stepper(model, batches, optimizer, bf16=True),
        "torch.compile of the step (--compile), after compiling": _stepper(model, batches, optimizer, compiled=True),
        "torch.optim.Adam (its CPU default) instead of vaelab's": _stepper(model, batches, optimizer, torch_adam=True),
        f"the {other} layout instead (another network)": _stepper(other_model, batches, other_opt),
        "1 thread (--threads 1)": None,
    }
    for step in variants.values():
        for _ in range(2 if step is not None else 0):  # warm-up (and compilation)
            step()
    times: dict[str, list[float]] = {k: [] for k in variants}
    default = next(iter(variants))
    for _ in range(rounds):
        for name, step in variants.items():
            if step is None:  # the default step on one thread
                torch.set_num_threads(1)
                step = variants[default]
            started = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - started) / steps * 1e3)
            torch.set_num_threads(threads)
    base = statistics.median(times[default])
    per_epoch = -(-len(data.train) // 128)
    for name, t in times.items():
        ms = statistics.median(t)
        print(f"  {name:62s} {ms:7.1f} ms/step ({ms * per_epoch / 1e3:6.1f} s/epoch)  {ms / base:5.2f}x the default")
    print(f"  (median of {rounds} alternating rounds x {steps} steps, batch 128, {threads} threads)")
    if compile_times:
        here = os.path.dirname(os.path.abspath(__file__))
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
            seconds = []
            for _ in range(2):
                done = subprocess.run([sys.executable, "-c", COMPILE_CHILD.format(here=here), *flags],
                                      capture_output=True, text=True, env=env)
                seconds.append(float(done.stdout.split()[-1]) if done.returncode == 0 else float("nan"))
        print(f"  --compile start-up (first step compiled): {seconds[0]:.1f} s with an empty cache, "
              f"{seconds[1]:.1f} s in the next run (persistent cache, ~/.cache/vaelab/torch-compile by default)")
