"""A volume is a float32 array plus the 4x4 matrix that places its voxels in patient space.

Axis order: ``Volume.array`` is indexed ``[i, j, k]`` exactly as nibabel returns NIfTI data.
Slicer's ``slicer.util.arrayFromVolume`` returns the same voxels indexed ``[k, j, i]``;
use :meth:`Volume.from_kji` and :meth:`Volume.array_kji` to cross that boundary.
``affine`` maps (i, j, k, 1) to (R, A, S, 1) in millimetres (RAS, as in nibabel and Slicer's
IJKToRAS matrix).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = ["Volume"]

#: Largest coordinate or voxel step accepted in an index-to-RAS matrix (mm): a kilometre.
MAX_COORDINATE_MM = 1e6


@dataclass(frozen=True, eq=False)
class Volume:
    """3D scalar image: ``array[i, j, k]`` (float32) and ``affine`` (4x4 ijk->RAS, mm)."""

    array: np.ndarray
    affine: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        array = np.asarray(self.array)
        affine = np.asarray(self.affine, dtype=np.float64)
        if array.ndim != 3:
            raise InputError(f"expected a 3D volume, got an array with shape {array.shape}")
        if affine.shape != (4, 4):
            raise InputError(f"expected a 4x4 index-to-RAS matrix, got shape {affine.shape}")
        if not np.all(np.isfinite(affine)):
            raise InputError("the index-to-RAS matrix contains NaN or infinite values (a corrupt header?)")
        if np.abs(affine).max() > MAX_COORDINATE_MM:  # would overflow float32 (NIfTI) or is no scanner's
            raise InputError(f"the index-to-RAS matrix has a value of {np.abs(affine).max():g} mm; at most "
                             f"{MAX_COORDINATE_MM:g} mm (a kilometre) is accepted (a corrupt header?)")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise InputError("the index-to-RAS matrix is singular (a voxel axis has no direction)")
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "affine", affine)

    @classmethod
    def from_kji(cls, array_kji: np.ndarray, ijk_to_ras: np.ndarray, meta: dict | None = None) -> "Volume":
        """Build from a Slicer-ordered array ``[k, j, i]`` and its IJKToRAS matrix."""
        array_kji = np.asarray(array_kji)
        if array_kji.ndim != 3:
            raise InputError(f"expected a 3D scalar volume, got an array with shape {array_kji.shape}")
        return cls(np.ascontiguousarray(array_kji.transpose(2, 1, 0)), np.array(ijk_to_ras, dtype=np.float64),
                   dict(meta or {}))

    def array_kji(self) -> np.ndarray:
        """The voxels indexed ``[k, j, i]`` (Slicer's ``arrayFromVolume`` order), C-contiguous."""
        return np.ascontiguousarray(self.array.transpose(2, 1, 0))

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k (lengths of the affine's columns)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, new voxels (same shape required)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise InputError(f"array shape {array.shape} does not match the volume's shape {self.array.shape}")
        return Volume(array, self.affine.copy(), dict(self.meta))

    def same_geometry(self, other: "Volume", atol: float = 1e-6) -> bool:
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol, rtol=0)
