"""`vaelab anomaly` end to end on small generated data, and its answers to bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from conftest import write_idx
from vaelab.anomaly import SCORE_NAMES
from vaelab.cli import main

METRIC_KEYS = {"auroc", "auroc_ci", "average_precision", "threshold_best_f1", "best_f1", "threshold_95_sensitivity",
               "specificity_at_95_sensitivity"}


@pytest.fixture(scope="module")
def bars(tmp_path_factory):
    """MNIST-shaped IDX files of bars whose height encodes the label, and a run trained on classes 0,1."""
    root = tmp_path_factory.mktemp("anomaly")
    rng = np.random.default_rng(0)
    folder = root / "mnist"
    folder.mkdir()
    for prefix, n in (("train", 300), ("t10k", 120)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 40).astype(np.uint8)  # a little noise everywhere
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label:5 + 2 * label, 4:24] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    run = root / "run"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(folder), "--train-classes", "0,1", "--epochs", "8",
                 "--batch-size", "16", "--hidden", "32,16", "--latent-dim", "3", "--out", str(run), "--quiet"]) == 0
    return root, folder, run


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vaelab: error: "), err
    return err[0]


def test_split_analysis_writes_csv_json_roc_and_maps(bars, capsys):
    _, _, run = bars
    assert main(["anomaly", str(run), "--iw-samples", "10", "--maps", "3", "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    assert "normal (classes 0,1)" in printed  # the run's --train-classes are the default normal classes
    for name in SCORE_NAMES:
        assert name in printed
    out = run / "anomaly"
    with open(out / "scores.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["index", "label", *SCORE_NAMES]
    assert len(rows) == 121 and [int(r[0]) for r in rows[1:]] == list(range(120))
    report = json.loads((out / "anomaly.json").read_text())
    assert report["normal_classes"] == [0, 1] and report["num_images"] == 120
    assert report["bootstrap"]["resamples"] == 200
    assert set(report["scores"]) == set(SCORE_NAMES)
    for name, m in report["scores"].items():
        assert METRIC_KEYS <= set(m), name
        assert m["auroc_ci"][0] <= m["auroc"] <= m["auroc_ci"][1], name
    # The CSV and the JSON agree: the AUROC recomputed from the CSV with scikit-learn.
    from sklearn.metrics import roc_auc_score

    labels = np.array([int(r[1]) for r in rows[1:]])
    nll = np.array([float(r[2 + SCORE_NAMES.index("nll")]) for r in rows[1:]])
    assert roc_auc_score(~np.isin(labels, [0, 1]), nll) == pytest.approx(report["scores"]["nll"]["auroc"], abs=1e-6)
    assert (out / "roc.png").stat().st_size > 10_000
    figures = sorted(p.name for p in (out / "maps").glob("*.png"))
    assert len(figures) == 3 and figures[0].startswith("rank001_index")
    # The maps are of the three images highest by nll.
    top = np.argsort(-nll, kind="stable")[:3]
    assert report["maps"]["files"] == [f"maps/rank{k + 1:03d}_index{i}.png" for k, i in enumerate(top)]
    arrays = np.load(out / "maps" / "maps.npz")
    assert arrays["residual"].shape == (3, 28, 28) and arrays["weighted"].shape == (3, 28, 28)


def test_rerun_replaces_the_analysis_and_json_output(bars, capsys, tmp_path):
    _, _, run = bars
    out = tmp_path / "a"
    assert main(["anomaly", str(run), "--out", str(out), "--iw-samples", "5", "--maps", "4", "--bootstrap", "0",
                 "--normal-classes", "0", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["anomaly", str(run), "--out", str(out), "--iw-samples", "5", "--maps", "2", "--bootstrap", "0",
                 "--normal-classes", "0", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["normal_classes"] == [0]
    assert printed["scores"]["nll"]["auroc_ci"] == [None, None]  # --bootstrap 0: no interval
    assert len(list((out / "maps").glob("*.png"))) == 2  # the earlier four figures are gone


def test_image_files_get_scores_percentiles_maps_and_pixel_metrics(bars, capsys, tmp_path):
    _, _, run = bars
    files, masks = [], tmp_path / "masks"
    masks.mkdir()
    for name, row in (("normal", 2), ("odd", 20)):
        image = np.zeros((56, 56), np.uint8)
        image[2 * row:2 * row + 6, 8:48] = 255  # a bar (twice the model's size: resized on load)
        image[60 - 2 * row - 10:60 - 2 * row - 4, 8:48] = 255 if name == "odd" else 0
        Image.fromarray(image).save(tmp_path / f"{name}.png")
        files.append(str(tmp_path / f"{name}.png"))
        mask = np.zeros((28, 28), np.uint8)
        if name == "odd":
            mask[30 - row - 5:30 - row - 2, 4:24] = 255
        Image.fromarray(mask).save(masks / f"{name}_mask.png")
    assert main(["anomaly", str(run), "--images", *files, "--masks", str(masks), "--iw-samples", "5"]) == 0
    printed = capsys.readouterr().out
    assert "percentile" in printed and "pixel AUROC" in printed
    out = run / "anomaly"
    with open(out / "scores.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["file", *SCORE_NAMES] and [r[0] for r in rows[1:]] == files
    report = json.loads((out / "anomaly.json").read_text())
    assert [item["file"] for item in report["images"]] == files
    for item in report["images"]:
        assert set(item["percentiles"]) == set(SCORE_NAMES)
        assert all(0 <= p <= 100 for p in item["percentiles"].values())
    assert report["pixel"]["images"] == 2
    assert {"residual", "weighted", "intensity"} <= set(report["pixel"])
    assert 0 <= report["pixel"]["residual"]["pixel_auroc"] <= 1 and 0 < report["pixel"]["residual"]["best_dice"] <= 1
    assert sorted(p.name for p in (out / "maps").glob("*.png")) == ["normal.png", "odd.png"]
    assert "roc.png" not in {p.name for p in out.iterdir()}  # no labels: no ROC


@pytest.mark.parametrize("extra, message", [
    (["--normal-classes", "12"], "has no class 12"),
    (["--images", "nope.png"], "image file not found: nope.png"),
    (["--split", "dev"], "--split must be test, val or train"),
    (["--iw-samples", "0"], "--iw-samples must be between 1 and"),
    (["--masks", "."], "--masks are matched by name to --images files"),
])
def test_bad_input_is_one_line(bars, capsys, tmp_path, extra, message):
    _, _, run = bars
    out = tmp_path / "out"
    assert main(["anomaly", str(run), "--out", str(out), *extra]) != 0
    assert message in _one_error_line(capsys)
    assert not out.exists()


def test_normal_classes_with_image_files_or_an_unlabelled_split_is_refused(bars, capsys, tmp_path):
    _, _, run = bars
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    assert main(["anomaly", str(run), "--images", str(image), "--normal-classes", "0"]) != 0
    assert "--images files have no labels" in _one_error_line(capsys)
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(folder / f"{i}.png")
    plain = tmp_path / "plain"
    assert main(["train", "--dataset", "folder", "--data-dir", str(folder), "--image-size", "8", "--epochs", "1",
                 "--batch-size", "4", "--hidden", "8", "--out", str(plain), "--quiet"]) == 0
    assert main(["anomaly", str(plain), "--normal-classes", "0"]) != 0
    assert "--normal-classes needs labels" in _one_error_line(capsys)
    # Without --normal-classes the unlabelled split is still scored (no metrics).
    assert main(["anomaly", str(plain), "--iw-samples", "3", "--maps", "1", "--quiet"]) == 0
    assert "no labels" in capsys.readouterr().out
    report = json.loads((plain / "anomaly" / "anomaly.json").read_text())
    assert report["normal_classes"] is None and set(report["scores"]["nll"]) >= {"mean", "median", "p95"}


def test_corrupt_mask_is_one_line(bars, capsys, tmp_path):
    _, _, run = bars
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = tmp_path / "out"
    assert main(["anomaly", str(run), "--images", str(image), "--masks", str(masks), "--out", str(out)]) != 0
    assert "not a readable mask image" in _one_error_line(capsys)
    assert not out.exists()


def test_out_never_overwrites_a_users_folder(bars, capsys, tmp_path):
    _, _, run = bars
    out = tmp_path / "mine"
    out.mkdir()
    (out / "scores.csv").write_text("precious")
    (out / "notes.txt").write_text("mine")
    assert main(["anomaly", str(run), "--out", str(out)]) != 0
    assert "did not write" in _one_error_line(capsys)
    assert (out / "scores.csv").read_text() == "precious"


def test_missing_run_is_one_line(capsys, tmp_path):
    assert main(["anomaly", str(tmp_path / "nope")]) != 0
    assert "run folder not found" in _one_error_line(capsys)


def test_training_split_is_scored_leave_one_out(bars, tmp_path):
    _, _, run = bars
    out = tmp_path / "train"
    assert main(["anomaly", str(run), "--split", "train", "--iw-samples", "3", "--maps", "0", "--bootstrap", "0",
                 "--out", str(out), "--quiet"]) == 0
    with open(out / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    normal = [float(r["nearest_neighbour_distance"]) for r in rows if int(r["label"]) in (0, 1)]
    assert normal and min(normal) > 0  # no image is its own nearest neighbour


def test_writing_into_a_run_in_use_is_refused(bars, capsys, tmp_path):
    """RUN/anomaly lies inside the run: vaelab anomaly takes the run folder's lock (vaelab.runlock)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    _, _, run = bars
    out = run / "anomaly"
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    src = str(Path(__file__).resolve().parents[1] / "src")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom vaelab.runlock import run_lock\n"
         f"with run_lock({str(run)!r}, 'vaelab train --resume'):\n    print('held', flush=True)\n    time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": src})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["anomaly", str(run), "--iw-samples", "2", "--maps", "1", "--quiet"]) == 4
        assert "is in use by another vaelab process" in _one_error_line(capsys)
        assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before
        # Writing elsewhere only reads the run: allowed while it is in use.
        assert main(["anomaly", str(run), "--iw-samples", "2", "--maps", "1", "--bootstrap", "0", "--quiet",
                     "--out", str(tmp_path / "elsewhere")]) == 0
    finally:
        holder.kill()
        holder.wait()
