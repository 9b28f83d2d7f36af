"""Orientation of scans: which voxel axis is axial, and how a slice is shown (radiological view).

Everything here reads the affine (voxel (i, j, k) -> world RAS mm, as NIfTI stores it and as
`dicom.Series.affine` builds it): which voxel axis runs closest to each world axis, and so how
a slice's voxel array is transposed and flipped to be shown the way a radiologist reads it. The
shown images do not depend on how a file stores its voxels. Pure numpy: no nibabel needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def closest_axial_axis(affine: np.ndarray) -> int:
    """The voxel axis whose direction is closest to the scanner's z (head-feet) axis."""
    directions = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(directions, axis=0)
    norms[norms == 0] = 1.0
    return int(np.argmax(np.abs(directions[2]) / norms))


def world_axes(affine: np.ndarray) -> list[tuple[int, float]]:
    """For each voxel axis: the world (RAS) axis it runs closest to, and the sign of its direction.

    A permutation: an oblique axis that ties takes the world axis the clearer axes left over.
    """
    directions = np.asarray(affine, dtype=np.float64)[:3, :3]
    chosen: dict[int, tuple[int, float]] = {}
    for axis in np.argsort(-np.abs(directions).max(axis=0), kind="stable"):  # most clear-cut first
        taken = {w for w, _ in chosen.values()}
        world = next(int(w) for w in np.argsort(-np.abs(directions[:, axis]), kind="stable") if int(w) not in taken)
        chosen[int(axis)] = (world, float(np.sign(directions[world, axis]) or 1.0))
    return [chosen[a] for a in range(3)]


@dataclass(frozen=True)
class Display:
    """How a slice's voxel array (p, q) becomes the image shown: transpose, then flips."""

    transpose: bool
    flip_rows: bool
    flip_cols: bool

    def forward(self, values: np.ndarray) -> np.ndarray:
        """Voxel-order slice (p, q) -> displayed image (rows, cols)."""
        out = values.T if self.transpose else values
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def backward(self, image: np.ndarray) -> np.ndarray:
        """Displayed image -> voxel-order slice (the inverse of `forward`)."""
        out = image
        if self.flip_cols:
            out = out[:, ::-1]
        if self.flip_rows:
            out = out[::-1]
        return np.ascontiguousarray(out.T if self.transpose else out)


def display_for(affine: np.ndarray, slice_axis: int) -> Display:
    """The radiological view of slices along `slice_axis`: as a DICOM viewer shows them.

    Axial: patient's left on the right of the image, anterior at the top; coronal: left on the
    right, superior at the top; sagittal: posterior on the right, superior at the top (world
    axes from the affine, RAS). Nothing but the figures depends on this choice.
    """
    axes = world_axes(affine)
    p, q = (a for a in range(3) if a != slice_axis)
    normal = axes[slice_axis][0]
    row_world = {2: 1, 1: 2, 0: 2}[normal]  # axial: rows run along y; coronal, sagittal: along z
    transpose = axes[p][0] != row_world
    row_axis, col_axis = (q, p) if transpose else (p, q)
    # Down the rows the image goes toward posterior / inferior, across toward left / posterior:
    # the negative RAS direction of each, so flip a voxel axis that runs the positive way.
    return Display(bool(transpose), axes[row_axis][1] > 0, axes[col_axis][1] > 0)


def take_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice `index` of a 3-D array along `axis` -> 2-D (the other two axes, in order)."""
    return np.take(volume, index, axis=axis)


@dataclass(frozen=True)
class VolumeView:
    """How a volume's voxel array (I, J, K) becomes the (D, H, W) array a 3-D model sees.

    D runs along the voxel axis closest to axial (`axis`), from superior to inferior; each
    (H, W) plane is that axial slice in the radiological view of `display_for`. So the model's
    volumes do not depend on how a file stores its voxels, and the mid-slices the figures show
    (axial, coronal, sagittal) come out the way a viewer shows them.
    """

    axis: int  # the voxel axis that becomes D
    display: Display  # how each slice along it is shown
    flip_depth: bool  # the axis runs toward superior: reversed so that D = 0 is the top

    def forward(self, volume: np.ndarray) -> np.ndarray:
        """Voxel-order (I, J, K) -> (D, H, W)."""
        out = np.stack([self.display.forward(take_slice(volume, self.axis, k)) for k in range(volume.shape[self.axis])])
        return np.ascontiguousarray(out[::-1] if self.flip_depth else out)

    def backward(self, volume: np.ndarray) -> np.ndarray:
        """(D, H, W) -> voxel order (I, J, K) (the inverse of `forward`)."""
        planes = volume[::-1] if self.flip_depth else volume
        return np.ascontiguousarray(np.stack([self.display.backward(p) for p in planes], axis=self.axis))


def volume_view_for(affine: np.ndarray) -> VolumeView:
    """The `VolumeView` of a volume with this affine (voxel -> world RAS mm)."""
    axis = closest_axial_axis(affine)
    return VolumeView(axis, display_for(affine, axis), world_axes(affine)[axis][1] > 0)
