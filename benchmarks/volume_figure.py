"""The docs' 3-D figure: a conv3d run (--dimensions 3) on generated CT-like phantoms, its test volumes'
orthogonal mid-slices above their reconstructions, and one volume reconstructed back to NIfTI.

The data are `vaelab.data.synthetic_scans.phantom` volumes (a body ellipse of soft tissue with two
lungs and a bone ring in air, in HU; nothing from a patient), each of a random extent (slices,
rows, columns) and a random oblique affine, so that after resampling to the 32³ grid their bodies
differ in length, width and height. A CT window -1000..800 HU maps them to 0..255. The run's own
figure (RUN/figures/reconstructions.png: axial | coronal | sagittal mid-slices of test volumes,
inputs above reconstructions) is copied to

    docs/images/volume_reconstructions.png

and `vaelab reconstruct RUN --images <a test volume> --out recon.nii.gz` is checked to have the
input's shape and affine; the voxel correlation with the input (within the window) is printed.

    flock /tmp/vaelab-cpu.lock python benchmarks/volume_figure.py [--volumes 48 --epochs 80]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    import nibabel as nib

    from vaelab.cli import main as vaelab
    from vaelab.data.synthetic_scans import oblique_affine, phantom, write_nifti

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--out", default=str(REPO / "docs" / "images" / "volume_reconstructions.png"))
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        scans = tmp / "scans"
        for i in range(args.volumes):
            extent = (int(rng.integers(16, 40)), int(rng.integers(24, 56)), int(rng.integers(24, 56)))
            hu = phantom(extent, seed=i).transpose(2, 1, 0)  # (columns, rows, slices), NIfTI's voxel order
            affine = oblique_affine(spacing=(1.0, 1.0, 2.5), degrees=float(rng.uniform(0, 25)))
            write_nifti(scans / f"phantom{i:03d}.nii.gz", hu, affine)
        run = tmp / "run"
        command = ["train", "--dataset", "nifti", "--data-dir", str(scans), "--dimensions", "3",
                   "--volume-size", "32,32,32", "--intensity-window=-1000,800", "--arch", "conv3d",
                   "--latent-dim", "16", "--gaussian-std", "0.05", "--epochs", str(args.epochs), "--batch-size", "8",
                   "--seed", "0", "--threads", "2", "--no-cache", "--out", str(run), "--quiet"]
        print("vaelab " + " ".join(command))
        start = time.perf_counter()
        assert vaelab(command) == 0
        print(f"trained in {time.perf_counter() - start:.1f} s")
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        print(f"final validation loss {last['val_loss']:.1f} nats per volume")
        source = scans / "phantom000.nii.gz"
        recon_path = tmp / "recon.nii.gz"
        command = ["reconstruct", str(run), "--images", str(source), "--out", str(recon_path)]
        print("vaelab " + " ".join(command))
        assert vaelab(command) == 0
        img, recon = nib.load(source), nib.load(recon_path)
        assert recon.shape == img.shape and np.allclose(recon.affine, img.affine)
        x, y = np.clip(img.get_fdata(), -1000, 800), recon.get_fdata()
        print(f"shape {img.shape}, affine equal; voxel correlation {np.corrcoef(x.ravel(), y.ravel())[0, 1]:.3f}")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run / "figures" / "reconstructions.png", args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
