"""The two baselines without a network, in the core's output units (0 background, 1 = p99.5).

Both take the source contrast normalised by the core
(:func:`MRISynthesisLib.preprocessing.percentile_normalise`, 0.5..99.5 percentiles inside the
brain mask -> [0, 1]) and return a synthetic target in the same units, 0 outside the mask, so
they are scored exactly like the Synthesizer's output.

- :func:`inverted_intensities`: ``1 - source`` inside the mask (T1 -> T2 and its mirror T2 -> T1;
  the trivial contrast flip every model must beat).
- :class:`IntensityLookup`: a per-intensity mapping fitted on the training subjects: the normalised
  source range [0, 1] is cut into ``bins`` equal-width bins, each bin stores the mean normalised
  target of the training voxels that fall in it, and new voxels get the value linearly
  interpolated between bin centres (``numpy.interp``; constant beyond the first/last centre).
  Bins without training voxels are skipped (interpolation bridges them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from MRISynthesisLib.errors import InputError


def inverted_intensities(source_normalised: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``1 - source`` inside ``mask``, 0 outside (float32, the input's shape)."""
    source = np.asarray(source_normalised, dtype=np.float32)
    return np.where(np.asarray(mask, dtype=bool), 1.0 - source, 0.0).astype(np.float32)


class IntensityLookup:
    """Normalised source intensity -> mean normalised target intensity, by bins (see module docstring)."""

    def __init__(self, bins: int = 64):
        if int(bins) < 2:
            raise InputError(f"the lookup needs at least 2 bins, got {bins}")
        self.bins = int(bins)
        self._sums = np.zeros(self.bins, dtype=np.float64)
        self._counts = np.zeros(self.bins, dtype=np.int64)

    def _bin_of(self, values: np.ndarray) -> np.ndarray:
        return np.clip((values * self.bins).astype(np.int64), 0, self.bins - 1)

    def add(self, source_normalised, target_normalised, mask) -> "IntensityLookup":
        """Accumulate the voxels of one training subject (all arrays of one shape, values in [0, 1])."""
        source = np.asarray(source_normalised, dtype=np.float64)
        target = np.asarray(target_normalised, dtype=np.float64)
        mask = np.asarray(mask, dtype=bool)
        if not (source.shape == target.shape == mask.shape):
            raise InputError(f"source {source.shape}, target {target.shape} and mask {mask.shape} must have one shape")
        index = self._bin_of(source[mask])
        self._sums += np.bincount(index, weights=target[mask], minlength=self.bins)
        self._counts += np.bincount(index, minlength=self.bins)
        return self

    @property
    def centres(self) -> np.ndarray:
        return (np.arange(self.bins) + 0.5) / self.bins

    @property
    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """``(bin centres, mean target)`` of the bins that received training voxels."""
        filled = self._counts > 0
        if not filled.any():
            raise InputError("the lookup has not seen any training voxel; call add() with a non-empty mask first")
        return self.centres[filled], self._sums[filled] / self._counts[filled]

    def predict(self, source_normalised, mask) -> np.ndarray:
        """The mapped intensities inside ``mask``, 0 outside (float32)."""
        centres, means = self.table
        source = np.asarray(source_normalised, dtype=np.float64)
        out = np.interp(source, centres, means)
        return np.where(np.asarray(mask, dtype=bool), out, 0.0).astype(np.float32)

    def to_json(self) -> str:
        return json.dumps({"bins": self.bins, "sums": self._sums.tolist(), "counts": self._counts.tolist()})

    @classmethod
    def from_json(cls, text: str) -> "IntensityLookup":
        data = json.loads(text)
        lookup = cls(data["bins"])
        lookup._sums = np.asarray(data["sums"], dtype=np.float64)
        lookup._counts = np.asarray(data["counts"], dtype=np.int64)
        return lookup

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path) -> "IntensityLookup":
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
