"""Saving and loading: weights in safetensors, everything else in JSON; no pickle anywhere.

Every file is written atomically: a temporary file in the same folder, flushed and fsync'ed, then
renamed over the target. A crash (or a full disk) mid-write leaves the previous file intact; a
failed write is a `RunError` naming the file, and the temporary file is removed (after a SIGKILL
it stays behind, hidden, and `remove_stale_temp_files` clears it on resume).

A training checkpoint is one safetensors file: model weights under `model.*`, Adam's moment
tensors under `optim.<param index>.<name>`, RNG states as uint8 tensors under `rng.*`, and the
rest (epoch, step, schedule position, running sums, Adam's hyper-parameters) as one JSON string
in the file's metadata (one key, so the same state always gives the same bytes). One file means
one atomic rename: weights and state can never disagree. A
checkpoint is never written from non-finite weights (`DivergenceError` instead), so the file on
disk is always the last good state.

The only pickle reader is `import_torch_weights`, for `.pt`/`.pth` state dicts made elsewhere: it
calls `torch.load(weights_only=True)`, whose unpickler builds tensors and plain containers only
and refuses every other global, so a malicious file cannot run code.

Fault injection (tests only): `VAELAB_FAULT_INJECT="kill:<file name>:<n>"` SIGKILLs the process
halfway through the n-th write of that file in this process; `"enospc:<file name>:<n>"` fails
that write with "No space left on device" instead. Unset, it costs one dictionary lookup.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vaelab.errors import DivergenceError, RunError

WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "vaelab-checkpoint-2"
FAULT_ENV = "VAELAB_FAULT_INJECT"
_TEMP_SUFFIX = ".tmp"
_write_counts: dict[str, int] = {}  # file name -> writes so far in this process (fault injection)
_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it) and put back at once
os.umask(_UMASK)


def _injected_fault(path: Path) -> Optional[str]:
    """'kill' or 'enospc' when VAELAB_FAULT_INJECT targets this write of `path`, else None."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    action, _, rest = spec.partition(":")
    name, _, nth = rest.rpartition(":")
    if name != path.name:
        return None
    _write_counts[name] = _write_counts.get(name, 0) + 1
    return action if nth.isdigit() and _write_counts[name] == int(nth) else None


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Write `payload` to `path` via temp file + flush + fsync + rename; RunError if it can't."""
    path = Path(path)
    fault = _injected_fault(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    except OSError as exc:
        raise RunError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
            if fault is not None:
                handle.write(payload[: len(payload) // 2])
                handle.flush()
                os.fsync(handle.fileno())
                if fault == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            kept = f"; the previous {path.name} is unchanged" if path.exists() else ""
            raise RunError(f"cannot write {path}: {exc.strerror or exc}{kept}") from None
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
    """`atomic_write_bytes` of `text` as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete temp files that a killed `atomic_write_bytes` left in `folder`; return them."""
    stale = [p for p in Path(folder).glob(f".*{_TEMP_SUFFIX}")
             if p.is_file() and any(p.name.startswith(f".{n}.") for n in (WEIGHTS_FILE, CHECKPOINT_FILE,
                                                                         "config.json", "metrics.jsonl"))]
    for p in stale:
        p.unlink()
    return stale


def _contiguous_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """The model's state_dict as safetensors, written atomically (what `vaelab.load` reads)."""
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
    """Load `model.safetensors` into `model`; one clear RunError if it doesn't fit."""
    tensors, _ = read_safetensors(path)
    load_state_into(model, tensors, path)


# ---- RNG state <-> tensors / JSON -------------------------------------------------------------

def rng_state(data_generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every RNG a run draws from: torch (CPU, CUDA), the data generator as tensors; NumPy and Python as JSON."""
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
    """Put back what `rng_state` saved."""
    torch.set_rng_state(tensors["rng.torch"])
    data_generator.set_state(tensors["rng.data"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


# ---- training checkpoints ---------------------------------------------------------------------

def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: Any,
                    data_generator: torch.Generator, state: dict[str, Any],
                    extra_tensors: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Write model + optimizer + RNG + loop `state` (JSON-able) into one safetensors file.

    Refuses (DivergenceError, nothing written) when a weight or an Adam moment is non-finite, so
    the file on disk always stays the last good state.
    """
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, slots in opt["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value)
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        epoch = state.get("epoch", 0) + 1 if state.get("batch") else max(state.get("epoch", 0), 1)
        raise DivergenceError(divergence_message(epoch, int(state.get("step", 0)), Path(path),
                                                 what=f"non-finite values in {bad}"))
    rng_tensors, rng_meta = rng_state(data_generator)
    tensors.update(rng_tensors)
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v
    # One metadata key: safetensors stores metadata in a hash map whose order varies from call to
    # call, so several keys would make the same state serialise to different bytes.
    info = {"format": CHECKPOINT_FORMAT, "state": state, "param_groups": opt["param_groups"], "rng": rng_meta}
    atomic_write_bytes(path, st_save(_contiguous_cpu(tensors), metadata={"vaelab": json.dumps(info)}))


def _checkpoint_info(metadata: dict[str, str]) -> Optional[dict[str, Any]]:
    """The JSON part of a checkpoint (format 2: one "vaelab" key; format 1: one key per field)."""
    if "vaelab" in metadata:
        info = json.loads(metadata["vaelab"])
        return info if isinstance(info, dict) and info.get("format") == CHECKPOINT_FORMAT else None
    if metadata.get("format") == "vaelab-checkpoint-1":
        return {k: json.loads(metadata[k]) for k in ("state", "param_groups", "rng")}
    return None


def match_parameter_layouts(optimizer: Any) -> None:
    """Give every per-parameter state tensor (Adam's moments, momentum buffers) its parameter's
    memory layout. A checkpoint stores tensors contiguous, while a conv weight on a CPU is
    channels-last; torch.optim's fused kernels walk parameter, gradient and state as flat arrays,
    so a layout mismatch would pair the wrong elements after a resume."""
    state = getattr(optimizer, "state", None)
    if not isinstance(state, dict):
        return
    for p, slots in state.items():
        if not isinstance(p, torch.Tensor) or not isinstance(slots, dict):
            continue
        for name, value in slots.items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                slots[name] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: Any,
                    data_generator: torch.Generator) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore everything `save_checkpoint` wrote; returns (loop state, extra tensors)."""
    tensors, metadata = read_safetensors(path)
    try:
        info = _checkpoint_info(metadata)
    except (KeyError, ValueError):
        info = None
    if info is None:
        raise RunError(f"{path} is not a vaelab training checkpoint")
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                slots.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": slots, "param_groups": info["param_groups"]})
        match_parameter_layouts(optimizer)
        restore_rng(tensors, info["rng"], data_generator)
        state = info["state"]
        for key in ("epoch", "batch", "step"):
            if not isinstance(state[key], int) or state[key] < 0:
                raise ValueError(f"bad {key} {state[key]!r}")
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise RunError(f"{path} is damaged or does not match config.json ({detail})") from None
    extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return state, extra


def checkpoint_position(path: str | Path) -> Optional[dict[str, Any]]:
    """The loop state (epoch, batch, step) stored in a checkpoint, read from its header only."""
    try:
        with open(path, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            if not 0 < header_len <= 100_000_000:
                return None
            metadata = json.loads(handle.read(header_len)).get("__metadata__") or {}
        info = _checkpoint_info(metadata)
        return None if info is None else info["state"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def divergence_message(epoch: int, step: int, checkpoint_path: Path,
                       what: str = "non-finite loss or gradient") -> str:
    """One line: where training diverged (1-based epoch and step) and the last good checkpoint."""
    where = f"training diverged: {what} at epoch {epoch}, step {step}"
    state = checkpoint_position(checkpoint_path)
    if state is None:
        return f"{where}; no checkpoint was written before it; try a lower --lr or --grad-clip"
    inside = (f"epoch {state['epoch'] + 1} batch {state['batch']}" if state.get("batch")
              else f"the end of epoch {state['epoch']}" if state.get("epoch") else "the start of training")
    return (f"{where}; the last good checkpoint {checkpoint_path} (step {state.get('step')}, {inside}) "
            f"is intact; try a lower --lr or --grad-clip")


# ---- importing weights made elsewhere ---------------------------------------------------------

def import_torch_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.pt`/`.pth` state dict with `torch.load(weights_only=True)`: tensors only, no code.

    Accepts a flat {name: tensor} dict, or one nested under "state_dict" / "model" (common
    trainer layouts); a "module." prefix (DataParallel) is dropped. Anything else is a RunError.
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"weights file not found: {path}")
    try:
        # weights_only=True: the restricted unpickler rebuilds tensors and plain containers and
        # raises on any other global (os.system, exec, ...), so a hostile file never runs code.
        with warnings.catch_warnings():  # its protocol warnings would break the CLI's one-line errors
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the restricted unpickler raises many types; all mean "refused"
        raise RunError(f"{path} was refused: it is not a plain PyTorch state dict ({_refusal_reason(exc)}); "
                       "nothing in it was run") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise RunError(f"{path} holds {type(obj).__name__}, not a state dict of named tensors")
    tensors: dict[str, torch.Tensor] = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise RunError(f"{path}: entry {name!r} is not a named tensor")
        tensors[name.removeprefix("module.")] = value
    return tensors


def _refusal_reason(exc: Exception) -> str:
    """The informative part of torch.load's long weights_only error, on one line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it needs the Python object {found.group(1)}, which a weights-only load never calls"
    found = re.search(r"Unsupported (operand|class)[^\n.]*", text)
    if found:
        return f"{found.group(0).strip()} in its pickle stream"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or not re.search(r"[A-Za-z]{3}", lines[0]):  # e.g. a bare bad magic number
        return "unrecognised file format"
    return lines[0][:200]


def load_state_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """`model.load_state_dict(strict=True)` with a one-line RunError naming the first mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise RunError(f"{source} does not match the model in config.json ({detail}; "
                       f"{len(missing)} missing, {len(unexpected)} unexpected)")
    for name, value in tensors.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise RunError(f"{source} does not match the model in config.json ({name} has shape "
                           f"{tuple(value.shape)}, the model needs {tuple(expected[name].shape)})")
        if value.is_floating_point() != expected[name].is_floating_point() or (
                value.is_floating_point() and not bool(torch.isfinite(value).all())):
            raise RunError(f"{source}: {name} is not a finite {expected[name].dtype} tensor")
    model.load_state_dict(tensors, strict=True)
