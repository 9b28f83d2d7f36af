"""Bit-identical resume after SIGKILL, for every architecture, likelihood, objective, prior,
posterior, optimizer and learning-rate schedule.

One shared check (`killed_and_resumed_equals_uninterrupted`) runs over a matrix built from the
registries themselves (`ARCHITECTURES`, `LIKELIHOODS`, `OBJECTIVES`, `PRIORS`, `POSTERIORS`,
`OPTIMIZERS`, `SCHEDULES`, each chosen through its config key in a `--config` file), so an entry
added later is covered without editing this file; the training switches that change what a step
does (the fused or autograd step, a conditional model, static and dynamic binarisation, KL
warm-up) are spread over the cases.

Each case: a real `python -m vaelab train` process is SIGKILLed halfway through writing its 7th
checkpoint (the `VAELAB_FAULT_INJECT` hook in `atomic_write_bytes`), which lies in the middle of
epoch 2; the kill is asserted (exit status -9, the half-written temp file left behind, the last
good checkpoint one step-window earlier, mid-epoch). `--resume` then finishes the run, which must
equal the same command run without interruption bit for bit: every tensor of
`model.safetensors` and `checkpoint.safetensors` (weights, Adam's moments, RNG states) and every
`metrics.jsonl` row except the wall-clock seconds.

The fast subset (not `slow`) has every registry entry at least once and every switch at least
once; the `slow` subset covers every pair of entries of two registries (and every entry with
every switch) that the config accepts together (all-pairs coverage, `_slow_cases`).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vaelab.checkpoint import CHECKPOINT_FILE, FAULT_ENV, WEIGHTS_FILE, checkpoint_position
from vaelab.cli import main
from vaelab.config import fused_step_fits
from vaelab.likelihoods import LIKELIHOODS
from vaelab.models import ARCHITECTURES, POSTERIORS, PRIORS
from vaelab.objectives import OBJECTIVES
from vaelab.optim import OPTIMIZERS
from vaelab.schedules import SCHEDULES

REPO = Path(__file__).resolve().parents[1]
TRAIN_IMAGES, BATCH, EVERY, EPOCHS = 60, 10, 2, 2  # 54 after the 10% validation split: 6 batches/epoch
# Checkpoint writes: #1 at step 0; epoch 1: steps 2, 4, 6 and its end (#2-#5); epoch 2: step 8 (#6),
# step 10 (#7, killed halfway). The last good one is #6: epoch 2, batch 2.
KILL_AT_WRITE, LAST_GOOD = 7, {"epoch": 1, "batch": 2, "step": 8}
# Each registry and the config key that picks one of its entries: an entry added later to any of
# them is trained, killed and resumed here without editing this file.
REGISTRIES = {"model.arch": ARCHITECTURES, "model.likelihood": LIKELIHOODS, "train.objective": OBJECTIVES,
              "model.prior": PRIORS, "model.posterior": POSTERIORS, "train.optimizer": OPTIMIZERS,
              "train.lr_schedule": SCHEDULES}
# Settings an entry needs beside its name (none unless listed).
ENTRY_SETTINGS = {("train.lr_schedule", "piecewise"): {"train.lr_segments": [[1, 1.0], [1, 0.5]]},
                  ("train.lr_schedule", "step"): {"train.lr_step": 1}}
# Small layers per architecture; an architecture added later gets the generic choice.
HIDDEN = {"mlp": "16", "conv": "4,8", "conv3d": "4,8"}
# The data each architecture trains on: the kind of the `datasets` fixture and its flags (an
# architecture added later gets the 2-D images). VOLUME_FILES volumes split by file give the same
# 54 training samples (6 batches an epoch) as the TRAIN_IMAGES images do.
ARCH_DATA = {"conv3d": "volumes"}
DATA_FLAGS = {"images": ["--dataset", "mnist"],
              "volumes": ["--dataset", "nifti", "--dimensions", "3", "--volume-size", "6,6,6", "--no-cache"]}
VOLUME_FILES = 67
GENERIC_HIDDEN = "8,8"
# Extra flags an objective needs (none unless listed).
OBJECTIVE_FLAGS = {"iwae": ["--iw-samples-train", "2"]}
# Other registries' entries an entry needs (set in its cases; cross-product cases without them are left out):
# beta-TC splits the closed-form per-dimension KL of a diagonal posterior against N(0, I).
ENTRY_REQUIRES = {("train.objective", "beta-tc"): {"model.prior": "normal", "model.posterior": "diagonal"}}


def with_requirements(choice: dict) -> dict:
    """`choice` with what its entries need (ENTRY_REQUIRES)."""
    out = dict(choice)
    for entry in choice.items():
        out.update(ENTRY_REQUIRES.get(entry, {}))
    return out


# Switches an entry refuses (dropped from its cases): the VampPrior's pseudo-inputs carry no label.
UNCONDITIONAL = {"vamp": ("--conditional",)}
# The training switches, each a list of flags; spread round-robin over the cases.
SWITCHES = {
    "dynamic+warmup": ["--binarize", "dynamic", "--kl-warmup", "1.5"],
    "conditional+static": ["--conditional", "--binarize", "static"],
    "autograd+conditional+warmup": ["--step", "autograd", "--conditional", "--kl-warmup", "1"],
    "plain": [],
}
# The registry entries the hand-derived step covers (an autograd case must be one of them, so that
# choosing autograd is a choice); the rest of the rule is config.fused_step_fits.
FUSED_CHOICES = {"model.arch": "mlp", "train.objective": "elbo", "model.prior": "normal", "model.posterior": "diagonal"}

Case = tuple[tuple[tuple[str, str], ...], str]  # ((config key, registry entry), ...), switch


def case_settings(case: Case) -> dict:
    """The case as dotted config keys (what `--config` files and flags set)."""
    settings = dict(case[0])
    for choice in case[0]:
        settings.update(ENTRY_SETTINGS.get(choice, {}))
    return settings


def data_kind(case: Case) -> str:
    """Which data the case's architecture trains on ("images" or "volumes")."""
    return ARCH_DATA.get(dict(case[0])["model.arch"], "images")


def case_flags(case: Case, folder: Path) -> list[str]:
    """The command-line flags of a case: its registry choices in a TOML file, the switches as flags."""
    settings, switch = case_settings(case), case[1]
    tables: dict[str, list[str]] = {}
    for key, value in settings.items():
        section, name = key.split(".")
        tables.setdefault(section, []).append(f"{name} = {json.dumps(value)}")  # JSON scalars and lists are TOML
    config = folder / "case.toml"
    config.write_text("".join(f"[{section}]\n" + "\n".join(lines) + "\n" for section, lines in tables.items()))
    switches = [flag for flag in SWITCHES[switch] if flag not in UNCONDITIONAL.get(settings["model.prior"], ())]
    return ["--config", str(config), "--hidden", HIDDEN.get(settings["model.arch"], GENERIC_HIDDEN),
            *OBJECTIVE_FLAGS.get(settings["train.objective"], []), *switches]


def _fast_cases() -> list[Case]:
    """Every entry of every registry and every switch at least once, in as few cases as that takes."""
    entries = {key: list(registry) for key, registry in REGISTRIES.items()}
    switches = [s for s in SWITCHES if s != "plain"]
    cases = []
    for i in range(max(len(switches), *(len(v) for v in entries.values()))):
        choice = {key: values[i % len(values)] for key, values in entries.items()}
        switch = switches[i % len(switches)]
        if "autograd" in switch:  # the autograd/fused choice only exists where the fused step could run
            choice.update(FUSED_CHOICES)
        cases.append((tuple(with_requirements(choice).items()), switch))
    # An entry the autograd cases' fixed choices displaced gets a case of its own.
    for key, values in entries.items():
        for value in values:
            if not any(dict(c)[key] == value for c, _ in cases):
                choice = with_requirements({k: v[0] for k, v in entries.items()} | {key: value})
                cases.append((tuple(choice.items()), "plain"))
    # The fused step is the default wherever it applies: at least one case must train with it.
    if not any(all(dict(c)[k] == v for k, v in FUSED_CHOICES.items()) and "autograd" not in s for c, s in cases):
        choice = {key: values[0] for key, values in entries.items()} | FUSED_CHOICES
        cases.append((tuple(choice.items()), "plain"))
    return cases


def _pairs(choice: dict) -> set:
    return set(itertools.combinations(sorted(choice.items()), 2))


def _dimensions() -> dict[str, list[str]]:
    """Every registry's entries and the switches: the dimensions of the matrix."""
    return {**{key: list(registry) for key, registry in REGISTRIES.items()},
            "switch": [s for s in SWITCHES if s != "plain"]}


def _accepted(choice: dict) -> bool:
    """Whether the config accepts a combination (with "switch" one of SWITCHES)."""
    settings = {k: v for k, v in choice.items() if k != "switch"}
    if with_requirements(settings) != settings:
        return False  # a combination the config refuses
    fused = all(settings[k] == v for k, v in FUSED_CHOICES.items())
    return fused or "autograd" not in choice["switch"]  # the autograd choice exists only where fused could run


def _slow_cases() -> list[Case]:
    """All-pairs coverage of the registries and switches: every pair of entries of two registries
    (and every entry with every switch) that the config accepts together is trained, killed and
    resumed in at least one case, beyond the fast cases. The full cross product (over 10,000
    combinations) would take hours; interactions between components are pairwise in practice,
    and a pair that breaks resume fails here. Greedy: each case takes the accepted combination
    that covers the most pairs not covered yet, searched in a seeded sample of the product."""
    return _slow_cases_cached()


@functools.lru_cache(maxsize=1)
def _slow_cases_cached() -> list[Case]:
    import random

    dims = _dimensions()
    product = list(itertools.product(*dims.values()))
    pool = [c for c in (dict(zip(dims, v)) for v in random.Random(0).sample(product, 2500)) if _accepted(c)]
    pairs = [_pairs(c) for c in pool]
    uncovered = set().union(*pairs)  # the sample holds every pair the config accepts (checked by a test)
    for case, switch in _fast_cases():
        uncovered -= _pairs(dict(case) | {"switch": switch})
    cases: list[Case] = []
    while uncovered:
        i = max(range(len(pool)), key=lambda j: len(pairs[j] & uncovered))
        uncovered -= pairs[i]
        cases.append((tuple((k, pool[i][k]) for k in REGISTRIES), pool[i]["switch"]))
    return cases


def _id(case: Case) -> str:
    return "-".join([value for _, value in case[0]] + [case[1]])


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory) -> Path:
    from conftest import write_idx

    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("idx")
    for prefix, n in (("train", TRAIN_IMAGES), ("t10k", 20)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    return folder


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, idx_folder) -> dict[str, list[str]]:
    """Data kind -> the flags that train on it: the IDX images, or VOLUME_FILES small NIfTI volumes
    in two class folders (labelled, for the conditional cases), made on first use."""

    class Kinds(dict):
        def __missing__(self, kind: str) -> list[str]:
            if kind != "volumes":
                raise KeyError(kind)
            nib = pytest.importorskip("nibabel")
            rng = np.random.default_rng(8)
            folder = tmp_path_factory.mktemp("volumes")
            for i in range(VOLUME_FILES):
                (folder / "ab"[i % 2]).mkdir(exist_ok=True)
                volume = rng.integers(0, 1000, (6, 6, 6)).astype(np.int16)
                nib.save(nib.Nifti1Image(volume, np.eye(4)), str(folder / "ab"[i % 2] / f"v{i:02d}.nii.gz"))
            self[kind] = [*DATA_FLAGS[kind], "--data-dir", str(folder)]
            return self[kind]

    return Kinds(images=[*DATA_FLAGS["images"], "--data-dir", str(idx_folder)])


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


@pytest.fixture
def no_figures(monkeypatch):
    """The in-process runs skip the final figures (about 2 s each; they play no part in resuming)."""
    import vaelab.plots

    monkeypatch.setattr(vaelab.plots, "write_run_figures", lambda *args, **kwargs: [])


def killed_and_resumed_equals_uninterrupted(tmp_path: Path, data: list[str], flags: list[str]) -> None:
    common = ["train", *data, "--epochs", str(EPOCHS),
              "--batch-size", str(BATCH), "--latent-dim", "3", "--checkpoint-every", str(EVERY), "--threads", "1",
              "--seed", "5", "--quiet", *flags]
    reference, run = tmp_path / "reference", tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=str(REPO / "src"),
               **{FAULT_ENV: f"kill:{CHECKPOINT_FILE}:{KILL_AT_WRITE}"})
    # The process to kill runs while the uninterrupted reference trains here, in this process.
    child = subprocess.Popen([sys.executable, "-m", "vaelab", *common, "--out", str(run)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert main([*common, "--out", str(reference)]) == 0
    _, err = child.communicate(timeout=180)

    # The kill really happened, halfway through a mid-epoch checkpoint write.
    assert child.returncode == -signal.SIGKILL, err[-2000:]
    assert list(run.glob(f".{CHECKPOINT_FILE}.*.tmp")), "SIGKILL mid-write leaves the half-written temp file"
    position = checkpoint_position(run / CHECKPOINT_FILE)
    assert {k: position[k] for k in LAST_GOOD} == LAST_GOOD
    assert not (run / WEIGHTS_FILE).exists()
    assert [r["epoch"] for r in _metrics(run)] == [1]

    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert not list(run.glob(".*.tmp"))
    for name in (WEIGHTS_FILE, CHECKPOINT_FILE):
        want, got = load_file(reference / name), load_file(run / name)
        assert set(want) == set(got), name
        for key in want:
            assert torch.equal(want[key], got[key]), f"{name}:{key}"
    assert _metrics(run) == _metrics(reference)
    assert [r["epoch"] for r in _metrics(run)] == list(range(1, EPOCHS + 1))


@pytest.mark.parametrize("case", _fast_cases(), ids=_id)
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, datasets, no_figures, case):
    killed_and_resumed_equals_uninterrupted(tmp_path, datasets[data_kind(case)], case_flags(case, tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("case", _slow_cases(), ids=_id)
def test_sigkill_resume_over_every_pair_of_registry_entries(tmp_path, datasets, no_figures, case):
    killed_and_resumed_equals_uninterrupted(tmp_path, datasets[data_kind(case)], case_flags(case, tmp_path))


def test_the_matrix_covers_every_registry_entry_and_both_steps(tmp_path):
    """The fast cases alone name every entry of every registry and every switch, and train with
    the fused step in one case and autograd in another (checked with the config's own rule)."""
    from vaelab.cli import build_parser
    from vaelab.cli.options import build_config, flag_overrides

    fast = _fast_cases()
    # All-pairs: every pair of entries the config accepts together is in some case.
    dims = _dimensions()
    accepted_pairs = set().union(*(_pairs(c) for c in (dict(zip(dims, v)) for v in itertools.product(*dims.values()))
                                   if _accepted(c)))
    covered = set().union(*(_pairs(dict(case) | {"switch": switch}) for case, switch in fast + _slow_cases()))
    assert accepted_pairs <= covered, sorted(accepted_pairs - covered)[:5]
    for key, registry in REGISTRIES.items():
        assert {dict(choice)[key] for choice, _ in fast} == set(registry), key
    assert {switch for _, switch in fast} >= {s for s in SWITCHES if s != "plain"}
    steps = set()
    for case in fast + _slow_cases():
        args = build_parser().parse_args(["train", *case_flags(case, tmp_path), *DATA_FLAGS[data_kind(case)]])
        cfg = build_config(None, args.config, flag_overrides(args))
        assert all(cfg.to_dict()[k.split(".")[0]][k.split(".")[1]] == v for k, v in case_settings(case).items())
        steps.add("fused" if cfg.train.step != "autograd" and fused_step_fits(cfg) else "autograd")
    assert steps == {"fused", "autograd"}
