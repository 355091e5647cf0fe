"""Reorient any volume to one canonical axial slice stack, and back exactly.

Canonical stack: ``stack[s, r, c]`` with
  s: slices from inferior to superior,
  r: rows from anterior (top) to posterior (bottom),
  c: columns from the patient's right to left (radiological display).
This is the array in nibabel's "LPS" axis order, transposed to (k, j, i).

Only flips and axis permutations are used (chosen with ``nibabel.orientations.io_orientation``,
which assigns each voxel axis to the closest anatomical axis), so :func:`from_canonical_slices`
is an exact inverse and the output keeps the input's shape, matrix and voxel values bit for bit.
Oblique acquisitions are handled on their closest voxel planes: the "axial" slices of an oblique
volume are its voxel planes closest to the true axial plane; nothing is resampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel import orientations as nio

from .errors import InputError

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = ["CanonicalTransform", "find_axial_axis", "from_canonical_slices", "to_canonical_slices"]

_LPS = nio.axcodes2ornt(("L", "P", "S"))


def _voxel_orientation(affine: np.ndarray) -> np.ndarray:
    ornt = nio.io_orientation(np.asarray(affine, dtype=np.float64))
    if np.isnan(ornt).any():
        raise InputError("cannot determine the volume's orientation: its matrix has a degenerate axis")
    return ornt


def find_axial_axis(affine: np.ndarray) -> int:
    """Index (0=i, 1=j, 2=k) of the voxel axis closest to superior-inferior.

    Decided from the direction matrix, not assumed to be the last axis: a sagittal or coronal
    acquisition stores its axial direction in i or j.
    """
    ornt = _voxel_orientation(affine)
    return int(np.flatnonzero(ornt[:, 0] == 2)[0])


@dataclass(frozen=True)
class CanonicalTransform:
    """What :func:`to_canonical_slices` did, so :func:`from_canonical_slices` can undo it."""

    original_shape: tuple
    original_ornt: np.ndarray
    canonical_spacing: tuple  # mm between slices, rows, columns

    @property
    def stack_shape(self) -> tuple:
        lps_shape = [0, 0, 0]
        for axis, (target, _) in enumerate(self.original_ornt):
            lps_shape[int(target)] = self.original_shape[axis]
        return (lps_shape[2], lps_shape[1], lps_shape[0])


def to_canonical_slices(array: np.ndarray, affine: np.ndarray, copy: bool = True
                        ) -> tuple[np.ndarray, CanonicalTransform]:
    """``array[i, j, k]`` -> ``stack[slice, row, col]`` in the canonical axial orientation.

    A C-contiguous copy, or with ``copy=False`` a strided view of ``array`` (flips and axis swaps
    only: no memory is used, and writing into the view writes into ``array``)."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"expected a 3D array, got shape {array.shape}")
    ornt = _voxel_orientation(affine)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    lps_spacing = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        lps_spacing[int(target)] = float(spacing[axis])
    lps = nio.apply_orientation(array, nio.ornt_transform(ornt, _LPS))
    stack = lps.transpose(2, 1, 0)
    if copy:
        stack = np.ascontiguousarray(stack)
    transform = CanonicalTransform(tuple(array.shape), ornt, (lps_spacing[2], lps_spacing[1], lps_spacing[0]))
    return stack, transform


def from_canonical_slices(stack: np.ndarray, transform: CanonicalTransform) -> np.ndarray:
    """Exact inverse of :func:`to_canonical_slices`: ``stack[s, r, c]`` -> ``array[i, j, k]``."""
    stack = np.asarray(stack)
    if stack.shape != transform.stack_shape:
        raise InputError(f"slice stack has shape {stack.shape}, expected {transform.stack_shape}")
    lps = stack.transpose(2, 1, 0)
    array = nio.apply_orientation(lps, nio.ornt_transform(_LPS, transform.original_ornt))
    return np.ascontiguousarray(array)
