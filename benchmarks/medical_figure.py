"""The docs' medical figure: a 2-D run trained on nibabel's example volumes, one volume reconstructed
back to NIfTI in its own geometry, shown over its input (orthogonal mid-slices).

The training set is the NIfTI files shipped inside nibabel's wheel (real scans, a few MB): the
anatomical MR volume and a moved copy, two 4-D EPI series and the functional run, one split unit
each (resampled_anat_moved.nii is left out: it holds NaN voxels outside its field of view, which
vaelab refuses). `vaelab reconstruct RUN --images anatomical.nii --out recon.nii.gz` writes the
reconstruction of this training volume (the figure shows the geometry, not generalisation: five
small files are far too few for that); the script checks that it has the input's shape and affine
and draws

    docs/images/medical_reconstruction.png    rows: axial, coronal, sagittal mid-slices;
                                              columns: input, reconstruction, both overlaid

    flock /tmp/vaelab-cpu.lock python benchmarks/medical_figure.py [--epochs 200 --gaussian-std 0.05]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FILES = ("anatomical.nii", "reoriented_anat_moved.nii", "example4d.nii.gz", "example_nifti2.nii.gz",
         "functional.nii")


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    from vaelab.cli import main as vaelab

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--gaussian-std", type=float, default=0.05)
    parser.add_argument("--out", default=str(REPO / "docs" / "images" / "medical_reconstruction.png"))
    args = parser.parse_args()
    source = Path(nib.__file__).parent / "tests" / "data"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in FILES:
            shutil.copy(source / name, tmp / name)
        command = ["train", "--dataset", "nifti", "--data-dir", str(tmp), "--image-size", "32", "--arch", "conv",
                   "--latent-dim", "16", "--epochs", str(args.epochs), "--batch-size", "16", "--seed", "0",
                   # Splits are by file: seed 1 puts anatomical.nii (with its moved copy and the
                   # NIfTI-2 series) in the training split, the 4-D EPI in validation, functional.nii in test.
                   "--split-seed", "1",
                   # A sharper Gaussian than the paper's σ = 1/√2, which lets the KL term win on scans.
                   "--gaussian-std", str(args.gaussian_std),
                   "--out", str(tmp / "run"), "--quiet"]
        print("vaelab " + " ".join(command))
        assert vaelab(command) == 0
        recon_path = tmp / "recon.nii.gz"
        command = ["reconstruct", str(tmp / "run"), "--images", str(tmp / "anatomical.nii"), "--out", str(recon_path)]
        print("vaelab " + " ".join(command))
        assert vaelab(command) == 0
        img, recon = nib.load(tmp / "anatomical.nii"), nib.load(recon_path)
        assert recon.shape == img.shape and np.allclose(recon.affine, img.affine)
        x, y = img.get_fdata(), recon.get_fdata()
        print(f"shape {img.shape}, affine equal; voxel correlation {np.corrcoef(x.ravel(), y.ravel())[0, 1]:.3f}")
        low, high = np.percentile(x, (0.5, 99.5))
        i, j, k = (s // 2 for s in x.shape)
        # Voxel axes of anatomical.nii: x runs toward the left, y toward anterior, z toward superior.
        views = {"axial": lambda v: np.flipud(v[:, :, k].T), "coronal": lambda v: np.flipud(v[:, j, :].T),
                 "sagittal": lambda v: np.flipud(v[i, :, :].T)[:, ::-1]}
        fig, axes = plt.subplots(3, 3, figsize=(7.5, 7.5), dpi=110)
        for row, (name, view) in enumerate(views.items()):
            a, b = view(x), view(y)
            norm = dict(vmin=low, vmax=high, cmap="gray", interpolation="nearest")
            axes[row, 0].imshow(a, **norm)
            axes[row, 1].imshow(b, **norm)
            grey = np.clip((a - low) / (high - low), 0, 1)
            edges = np.clip((b - low) / (high - low), 0, 1)
            axes[row, 2].imshow(np.stack([grey, grey * 0.6 + edges * 0.4, edges], -1), interpolation="nearest")
            axes[row, 0].set_ylabel(name)
        for col, title in enumerate(("input (anatomical.nii)", "reconstruction (NIfTI)", "overlaid")):
            axes[0, col].set_title(title, fontsize=9)
        for ax in axes.ravel():
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("A 2-D conv VAE's slice-by-slice reconstruction, written in the input's geometry", fontsize=9)
        fig.tight_layout()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
