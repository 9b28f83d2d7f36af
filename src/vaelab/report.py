"""One self-contained HTML report of a run: config, metrics, loss curves, latent figures, eval.json.

Everything is inlined (figures as base64 PNG data URIs, CSS in one <style> element, no script),
so the page opens from disk with no network and refers to nothing outside itself. The figures are
drawn into a temporary folder; the run folder gains only `report.html`.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from vaelab import __version__
from vaelab.errors import DataError, RunError
from vaelab.runs import METRICS_FILE, read_metrics

if TYPE_CHECKING:
    from vaelab.data import ImageData
    from vaelab.models import VAE

REPORT_FILE = "report.html"
MAX_METRIC_ROWS = 60  # longer runs show an even subsample of epochs (the last one always)
CLASS_MEAN_IMAGES = 10_000

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9em; margin-top: 0.3em; } code { background: #f4f4f4; padding: 0 0.2em; }
.note { background: #fff8e1; border-left: 4px solid #f0c040; padding: 0.4em 0.8em; }
"""


@dataclass
class ReportFigure:
    """One figure of the HTML report: a title, a caption and the PNG bytes."""
    title: str
    caption: str  # plain text; escaped when rendered
    png: bytes


def write_report(run_dir: str | Path, out: Optional[str | Path] = None, *, data_dir: Optional[str] = None,
                 device: str = "cpu", seed: int = 0) -> Path:
    """Render the report of `run_dir` and write it to `out` (default RUN/report.html); return the path."""
    from vaelab.checkpoint import atomic_write_text
    from vaelab.runlock import run_lock_for_output

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / REPORT_FILE
    # Written inside the run: one writer per run folder (the report then shows one consistent state).
    with run_lock_for_output(run_dir, out, "vaelab report"):
        page = render_report(run_dir, data_dir=data_dir, device=device, seed=seed)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, page)
        except OSError as exc:
            raise RunError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def render_report(run_dir: str | Path, *, data_dir: Optional[str] = None, device: str = "cpu", seed: int = 0) -> str:
    """The report of `run_dir` as one HTML document (a string)."""
    from vaelab.models import require_family
    from vaelab.runs import load
    from vaelab.training import pick_device

    run_dir = Path(run_dir)
    model = load(run_dir, pick_device(device))
    require_family(model, "vae", "vaelab report")
    cfg = model.run_config
    notes: list[str] = []
    data = _load_data(cfg, data_dir, notes)
    metrics = read_metrics(run_dir / METRICS_FILE)
    with tempfile.TemporaryDirectory() as tmp:
        figures = _figures(model, run_dir, data, metrics, Path(tmp), seed, notes)
    eval_path = run_dir / "eval.json"
    evaluation = None
    if eval_path.is_file():
        try:
            evaluation = json.loads(eval_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            notes.append(f"eval.json could not be read: {exc}")

    m = cfg.model
    latent = (f"latent {m.latent_dim}" if m.stochastic_layers == 1
              else f"{m.stochastic_layers} latent layers {','.join(map(str, m.layer_sizes()))}")
    components = [f"{m.prior} prior"] if m.prior != "normal" else []
    components += [f"{m.posterior} posterior ({m.flow_steps} steps)"] if m.posterior != "diagonal" else []
    facts = (f"{cfg.data.dataset} · {m.arch} {','.join(map(str, m.hidden))} · {latent} · "
             + "".join(f"{c} · " for c in components)
             + f"{m.likelihood} likelihood" + (" · conditional" if m.conditional else "")
             + f" · {len(metrics)} epochs")
    parts = [f"<h1>vaelab report: {_e(run_dir.resolve().name)}</h1>",
             f"<p class=\"sub\">{_e(facts)} · written {_e(time.strftime('%Y-%m-%d %H:%M'))} by vaelab "
             f"{_e(__version__)}</p>"]
    parts += [f"<p class=\"note\">{_e(n)}</p>" for n in notes]
    parts.append("<h2>Metrics</h2>")
    parts.append(_metrics_html(metrics) if metrics else "<p>No metrics.jsonl lines.</p>")
    parts.append("<h2>Figures</h2>")
    parts += [_figure_html(f) for f in figures]
    if evaluation is not None:
        parts += ["<h2>Evaluation (eval.json)</h2>", _value_html(evaluation)]
    parts += _disentanglement_html(run_dir, notes)
    parts += ["<h2>Configuration (config.json)</h2>", _value_html(_shown_config(cfg))]
    body = "\n".join(parts)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>vaelab report: {_e(run_dir.resolve().name)}</title>\n<style>{STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def _disentanglement_html(run_dir: Path, notes: list[str]) -> list[str]:
    """The scores of `vaelab disentanglement` and its overview figure, when the run has them."""
    path = run_dir / "disentanglement.json"
    if not path.is_file():
        return []
    try:
        result = json.loads(path.read_text())
        shown = {key: result[key] for key in ("metrics", "captures", "protocol")}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        notes.append(f"disentanglement.json could not be read: {exc}")
        return []
    parts = ["<h2>Disentanglement (disentanglement.json)</h2>", _value_html(shown)]
    overview = run_dir / "figures" / "disentanglement.png"
    if overview.is_file():
        parts.append(_figure_html(ReportFigure("Latent dimensions and the factors they capture",
                                               "Each row moves one latent dimension; its label names the factor it "
                                               "shares the most information with.", overview.read_bytes())))
    return parts


# ---- data and figures ----------------------------------------------------------------------------


PATHS_NOT_SHOWN = ("dicom", "nifti")  # datasets whose paths the report never shows (patient folders)


def _shown_config(cfg) -> dict:
    """The config as the report shows it: a medical dataset's folder is left out."""
    shown = cfg.to_dict()
    if cfg.data.dataset in PATHS_NOT_SHOWN:
        shown["data"]["data_dir"] = "(not shown for medical data)"
    return shown


def _load_data(cfg, data_dir: Optional[str], notes: list[str]):
    from vaelab.data import load_data

    data_cfg = dataclasses.replace(cfg.data)
    if data_dir:
        if data_cfg.dataset == "npz":
            data_cfg.data_path = data_dir
        else:
            data_cfg.data_dir = data_dir
    try:
        return load_data(data_cfg)
    except DataError as exc:
        # A scan's path may name the patient: medical datasets say only that the data is missing.
        reason = "" if cfg.data.dataset in PATHS_NOT_SHOWN else f" ({exc})"
        notes.append(f"The run's dataset is not available{reason}; figures that need it are left out. "
                     "Point to it with --data-dir.")
        return None


@torch.inference_mode()
def _figures(model: VAE, run_dir: Path, data, metrics: list[dict], tmp: Path, seed: int,
             notes: list[str]) -> list[ReportFigure]:
    """Draw every figure into `tmp` and read them back as PNG bytes."""
    from vaelab import latent, plots
    from vaelab.data.batches import to_float

    figures: list[ReportFigure] = []

    def grid(name: str, title: str, caption: str, table: latent.ImageTable) -> None:
        path = plots.labelled_grid(table.images, table.nrow, tmp / f"{name}.png", table.row_labels,
                                   table.col_labels, table.title)
        figures.append(ReportFigure(title, caption, path.read_bytes()))

    def drawn(name: str, title: str, caption: str, draw: Callable[[Path], Path]) -> None:
        figures.append(ReportFigure(title, caption, draw(tmp / f"{name}.png").read_bytes()))

    run = str(run_dir)
    if metrics and all("train_loss" in r and "val_loss" in r for r in metrics):
        drawn("loss", "Loss curves", "Negative ELBO per image, training and validation, per epoch.",
              lambda p: plots.loss_figure(run_dir / "metrics.jsonl", p))
    grid("sample", "Samples", f"Decoded draws from {latent.prior_name(model)}. vaelab sample {run}",
         latent.sample_images(model, 64, seed=seed))

    test = data.test if data is not None else None
    encoded = latent.encode_split(model, test) if test is not None else None
    labels = test.labels if test is not None else None
    cond = model.conditional

    def y_of(i: int) -> Optional[int]:
        return int(labels[i]) if cond and labels is not None else None

    if test is not None:
        n = min(10, len(test))
        x = to_float(test.images[:n])
        grid("reconstruct", "Reconstructions", f"Test images above their reconstructions. vaelab reconstruct {run}",
             latent.reconstruct_images(model, x, labels[:n] if cond else None))
        b = _other_index(labels, 0, len(test))
        if b is not None:
            for mode in ("lerp", "slerp"):
                grid(f"interpolate-{mode}", f"Interpolation ({mode})",
                     f"Test images 0 and {b}, encoded and walked between by {mode}. "
                     f"vaelab interpolate {run} --from 0 --to {b} --mode {mode}",
                     latent.interpolate_images(model, to_float(test.images[0]), to_float(test.images[b]), 10, mode,
                                               y_of(0), y_of(b)))
    y0 = (y_of(0) if test is not None else 0) if cond else None
    standard = model.prior.standard_normal
    spread, centre = ("", "the origin") if standard else ("prior standard deviations", "the prior's mean")
    if encoded is not None:
        kl = encoded.kl_per_dim()
        dims = latent.rank_dimensions(encoded)[:10]
    else:
        kl, dims = None, list(range(min(10, model.latent_dim)))
    grid("traverse", "Latent traversal",
         f"Each row moves one dimension from -3 to +3 {spread} around {centre}; rows ordered by average KL over "
         f"the test split (most informative first). vaelab traverse {run}",
         latent.traverse_images(model, dims, y=y0, kl=kl))
    if model.latent_dim >= 2:
        pair = (0, 1) if model.latent_dim == 2 or encoded is None else tuple(sorted(dims[:2]))
        grid("manifold", "Latent manifold",
             f"Decodings over a grid of {'Gaussian' if standard else 'the prior marginals’'} quantiles of "
             f"{latent.dim_name(model, pair[0])} and {latent.dim_name(model, pair[1])}, the other dimensions at "
             f"{'0' if standard else 'the prior mean'}. vaelab manifold {run} --dims {pair[0]},{pair[1]}",
             latent.manifold_images(model, pair, 15, y=y0))
    if test is not None and labels is not None:
        _edit_figure(model, data, grid, run, seed)
    elif test is not None:
        notes.append("The attribute edit needs class labels; this dataset has none "
                     "(use vaelab edit --toward-folder DIR --from-folder DIR).")
    if encoded is not None:
        class_names = data.class_names
        drawn("latent", "Latent codes of the test set",
              "Posterior means of the test images (PCA when the latent has more than 2 dimensions).",
              lambda p: plots.latent_figure(encoded, latent.fit_projection(encoded.mean), p, class_names))
        against = "the N(0, 1) prior" if standard else "draws of the prior"
        drawn("latent-hist", "Latent histograms", f"Sampled codes per dimension against {against}.",
              lambda p: plots.latent_hist_figure(encoded, p, generator=torch.Generator().manual_seed(seed),
                                                 **plots.prior_hist_arguments(model, seed)))
    return figures


def _other_index(labels: Optional[torch.Tensor], i: int, n: int) -> Optional[int]:
    """The first index whose label differs from image i's (or simply i + 1 when unlabelled)."""
    if n < 2:
        return None
    if labels is not None:
        others = (labels != labels[i]).nonzero().flatten()
        if len(others):
            return int(others[0])
    return i + 1


def _edit_figure(model: VAE, data: ImageData, grid, run: str, seed: int) -> None:
    from vaelab import latent
    from vaelab.data.batches import to_float

    test = data.test
    a = int(test.labels[0])
    b_index = _other_index(test.labels, 0, len(test))
    if b_index is None or int(test.labels[b_index]) == a:
        return
    b = int(test.labels[b_index])
    names = data.class_names
    name_a, name_b = (names[a], names[b]) if names else (str(a), str(b))
    x = to_float(test.images[0])
    strengths = torch.linspace(0.0, 1.5, 7)
    if model.conditional:
        grid("edit", "Label edit (conditional)",
             f"Test image 0 keeps its code (style) while the label moves from {name_a} to {name_b}. "
             f"vaelab edit {run} --image 0 --toward {b}",
             latent.relabel_images(model, x, a, b, strengths))
        return
    encoded = latent.encode_split(model, latent.subsample(data.train, CLASS_MEAN_IMAGES, seed))
    direction = latent.class_mean(encoded, b) - latent.class_mean(encoded, a)
    grid("edit", "Attribute edit",
         f"Test image 0 (class {name_a}) moved along mean code of class {name_b} minus mean code of class {name_a}. "
         f"vaelab edit {run} --image 0 --toward {b}",
         latent.edit_images(model, x, direction, strengths))


# ---- HTML pieces ---------------------------------------------------------------------------------


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _figure_html(fig: ReportFigure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (f"<figure>\n<h3>{_e(fig.title)}</h3>\n<img alt=\"{_e(fig.title)}\" src=\"data:image/png;base64,{data}\">\n"
            f"<figcaption>{_e(fig.caption)}</figcaption>\n</figure>")


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return _e(f"{value:.6g}") if math.isfinite(value) else _e(str(value))
    if value is None:
        return "—"
    return _e(value)


def _cell(value: Any) -> str:
    cls = " class=\"num\"" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
    return f"<td{cls}>{_value_html(value)}</td>"


def _value_html(value: Any) -> str:
    """Any JSON value as HTML: objects as key/value tables, lists of objects as tables, scalars as text."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        rows = "".join(f"<tr><th>{_e(k)}</th>{_cell(v)}</tr>" for k, v in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return _rows_table(value)
        if all(not isinstance(v, (dict, list)) for v in value):
            return ", ".join(_scalar(v) for v in value) or "[]"
        return "<ul>" + "".join(f"<li>{_value_html(v)}</li>" for v in value) + "</ul>"
    return _scalar(value)


def _rows_table(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metrics_html(metrics: list[dict]) -> str:
    shown = metrics
    note = ""
    if len(metrics) > MAX_METRIC_ROWS:
        step = len(metrics) / MAX_METRIC_ROWS
        picks = sorted({int(i * step) for i in range(MAX_METRIC_ROWS)} | {len(metrics) - 1})
        shown = [metrics[i] for i in picks]
        note = f"<p>{len(metrics)} epochs; {len(shown)} shown, evenly spaced, the last included.</p>"
    return f"<h3>Last epoch</h3>{_value_html(metrics[-1])}<h3>Per epoch</h3>{note}{_rows_table(shown)}"
