"""Is the input like the brain MRI the models saw? A cheap plausibility check before synthesis.

The shipped models saw skull-stripped and whole-head brain MRI: positive magnitude intensities, a
head-sized foreground filling part of the field of view, smooth anatomy (neighbouring voxels
correlate) and intensities spread over many levels. Random noise, CT (negative air, bone at
thousands of units) or other non-MRI arrays break at least one of these, and the model would
still return a plausible-looking image. :func:`check_stack` measures five statistics and returns
one warning per statistic far outside the range of the real brain MRI the check was calibrated on
(67 volumes: T1, T2, FLAIR, PD, skull-stripped and whole-head, 1-5.5 mm, and SPM templates; the
thresholds leave a wide margin around what those volumes gave, noted next to each threshold).

A warning does not stop synthesis: the command line prints it, the Slicer module shows it, and
the result carries it in its provenance (``Volume.meta['input_check']``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .conventions import PERCENTILE_HIGH, PERCENTILE_LOW

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = ["InputCheck", "check_stack", "check_volume"]

#: Fraction of voxels clearly below zero (< -1 % of the bright end); real MRI: at most 0.0013.
MAX_NEGATIVE_FRACTION = 0.05
#: Fraction of the field of view that is foreground; real MRI: 0.11 to 0.54, uniform noise: 0.98.
MAX_FOREGROUND_FRACTION = 0.8
#: In-plane extent of the foreground in mm (rows, columns); real MRI: 127 to 215 mm.
HEAD_EXTENT_MM = (60.0, 320.0)
#: Correlation of in-plane neighbours inside the foreground; real MRI: 0.67 to 0.97, noise: 0.0.
MIN_NEIGHBOUR_CORRELATION = 0.4
#: Largest share of foreground voxels in one of 20 normalised intensity bins; real MRI: at most
#: 0.30; CT with its air set to 0 puts ~0.7 of the head in the darkest bin.
MAX_HISTOGRAM_PEAK = 0.55
#: At most this many slices are used for the neighbour and histogram statistics (speed, memory).
SAMPLE_SLICES = 32


@dataclass(frozen=True)
class InputCheck:
    """The statistics of an input and the warnings they raised (empty: looks like brain MRI)."""

    warnings: tuple = ()
    statistics: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.warnings

    def as_dict(self) -> dict:
        """JSON-ready record for provenance: ``{'ok', 'warnings', 'statistics'}``."""
        return {"ok": self.ok, "warnings": list(self.warnings), "statistics": dict(self.statistics)}


def check_stack(stack: np.ndarray, mask_stack: np.ndarray, spacing_mm, normalised: np.ndarray) -> InputCheck:
    """Check a canonical stack ``(slices, rows, cols)`` before synthesis.

    ``stack``: the raw intensities; ``mask_stack``: its foreground mask (bool); ``spacing_mm``:
    (slice, row, col) spacing; ``normalised``: the stack as the model sees it (foreground in
    [-1, 1]). Nothing is modified.
    """
    mask_stack = np.asarray(mask_stack, dtype=bool)
    stats = {}
    warnings = []
    if not mask_stack.any():
        return InputCheck(("the input has no foreground",), {"foreground_fraction": 0.0})
    # Statistics slab by slab or from a sample of slices: no full-volume temporaries (synthesis keeps
    # its memory near input + output, see benchmarks/bench_inference.py).
    step = max(1, stack.shape[0] // SAMPLE_SLICES)
    sample = stack[::step][mask_stack[::step]]
    if sample.size == 0:  # a given mask on a few slices, none of them in the sample: it is small
        sample = stack[mask_stack]
    bright = float(np.percentile(sample.astype(np.float32, copy=False), PERCENTILE_HIGH))
    threshold = np.float32(-0.01 * abs(bright))  # compared in float32 also with an integer stack
    stats["negative_fraction"] = float(sum(np.count_nonzero(stack[k] < threshold) for k in range(stack.shape[0]))
                                       / stack.size)
    if stats["negative_fraction"] > MAX_NEGATIVE_FRACTION:
        warnings.append(f"{100 * stats['negative_fraction']:.0f} % of the voxels are negative; MRI magnitude images "
                        "are positive (is this CT, a phase or a difference map?)")
    stats["foreground_fraction"] = float(mask_stack.mean())
    if stats["foreground_fraction"] > MAX_FOREGROUND_FRACTION:
        warnings.append(f"the foreground fills {100 * stats['foreground_fraction']:.0f} % of the field of view; "
                        "a head fills much less (is this noise or a non-brain image?)")
    rows = np.flatnonzero(mask_stack.any(axis=(0, 2)))
    cols = np.flatnonzero(mask_stack.any(axis=(0, 1)))
    extent = [float((index[-1] - index[0] + 1) * spacing) for index, spacing in zip((rows, cols), spacing_mm[1:])]
    stats["extent_mm"] = [round(value, 1) for value in extent]
    low, high = HEAD_EXTENT_MM
    if not all(low <= value <= high for value in extent):
        warnings.append(f"the foreground spans {extent[0]:.0f} x {extent[1]:.0f} mm in plane; a head spans "
                        f"{low:.0f} to {high:.0f} mm (wrong voxel size in the header, or not a head?)")

    slices = np.flatnonzero(mask_stack.any(axis=(1, 2)))
    slices = slices[:: max(1, len(slices) // SAMPLE_SLICES)]
    # One sampled slice at a time (sums for the correlation, counts for the histogram): no copy of
    # the sample is kept.
    sums = np.zeros(6)  # n, sum x, sum y, sum xx, sum yy, sum xy of horizontally neighbouring voxels
    counts = np.zeros(20)
    for k in slices:
        values, inside = normalised[k], mask_stack[k]
        both = inside[:, :-1] & inside[:, 1:]
        left, right = values[:, :-1][both].astype(np.float64), values[:, 1:][both].astype(np.float64)
        sums += [left.size, left.sum(), right.sum(), (left * left).sum(), (right * right).sum(), (left * right).sum()]
        counts += np.histogram((values[inside] + 1.0) * 0.5, bins=20, range=(0.0, 1.0))[0]
    n, sx, sy, sxx, syy, sxy = sums
    var_x, var_y = (sxx - sx * sx / n, syy - sy * sy / n) if n else (0.0, 0.0)
    correlation = float((sxy - sx * sy / n) / np.sqrt(var_x * var_y)) if n > 100 and var_x > 0 and var_y > 0 else 1.0
    stats["neighbour_correlation"] = round(correlation, 4)
    if correlation < MIN_NEIGHBOUR_CORRELATION:
        warnings.append(f"neighbouring voxels are nearly independent (correlation {correlation:.2f}); "
                        "anatomy is smooth (is this noise?)")
    shares = counts / max(counts.sum(), 1)
    stats["histogram_peak"] = round(float(shares.max()), 4)
    if stats["histogram_peak"] > MAX_HISTOGRAM_PEAK:
        warnings.append(f"{100 * stats['histogram_peak']:.0f} % of the foreground has nearly one intensity; "
                        "brain MRI spreads over many (is this CT or a label map?)")
    stats["negative_fraction"] = round(stats["negative_fraction"], 6)
    stats["foreground_fraction"] = round(stats["foreground_fraction"], 4)
    return InputCheck(tuple(warnings), stats)


def check_volume(volume, mask=None, low: float = PERCENTILE_LOW, high: float = PERCENTILE_HIGH) -> InputCheck:
    """:func:`check_stack` of a :class:`~MRISynthesisLib.volume.Volume` (e.g. before a long run).

    ``mask``: optional foreground mask ``[i, j, k]``; default :func:`preprocessing.brain_mask`.
    The :class:`~MRISynthesisLib.synthesis.Synthesizer` runs the same check on every input.
    """
    from .orientation import to_canonical_slices
    from .preprocessing import normalise_stack

    stack, transform = to_canonical_slices(np.asarray(volume.array, dtype=np.float32), volume.affine)
    mask_stack = None if mask is None else to_canonical_slices(np.asarray(mask, dtype=bool), volume.affine)[0]
    normalised, mask_stack = normalise_stack(stack, mask_stack, low, high)
    return check_stack(stack, mask_stack, transform.canonical_spacing, normalised)
