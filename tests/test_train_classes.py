"""`--train-classes`: only the chosen labels in the training and validation splits, for every
labelled dataset kind; the test split untouched; saved in config.json; bad classes are one line."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.cli import main
from vaelab.config import DataConfig, RunConfig
from vaelab.data import DATASETS, load_data
from vaelab.errors import ConfigError, DataError


def _folder(tmp_path):
    root = tmp_path / "folder"
    for k, cls in enumerate(("a", "b", "c")):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(np.full((6, 6), 30 * k + i, np.uint8)).save(root / cls / f"{i}.png")
    return DataConfig(dataset="folder", data_dir=str(root), image_size=6)


def _npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 30), ("val", 9), ("test", 12)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 5, 5), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.arange(n)[:, None] % 3  # every split holds every class
    np.savez(tmp_path / "m.npz", **arrays)
    return DataConfig(dataset="npz", data_path=str(tmp_path / "m.npz"))


def _dicom(tmp_path):
    from vaelab.data.synthetic_scans import phantom, write_dicom_series

    pytest.importorskip("pydicom")
    root = tmp_path / "dicom"
    for k, cls in enumerate(("a", "b", "c")):
        for i in range(8):  # one patient per series: the splits are made by patient
            write_dicom_series(root / cls / f"p{i}", phantom((5, 8, 8), seed=10 * k + i), series=f"{cls}{i}",
                               identity={"PatientID": f"{cls}-{i}"})
    return DataConfig(dataset="dicom", data_dir=str(root), image_size=8, val_fraction=0.3)


def _nifti(tmp_path):
    from vaelab.data.synthetic_scans import phantom, write_nifti

    pytest.importorskip("nibabel")
    root = tmp_path / "nifti"
    for k, cls in enumerate(("a", "b", "c")):
        for i in range(8):  # one volume per file; the files are the split's groups
            write_nifti(root / cls / f"v{i}.nii.gz", phantom((8, 8, 5), seed=10 * k + i))
    return DataConfig(dataset="nifti", data_dir=str(root), image_size=8, val_fraction=0.3,
                      intensity_window=[-1000.0, 700.0])


def _labelled_configs(tmp_path, fake_mnist):
    """One DataConfig per labelled dataset kind in DATASETS (all built here, offline)."""
    return {
        "digits": DataConfig(dataset="digits"),
        "mnist": DataConfig(dataset="mnist", data_dir=str(fake_mnist)),
        "fashion-mnist": DataConfig(dataset="fashion-mnist", data_dir=str(fake_mnist)),
        "folder": _folder(tmp_path),
        "npz": _npz(tmp_path),
        "dicom": _dicom(tmp_path),
        "nifti": _nifti(tmp_path),
        "shapes": DataConfig(dataset="shapes", shapes_subsample=300),
    }


def _pairs(tmp_path):
    for side in ("inputs", "targets"):
        (tmp_path / side).mkdir()
        for i in range(12):
            Image.fromarray(np.full((6, 6), 10 * i, np.uint8)).save(tmp_path / side / f"{i}.png")
    return DataConfig(dataset="pairs", input_dir=str(tmp_path / "inputs"), target_dir=str(tmp_path / "targets"),
                      image_size=6)


# Dataset kinds that never carry labels (image pairs): --train-classes is refused on them.
UNLABELLED = {"pairs": _pairs}


def test_every_dataset_kind_is_covered(tmp_path, fake_mnist):
    assert set(_labelled_configs(tmp_path, fake_mnist)) | set(UNLABELLED) == set(DATASETS)


@pytest.mark.parametrize("kind", sorted(UNLABELLED))
def test_train_classes_is_refused_on_unlabelled_kinds(kind, tmp_path):
    cfg = UNLABELLED[kind](tmp_path)
    assert load_data(cfg).train.labels is None
    with pytest.raises(DataError, match="needs a labelled dataset"):
        load_data(replace(cfg, train_classes=[0]))


@pytest.mark.parametrize("kind", sorted(set(DATASETS) - set(UNLABELLED)))
def test_train_classes_filters_train_and_val_only(kind, tmp_path, fake_mnist):
    cfg = _labelled_configs(tmp_path, fake_mnist)[kind]
    full = load_data(cfg)
    classes = [0, 2]
    chosen = load_data(replace(cfg, train_classes=classes))
    for name in ("train", "val"):
        before, after = full.split(name), chosen.split(name)
        keep = torch.isin(before.labels, torch.tensor(classes))
        # Exactly the rows of those classes, in their original order, images with them.
        assert torch.equal(after.labels, before.labels[keep])
        assert torch.equal(after.images, before.images[keep])
        assert 0 < len(after) < len(before)
    assert torch.equal(chosen.test.images, full.test.images)
    assert torch.equal(chosen.test.labels, full.test.labels)
    assert chosen.class_names == full.class_names  # labels keep their meaning
    assert chosen.factors == full.factors  # a generated dataset keeps its factors of variation
    if full.train.factors is not None:
        keep = torch.isin(full.train.labels, torch.tensor(classes))
        assert torch.equal(chosen.train.factors, full.train.factors[keep])


def test_static_binarisation_matches_what_vaelab_eval_rebuilds():
    # vaelab eval loads grey values and binarises them itself: it must see the bits training saw.
    from vaelab.data.base import apply_static_binarization

    cfg = DataConfig(dataset="digits", binarize="static", train_classes=[3, 5])
    trained = load_data(cfg)
    rebuilt = apply_static_binarization(load_data(replace(cfg, binarize="none")), seed=cfg.split_seed)
    for name in ("train", "val", "test"):
        assert torch.equal(trained.split(name).images, rebuilt.split(name).images)


def test_unknown_class_is_one_clear_error(fake_mnist):
    with pytest.raises(DataError, match="has no class 10; its classes are 0, 1, 2"):
        load_data(DataConfig(dataset="mnist", data_dir=str(fake_mnist), train_classes=[1, 10]))


def test_class_names_are_listed_for_named_classes(tmp_path):
    with pytest.raises(DataError, match=r"0 \(a\), 1 \(b\), 2 \(c\)"):
        load_data(replace(_folder(tmp_path), train_classes=[5]))


def test_unlabelled_data_is_refused(tmp_path):
    for i in range(6):
        Image.fromarray(np.full((6, 6), i, np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(DataError, match="needs a labelled dataset"):
        load_data(DataConfig(dataset="folder", data_dir=str(tmp_path), image_size=6, train_classes=[0]))


def test_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="train_classes must be distinct labels >= 0"):
        DataConfig(train_classes=[1, 1]).validate()
    with pytest.raises(ConfigError, match="train_classes"):
        RunConfig.from_dict({"data": {"train_classes": [-1]}})


def test_cli_saves_train_classes_and_trains_on_them_only(tmp_path, fake_mnist):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--train-classes", "0,3",
                 "--epochs", "1", "--batch-size", "8", "--hidden", "16", "--out", str(run), "--quiet"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["train_classes"] == [0, 3]
    assert saved["model"]["num_classes"] == 10  # the labels keep their meaning
    assert RunConfig.load(run / "config.json").data.train_classes == [0, 3]


def test_cli_unknown_class_is_one_line_and_writes_nothing(tmp_path, fake_mnist, capsys):
    run = tmp_path / "run"
    code = main(["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--train-classes", "12",
                 "--epochs", "1", "--out", str(run), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "has no class 12" in err[0]
    assert not run.exists()
