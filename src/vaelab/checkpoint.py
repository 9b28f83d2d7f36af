"""Saving and loading: weights in safetensors, everything else in JSON; no pickle anywhere.

Every file is written atomically: a temporary file in the same folder, flushed and fsync'ed, then
renamed over the target. A crash (or a full disk) mid-write leaves the previous file intact.

A training checkpoint is one safetensors file: model weights under `model.*`, Adam's moment
tensors under `optim.<param index>.<name>`, RNG states as uint8 tensors under `rng.*`, and the
rest (epoch, step, schedule position, running sums, Adam's hyper-parameters) as JSON in the
file's metadata. One file means one atomic rename: weights and state can never disagree.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vaelab.errors import RunError

WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Write `payload` to `path` via temp file + flush + fsync + rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _contiguous_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    atomic_write_bytes(path, st_save(_contiguous_cpu(model.state_dict())))


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata from a safetensors file; clear error if it is not one."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"file not found: {path}") from None
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is not a valid safetensors file ({exc})") from None
    return tensors, metadata


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    tensors, _ = read_safetensors(path)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "shape mismatch"
        raise RunError(f"{path} does not match the model in config.json ({first})") from None


# ---- RNG state <-> tensors / JSON -------------------------------------------------------------

def rng_state(data_generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state(), "rng.data": data_generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any], data_generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    data_generator.set_state(tensors["rng.data"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


# ---- training checkpoints ---------------------------------------------------------------------

def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    data_generator: torch.Generator, state: dict[str, Any],
                    extra_tensors: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Write model + optimizer + RNG + loop `state` (JSON-able) into one safetensors file."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, slots in opt["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value)
    rng_tensors, rng_meta = rng_state(data_generator)
    tensors.update(rng_tensors)
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v
    metadata = {
        "state": json.dumps(state),
        "param_groups": json.dumps(opt["param_groups"]),
        "rng": json.dumps(rng_meta),
        "format": "vaelab-checkpoint-1",
    }
    atomic_write_bytes(path, st_save(_contiguous_cpu(tensors), metadata=metadata))


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    data_generator: torch.Generator) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore everything `save_checkpoint` wrote; returns (loop state, extra tensors)."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != "vaelab-checkpoint-1":
        raise RunError(f"{path} is not a vaelab training checkpoint")
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                slots.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": slots, "param_groups": json.loads(metadata["param_groups"])})
        restore_rng(tensors, json.loads(metadata["rng"]), data_generator)
        state = json.loads(metadata["state"])
    except (KeyError, RuntimeError, ValueError, json.JSONDecodeError) as exc:
        raise RunError(f"{path} is damaged or does not match config.json ({str(exc).splitlines()[0]})") from None
    extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return state, extra
