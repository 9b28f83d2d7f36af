"""Writing an anomaly analysis: scores.csv, anomaly.json, roc.png and maps/, plus the printed table.

    DIR/scores.csv     one row per image: index (split images) or file, label when known, one
                       column per score (higher = more anomalous)
    DIR/anomaly.json   settings, per-score definitions and metrics (AUROC with its bootstrap
                       interval, AP, thresholds), per-file scores and percentiles, pixel metrics
    DIR/roc.png        every score's ROC curve (with labels)
    DIR/maps/          one figure per mapped image (input, reconstruction, residual overlays,
                       mask) and maps.npz with the raw maps

`prepare_output_dir` refuses a folder that holds anything vaelab did not write there, so
`--out` can never overwrite a user's files; a folder of an earlier analysis is refreshed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vaelab.anomaly.names import BASELINES
from vaelab.errors import RunError

OUTPUT_FILES = ("scores.csv", "anomaly.json", "roc.png")
MAPS_DIR = "maps"


def prepare_output_dir(out: Path) -> None:
    """Create `out`, or refresh an earlier analysis there; refuse a folder holding other files."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in (*OUTPUT_FILES, MAPS_DIR)
                         and not p.name.startswith(".anomaly.json.") and not p.name.startswith(".scores.csv."))
        if foreign:
            raise RunError(f"--out {out} holds files vaelab anomaly did not write ({', '.join(foreign[:3])}); "
                           "choose a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        maps = out / MAPS_DIR
        if maps.is_dir():  # the figures of an earlier analysis: replaced, never mixed with new ones
            shutil.rmtree(maps)
        maps.mkdir()
        (out / "roc.png").unlink(missing_ok=True)
    except OSError as exc:
        raise RunError(f"cannot write to {out}: {exc.strerror or exc}") from None


def scores_csv(ids: list[Any], id_column: str, labels: Optional[np.ndarray], scores: dict[str, np.ndarray]) -> str:
    """The CSV text: id column, label (when known), one column per score."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([id_column, *(["label"] if labels is not None else []), *scores])
    for i, ident in enumerate(ids):
        row = [ident, *([int(labels[i])] if labels is not None else [])]
        row += [f"{float(v[i]):.8g}" for v in scores.values()]
        writer.writerow(row)
    return buffer.getvalue()


def to_json(value: Any) -> Any:
    """numpy values and non-finite floats -> plain JSON (non-finite as null)."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    from vaelab.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(to_json(payload), indent=2) + "\n")


def roc_figure(path: Path, anomalous: np.ndarray, scores: dict[str, np.ndarray], metrics: dict[str, Any],
               title: str) -> Path:
    """Every score's ROC curve on one plot, legend ordered by AUROC; baselines dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vaelab.anomaly.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=1, label="chance (0.500)")
    ranked = sorted((n for n in scores if metrics[n]["auroc"] is not None), key=lambda n: -metrics[n]["auroc"])
    for name in ranked:
        fpr, tpr, _ = roc_curve(anomalous, scores[name])
        low, high = metrics[name]["auroc_ci"]
        ci = f" [{low:.3f}, {high:.3f}]" if low is not None else ""
        ax.plot(fpr, tpr, lw=1.4, ls="--" if name in BASELINES else "-",
                label=f"{name} {metrics[name]['auroc']:.3f}{ci}")
    ax.set_xlabel("false-positive rate (1 - specificity)")
    ax.set_ylabel("true-positive rate (sensitivity)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right", title="AUROC [95% bootstrap CI]", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def metrics_table(metrics: dict[str, Any]) -> str:
    """The printed table: one row per score with AUROC [CI], AP and the two thresholds."""
    header = f"  {'score':<28}{'AUROC [95% CI]':<24}{'AP':>7}{'thr@best F1 (F1)':>24}{'thr@95% sens (spec)':>26}"
    rows = [header]
    for name, m in metrics["scores"].items():
        if m["auroc"] is None:
            rows.append(f"  {name:<28}{m.get('note', '-')}")
            continue
        low, high = m["auroc_ci"]
        ci = f"{m['auroc']:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{m['auroc']:.3f}"
        f1 = f"{m['threshold_best_f1']:.4g} ({m['best_f1']:.3f})"
        sens = f"{m['threshold_95_sensitivity']:.4g} ({m['specificity_at_95_sensitivity']:.3f})"
        rows.append(f"  {name:<28}{ci:<24}{m['average_precision']:>7.3f}{f1:>24}{sens:>26}")
    return "\n".join(rows)


def files_table(ids: list[str], scores: dict[str, np.ndarray], percentiles: dict[str, np.ndarray]) -> str:
    """Per file: every score's value and its percentile among normal training images."""
    rows = []
    for i, name in enumerate(ids):
        rows.append(f"  {name}")
        for score, values in scores.items():
            rows.append(f"    {score:<28}{float(values[i]):>14.5g}   {float(percentiles[score][i]):5.1f}th percentile")
    return "\n".join(rows)
