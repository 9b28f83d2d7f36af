"""Datasets: each kind loads once into uint8 tensors (N, C, H, W) (volumes: (N, 1, D, H, W)), in memory
or memory-mapped.

`DATASETS` maps a `--dataset` name to a loader `DataConfig -> ImageData`; adding a dataset is
adding one entry. `folder`, `dicom` and `nifti` are decoded once into the decoded-image cache
and mapped from it (see `cache.py`). Batches are sliced from these tensors (see `batches.py`):
no per-sample Python work ever runs in the training loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vaelab.config import DataConfig
from vaelab.data.base import FactorSpec, ImageData, Split, apply_static_binarization, keep_classes
from vaelab.data.dicom import load_dicom
from vaelab.data.digits import load_digits
from vaelab.data.folder import load_folder
from vaelab.data.mnist import load_fashion_mnist, load_mnist
from vaelab.data.nifti import load_nifti
from vaelab.data.npz import load_npz
from vaelab.data.pairs import load_pairs
from vaelab.data.shapes import load_shapes
from vaelab.data.volumes import load_dicom_volumes, load_nifti_volumes
from vaelab.errors import DataError

DATASETS: dict[str, Callable[[DataConfig], ImageData]] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "folder": load_folder,
    "npz": load_npz,
    "dicom": load_dicom,  # pydicom, imported on use (pip install 'vaelab[medical]')
    "nifti": load_nifti,  # nibabel, likewise
    "shapes": load_shapes,
    "pairs": load_pairs,  # image-to-image: --input-dir A --target-dir B
}
# --dimensions 3: the datasets of volumes, each volume one sample (1, D, H, W) (data/volumes.py);
# config.VOLUME_DATASETS names the same keys.
VOLUME_DATASETS: dict[str, Callable[[DataConfig], ImageData]] = {
    "nifti": load_nifti_volumes,
    "dicom": load_dicom_volumes,
}


def load_data(cfg: DataConfig) -> ImageData:
    """Load the dataset named in `cfg`, split it, keep only `cfg.train_classes` in the training and
    validation splits (if given), attach a `--degrade` degradation (its images become the targets of
    image pairs) and apply static binarisation, if asked.

    The classes are chosen before binarising, so `vaelab eval` (which loads grey values and
    binarises itself) sees exactly the bits that training saw.
    """
    if cfg.dataset not in DATASETS:
        raise DataError(f"unknown dataset '{cfg.dataset}'; choose from {', '.join(DATASETS)}")
    if cfg.dimensions == 3 and cfg.dataset not in VOLUME_DATASETS:
        raise DataError(f"--dimensions 3 needs a dataset of volumes ({', '.join(VOLUME_DATASETS)}); "
                        f"{cfg.dataset} holds 2-D images")
    data = (VOLUME_DATASETS if cfg.dimensions == 3 else DATASETS)[cfg.dataset](cfg)
    if cfg.train_classes:
        data = keep_classes(data, cfg.train_classes)
    if cfg.degrade is not None:
        data = with_degradation(data, cfg)
    if cfg.binarize == "static":
        data = apply_static_binarization(data, seed=cfg.split_seed)
    return data


def with_degradation(data: ImageData, cfg: DataConfig) -> ImageData:
    """`data` as image pairs whose inputs are fresh degraded copies of its images (`cfg.degrade`)."""
    from vaelab.data.degrade import Degradation

    if data.paired:
        raise DataError(f"{data.name} already holds input images; --degrade is for datasets of clean images")
    degradation = Degradation(cfg.degrade)
    splits = [dataclasses.replace(s, degrade=degradation) for s in (data.train, data.val, data.test)]
    return ImageData(data.name, *splits, data.class_names, data.factors)


__all__ = ["DATASETS", "VOLUME_DATASETS", "FactorSpec", "ImageData", "Split", "load_data", "with_degradation"]
