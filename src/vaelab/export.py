"""Export a trained model's decoder and/or encoder to ONNX or TorchScript, to run without vaelab.

Graphs (batch size B is dynamic; labels only for conditional models, int64 in 0..classes-1):
    decoder: z (B, D) float32 [, y (B,) int64] -> param (B, C, H, W)  the likelihood's parameter
                                                                  (logits or mean; = model.decode)
                                                  image (B, C, H, W)  the expected image in [0, 1]
                                                                  (= model.decode_images)
    encoder: x (B, C, H, W) float32 in [0, 1] [, y (B,) int64] -> mean (B, D), log_var (B, D)
                                                                  (= model.encode(x, y).mean / .log_var)
Files: `<out>/{decoder,encoder}.onnx` (run with onnxruntime) or `.pt` (`torch.jit.load`), plus
`<out>/export.json` describing every file written there (inputs, outputs, the check below). Every
exported graph is run once on a batch of a different size from the one it was traced with and
compared with vaelab's own output; the largest absolute difference is recorded in `export.json`.

ONNX uses PyTorch's `torch.export`-based exporter (needs onnx + onnxscript; checked with
onnxruntime): `pip install 'vaelab[export]'`. TorchScript needs nothing extra (`torch.jit.trace`,
which PyTorch now marks deprecated but still supports; prefer ONNX for new deployments).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from vaelab.checkpoint import atomic_write_text
from vaelab.errors import RunError, VaelabError

EXPORT_DIR = "export"
MANIFEST_FILE = "export.json"
TRACE_BATCH = 2  # example batch used to trace; the check runs a different size
CHECK_BATCH = 5
MAX_CHECK_DIFF = 1e-4  # a larger difference means the exported graph is wrong, not just rounded


class ExportError(VaelabError):
    """A model cannot be exported (missing optional package, failed export or check)."""


def _one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(B,) int64 -> (B, num_classes); written with a comparison so every exporter can trace it."""
    return (y.unsqueeze(-1) == torch.arange(num_classes, device=y.device)).to(dtype)


class DecoderGraph(nn.Module):
    """z (B, D) [, y (B,)] -> (param, image), both (B, C, H, W): the model's decode path, graph-friendly.

    A hierarchical model's code is [z_1 | ... | z_L]; its likelihood reads the bottom layer z_1 only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.likelihood = model.likelihood
        self.num_classes = int(model.num_classes)
        self.bottom = int(getattr(model, "layer_sizes", (model.latent_dim,))[0])  # D for one layer

    def forward(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        cond = _one_hot(y, self.num_classes, z.dtype) if y is not None else None
        param = self.likelihood.param(self.decoder(z[..., : self.bottom], cond))
        return param, self.likelihood.mean(param)


class EncoderGraph(nn.Module):
    """x (B, C, H, W) [, y (B,)] -> (mean, log_var), both (B, D): the posterior's `mean` (the code
    the latent tools use: for an IAF posterior the flow's image of the base mean, for the
    hierarchical VAE the zero-noise top-down pass) and `log_var` (clamped as in `DiagonalGaussian`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_classes = int(model.num_classes)

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        cond = _one_hot(y, self.num_classes, x.dtype) if y is not None else None
        q = self.model.encode_with_condition(x, cond)
        return q.mean, q.log_var


@dataclass(frozen=True)
class Part:
    """One exportable half of the VAE: its graph, input names/example, output names and reference."""

    graph: Callable[[nn.Module], nn.Module]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    example: Callable[[nn.Module, int, torch.Generator], torch.Tensor]  # model, batch, generator -> first input
    reference: Callable[..., tuple[torch.Tensor, ...]]  # vaelab's own answer for the same inputs


def _decoder_reference(model: nn.Module, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
    param = model.decode(z, y)
    return param, model.likelihood.mean(param)


def _encoder_reference(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
    q = model.encode(x, y)
    return q.mean, q.log_var


PARTS: dict[str, Part] = {
    "decoder": Part(DecoderGraph, ("z", "y"), ("param", "image"),
                    lambda m, b, g: torch.randn(b, m.latent_dim, generator=g), _decoder_reference),
    "encoder": Part(EncoderGraph, ("x", "y"), ("mean", "log_var"),
                    lambda m, b, g: torch.rand(b, *m.image_shape, generator=g), _encoder_reference),
}


# ---- formats: write a graph, and run a written file (for the check) -----------------------------

def _onnx_write(graph: nn.Module, inputs: tuple[torch.Tensor, ...], names: tuple[str, ...],
                outputs: tuple[str, ...], path: Path) -> None:
    batch = torch.export.Dim("batch")
    with _quiet():
        torch.onnx.export(graph, inputs, str(path), dynamo=True, input_names=list(names), output_names=list(outputs),
                          dynamic_shapes={name: {0: batch} for name in names}, external_data=False, verbose=False)


def _onnx_run(path: Path, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    results = session.run(None, {name: t.numpy() for name, t in feeds.items()})
    return [torch.from_numpy(r) for r in results]


def _torchscript_write(graph: nn.Module, inputs: tuple[torch.Tensor, ...], names: tuple[str, ...],
                       outputs: tuple[str, ...], path: Path) -> None:
    with _quiet():
        traced = torch.jit.trace(graph, inputs, check_trace=False)
        torch.jit.save(traced, str(path))


def _torchscript_run(path: Path, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with _quiet():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return list(module(*feeds.values()))


@dataclass(frozen=True)
class Format:
    """An export format: file suffix, the optional packages it needs, writer and runner."""

    suffix: str
    requires: tuple[str, ...]
    min_torch: tuple[int, int]
    write: Callable[..., None]
    run: Callable[[Path, dict[str, torch.Tensor]], list[torch.Tensor]]
    how_to_run: str


FORMATS: dict[str, Format] = {
    "onnx": Format(".onnx", ("onnx", "onnxscript", "onnxruntime"), (2, 6), _onnx_write, _onnx_run,
                   "onnxruntime.InferenceSession(path).run(None, {input name: array})"),
    "torchscript": Format(".pt", (), (2, 1), _torchscript_write, _torchscript_run,
                          "torch.jit.load(path)(*inputs)"),
}


def require_format(fmt: str) -> Format:
    """The `Format` named `fmt`; a one-line `ExportError` if it is unknown or its packages are missing."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    missing = [name for name in spec.requires if _missing(name)]
    if missing:
        raise ExportError(f"--format {fmt} needs {', '.join(missing)}: pip install 'vaelab[export]'")
    have = tuple(int(v) for v in torch.__version__.split(".")[:2])
    if have < spec.min_torch:
        raise ExportError(f"--format {fmt} needs PyTorch >= {'.'.join(map(str, spec.min_torch))} "
                          f"(this is {torch.__version__})")
    return spec


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken install
        return True


@contextmanager
def _quiet():
    """Silence the exporters' deprecation notes and registry chatter; real errors still raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ---- the export itself -------------------------------------------------------------------------

def export_model(model: nn.Module, out_dir: str | Path, fmt: str = "onnx", parts: tuple[str, ...] = ("decoder",),
                 seed: int = 0) -> dict[str, Any]:
    """Export `parts` of a trained VAE to `out_dir` in format `fmt`; check each; return the manifest.

    The manifest (merged into `out_dir/export.json`) lists each written file's part, format,
    inputs and outputs with shapes, and `max_abs_diff`, the largest difference from vaelab's own
    output on a check batch of another size than the traced one.
    """
    spec = require_format(fmt)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ExportError(f"unknown part '{unknown[0]}'; choose from {', '.join(PARTS)}")
    model = model.to("cpu").float().eval()
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create export folder {out_dir}: {exc.strerror or exc}") from None
    generator = torch.Generator().manual_seed(seed)
    manifest: dict[str, Any] = {
        "latent_dim": int(model.latent_dim), "image_shape": list(model.image_shape),
        "num_classes": int(model.num_classes), "likelihood": model.likelihood.name, "files": {},
    }
    manifest["files"] = _earlier_files(out_dir / MANIFEST_FILE, manifest)
    for name in parts:
        part = PARTS[name]
        path = out_dir / f"{name}{spec.suffix}"
        # Written and checked under a hidden name, renamed only once it passes: a file that fails the
        # check never sits where a user (or an earlier good export) expects a usable one.
        checking = out_dir / f".{name}.checking{spec.suffix}"
        names = part.inputs if model.conditional else part.inputs[:1]
        trace_inputs = _inputs(model, part, TRACE_BATCH, generator)
        try:
            try:
                spec.write(PARTS[name].graph(model).eval(), trace_inputs, names, part.outputs, checking)
            except Exception as exc:  # noqa: BLE001 - exporter failures come in many types; report one line
                raise ExportError(f"exporting the {name} to {fmt} failed: "
                                  f"{str(exc).strip().splitlines()[0]}") from None
            # Check on another batch size: proves the batch dimension is dynamic and the numbers match.
            check_inputs = _inputs(model, part, CHECK_BATCH, generator)
            with torch.inference_mode():
                expected = part.reference(model, *check_inputs)
            got = spec.run(checking, dict(zip(names, check_inputs)))
            diff = max(float((g.float() - e.float()).abs().max()) for g, e in zip(got, expected))
            if not diff <= MAX_CHECK_DIFF:
                kept = f"; {path.name} there is unchanged" if path.exists() else ""
                raise ExportError(f"the exported {name} differs from vaelab's by {diff:.3g} (> {MAX_CHECK_DIFF}), "
                                  f"so it was not written to {out_dir}{kept}")
            os.replace(checking, path)
        except OSError as exc:
            raise RunError(f"cannot write {path}: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(OSError):
                checking.unlink(missing_ok=True)
        manifest["files"][path.name] = {
            "part": name, "format": fmt, "how_to_run": spec.how_to_run,
            "inputs": {n: _describe(t) for n, t in zip(names, check_inputs)},
            "outputs": {n: _describe(t) for n, t in zip(part.outputs, expected)},
            "max_abs_diff": diff,
        }
    atomic_write_text(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _earlier_files(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Entries of an earlier export.json in the same folder for the same model (kept alongside)."""
    try:
        earlier = json.loads(path.read_text())
        same_model = all(earlier.get(k) == manifest[k] for k in ("latent_dim", "image_shape", "num_classes"))
        files = earlier.get("files", {}) if same_model else {}
        return {name: info for name, info in files.items() if (path.parent / name).is_file()}
    except (OSError, ValueError, AttributeError):
        return {}


def _inputs(model: nn.Module, part: Part, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    first = part.example(model, batch, generator)
    if not model.conditional:
        return (first,)
    return first, torch.randint(0, model.num_classes, (batch,), generator=generator)


def _describe(t: torch.Tensor) -> dict[str, Any]:
    return {"shape": ["batch", *t.shape[1:]], "dtype": str(t.dtype).replace("torch.", "")}


def export_run(run_dir: str | Path, fmt: str = "onnx", parts: tuple[str, ...] = ("decoder", "encoder"),
               out_dir: Optional[str | Path] = None) -> tuple[Path, dict[str, Any]]:
    """Export a run folder's model (default into `run_dir/export/`); returns (folder, manifest).

    The format's packages are checked before anything is loaded or written.
    """
    from vaelab.models import require_family
    from vaelab.runs import load

    require_format(fmt)
    model = load(run_dir)
    require_family(model, "vae", "vaelab export")
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / EXPORT_DIR
    return out, export_model(model, out, fmt, parts)
