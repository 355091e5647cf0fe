"""Preprocessing shared by inference and training: masks, intensity normalisation, slice fitting.

All functions take canonical slice stacks (see :mod:`MRISynthesisLib.orientation`) or plain
arrays; none of them knows about files, Slicer or training.

Intensity convention
--------------------
Inputs are scaled so that the ``low`` and ``high`` percentiles (0.5 and 99.5 by default) of the
voxels inside the foreground mask map to 0 and 1, clipped to [0, 1]; the model sees ``2*x - 1``
in [-1, 1]. Synthetic outputs are returned in the same normalised units: 0 is background and 1 is
the target contrast's 99.5th percentile inside the brain ("T2-like units", 0..1, float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .conventions import PERCENTILE_HIGH, PERCENTILE_LOW
from .errors import InputError

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = [
    "SliceGeometry", "brain_mask", "fill_slice_holes", "foreground_slices", "gather_context",
    "looks_skull_stripped", "normalisation_range", "normalise_stack", "percentile_normalise",
    "resize_bilinear", "scale_to_unit", "to_model_range"]

#: Fraction of exactly-zero voxels above which a volume is treated as skull-stripped / masked.
ZERO_BACKGROUND_FRACTION = 0.05
#: Skull-stripped data has little foreground on the volume's outer faces (a raw scan's air
#: covers most of its first and last slices); the largest face fraction must stay below this.
MAX_FACE_FOREGROUND_IN_STRIPPED = 0.5
#: A slice is synthesised when at least this fraction of its voxels is foreground.
MIN_SLICE_FOREGROUND = 0.001


def brain_mask(array: np.ndarray) -> np.ndarray:
    """Foreground mask of a 3D (or 2D) image.

    Two cases, told apart from the data:

    * skull-stripped / masked data: many voxels are exactly 0 (or slightly negative from
      interpolation) and the positive region stays away from the volume's outer faces (a raw
      scan's air is positive up to the faces, even when the scanner zero-padded it), so the mask
      is ``array > 0``;
    * anything else (raw head scans, including scans zero-padded by the scanner): a threshold at
      half of Otsu's threshold of the positive intensities (clipped to their 1st..99th
      percentiles), then hole filling and the largest connected component: a solid head mask.

    Returns a boolean array of the input's shape. Integer arrays (e.g. int16 as stored) give the
    mask of their float32 values, without a float32 copy.
    """
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32, copy=False)  # no copy for float32 (also for strided views)
    if array.size == 0:
        raise InputError("cannot compute a mask of an empty array")
    positive = array > 0
    count = int(np.count_nonzero(positive))
    if count == 0:
        return positive
    if _stripped(array.size, count, positive):
        return positive
    # The threshold is a statistic: a regular subsample of at most ~2 M voxels gives the same
    # value without full-volume copies.
    values = _regular_subsample(array, positive, max(1, count // 2_000_000)).astype(np.float32, copy=False)
    lo, hi = np.percentile(values, [1, 99])
    if hi <= lo:
        return positive
    from skimage.filters import threshold_otsu

    threshold = 0.5 * float(threshold_otsu(np.clip(values, lo, hi)))
    del positive, values
    mask = ndimage.binary_fill_holes(array > np.float32(threshold))  # compared in float32 whatever the type
    return _largest_component(mask)


#: Largest hole (in mm^2, per axial slice) that :func:`fill_slice_holes` fills. On the shared
#: subjects the zeros inside a skull-stripped brain are specks (90 % of them 1-6 voxels of about
#: 1 mm^2, the largest 148); the regions a brain mask leaves out on purpose (e.g. a brain stem
#: cut from a CBICA mask) are mostly hundreds to thousands of mm^2 and stay out.
MAX_HOLE_AREA_MM2 = 100.0


def fill_slice_holes(masks: np.ndarray, spacing_mm=(1.0, 1.0),
                     max_area_mm2: float = MAX_HOLE_AREA_MM2) -> np.ndarray:
    """``masks`` (N, rows, cols) with the small holes of every 2D slice filled (a new boolean array).

    A skull-stripped T1 often holds exact zeros inside the brain (dark ventricular CSF clipped
    by bias correction or by the stripping tool); :func:`brain_mask` leaves them out, and an
    output written only inside that mask would show black specks in the ventricles. Holes of
    at most ``max_area_mm2`` (pixel size ``spacing_mm`` = (row, column) spacing) are filled;
    larger enclosed regions stay out."""
    masks = np.asarray(masks, dtype=bool)
    max_pixels = max_area_mm2 / float(spacing_mm[0] * spacing_mm[1])
    out = masks.copy()
    for index, mask in enumerate(masks):
        # A hole is a 4-connected region outside the mask that does not touch the slice's border
        # (what ndimage.binary_fill_holes fills; one labelling instead of its repeated dilations).
        labels, count = ndimage.label(~mask)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        small = sizes <= max_pixels
        small[0] = False
        small[labels[0]] = small[labels[-1]] = small[labels[:, 0]] = small[labels[:, -1]] = False
        out[index] |= small[labels]
    return out


def _regular_subsample(array: np.ndarray, selected: np.ndarray, step: int) -> np.ndarray:
    """``array[selected][::step]``, gathered slab by slab (never a full-size copy)."""
    if step == 1 or array.ndim == 0:
        return masked_values(array, selected)
    pieces, offset = [], 0
    for part in slabs(array.shape[0], array.shape):
        values = masked_values(array[part], selected[part])
        pieces.append(values[(-offset) % step::step])
        offset += values.size
    return np.concatenate(pieces)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 6-connected component of ``mask`` (labels in 16 bits when they fit: half the memory)."""
    try:
        labels, count = ndimage.label(mask, output=np.uint16)
    except RuntimeError:  # more than 65535 components
        labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def looks_skull_stripped(array: np.ndarray) -> bool:
    """True when ``array`` looks skull-stripped or masked: more than 5 % of its voxels are <= 0 and
    its positive voxels stay away from the volume's outer faces (a whole-head scan's air is
    positive up to the faces). The test :func:`brain_mask` uses to choose ``array > 0``."""
    positive = np.asarray(array) > 0
    return _stripped(positive.size, int(np.count_nonzero(positive)), positive)


def _stripped(size: int, foreground: int, positive: np.ndarray) -> bool:
    zero_background = (size - foreground) / size > ZERO_BACKGROUND_FRACTION
    return bool(foreground) and zero_background and max_face_fraction(positive) < MAX_FACE_FOREGROUND_IN_STRIPPED


def max_face_fraction(mask: np.ndarray) -> float:
    """Largest fraction of ``True`` voxels on any outer face of the array."""
    fractions = []
    for axis in range(mask.ndim):
        for index in (0, -1):
            face = mask[(slice(None),) * axis + (index,)]  # a view (np.take copies, slowly on strided arrays)
            fractions.append(float(face.mean()))
    return max(fractions)


def slabs(n: int, shape, voxels: int = 4_000_000):
    """``slice`` objects cutting axis 0 of an array of ``shape`` into pieces of about ``voxels`` voxels."""
    step = max(1, n * voxels // max(1, int(np.prod(shape))))
    return [slice(start, min(n, start + step)) for start in range(0, n, step)]


def contiguous_copy(array: np.ndarray, dtype=None) -> np.ndarray:
    """C-contiguous copy of a (strided) array: read in memory order first, then reordered.

    Going through a memory-order copy is about twice as fast as one transposing copy for the
    canonical views of volumes, whose innermost axis often has the largest stride."""
    if array.flags.c_contiguous:
        return np.array(array, dtype=dtype)
    return np.ascontiguousarray(np.array(array, dtype=dtype, order="K"))


def masked_values(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``array[mask]`` (same values, same order), gathered slab by slab: fast on strided views too."""
    if array.flags.c_contiguous and mask.flags.c_contiguous:
        return array[mask]
    pieces = [contiguous_copy(array[part])[contiguous_copy(mask[part], bool)]
              for part in slabs(array.shape[0], array.shape, 1_000_000)]
    return np.concatenate(pieces) if pieces else array[mask]


def percentile_normalise(array: np.ndarray, mask: np.ndarray, low: float = PERCENTILE_LOW,
                         high: float = PERCENTILE_HIGH
                         ) -> tuple[np.ndarray, tuple[float, float]]:
    """Scale so the ``low``/``high`` percentiles inside ``mask`` become 0/1; clip to [0, 1]; 0 outside.

    Returns the float32 array and the (lo, hi) intensities used.
    """
    array = np.asarray(array, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    lo, hi = normalisation_range(array, mask, low, high)
    return scale_to_unit(array, mask, lo, hi), (lo, hi)


def normalisation_range(array: np.ndarray, mask: np.ndarray, low: float = PERCENTILE_LOW,
                        high: float = PERCENTILE_HIGH
                        ) -> tuple[float, float]:
    """The ``low`` and ``high`` percentiles of ``array`` inside ``mask`` (exact, as ``np.percentile``).

    Errors: no foreground, or a constant foreground."""
    if not mask.any():
        raise InputError("the volume has no foreground voxels (it is empty or constant)")
    # One copy of the foreground values (float32, as the voxels are synthesised), partitioned in place.
    values = masked_values(array, mask).astype(np.float32, copy=False)
    lo, hi = (float(v) for v in np.percentile(values, [low, high], overwrite_input=True))
    if not hi > lo:
        if values.min() == values.max():
            raise InputError(f"the volume's foreground is constant (intensity {lo:g}); nothing to synthesise from")
        raise InputError(f"the {low:g}th and {high:g}th percentiles of the foreground are equal ({lo:g}), so it "
                         "cannot be normalised with them (most of the foreground has one intensity)")
    return lo, hi


def scale_to_unit(array: np.ndarray, mask: np.ndarray, lo: float, hi: float, in_place: bool = False) -> np.ndarray:
    """``(array - lo) / (hi - lo)`` clipped to [0, 1], 0 outside ``mask``, float32: a new array, or
    ``array`` itself with ``in_place`` (it must then be a float32 array the caller owns).

    Elementwise, so a slab of slices gives bit for bit the same values as the whole volume."""
    out = np.subtract(array, np.float32(lo), dtype=np.float32, out=array if in_place else None)
    out /= np.float32(hi - lo)
    np.clip(out, 0.0, 1.0, out=out)
    out[~mask] = 0.0
    return out


def to_model_range(normalised: np.ndarray) -> np.ndarray:
    """[0, 1] -> the model's [-1, 1], in place (background 0 becomes -1)."""
    normalised *= 2.0
    normalised -= 1.0
    return normalised


def normalise_stack(stack: np.ndarray, mask_stack: np.ndarray | None = None, low: float = PERCENTILE_LOW,
                    high: float = PERCENTILE_HIGH) -> tuple[np.ndarray, np.ndarray]:
    """Canonical stack -> model input in [-1, 1] (background -1) and its foreground mask.

    The one place where inference and training turn raw intensities into model values: the mask
    is :func:`brain_mask` unless given, then :func:`percentile_normalise`, then ``2*x - 1``.
    """
    if mask_stack is None:
        mask_stack = brain_mask(stack)
    normalised, _ = percentile_normalise(stack, mask_stack, low, high)
    return to_model_range(normalised), mask_stack


def foreground_slices(mask_stack: np.ndarray, min_fraction: float = MIN_SLICE_FOREGROUND) -> np.ndarray:
    """Indices of the slices (axis 0) whose foreground fraction is at least ``min_fraction``."""
    mask_stack = np.asarray(mask_stack, dtype=bool)
    counts = mask_stack.sum(axis=tuple(range(1, mask_stack.ndim)), dtype=np.intp)  # no copy, any layout
    per_slice = counts / float(np.prod(mask_stack.shape[1:]))
    return np.flatnonzero(per_slice >= max(min_fraction, 1e-12))


def gather_context(stack: np.ndarray, indices: np.ndarray, context: int) -> np.ndarray:
    """Slices ``indices`` of ``stack`` with ``context`` neighbours on each side as channels.

    Returns ``(len(indices), 2*context+1, rows, cols)``; neighbours beyond the ends repeat the
    edge slice. ``context=0`` gives single-slice (2D) input.
    """
    indices = np.asarray(indices)
    offsets = np.arange(-context, context + 1)
    neighbour = np.clip(indices[:, None] + offsets[None, :], 0, stack.shape[0] - 1)
    if not stack.flags.c_contiguous and neighbour.size:
        # Strided view (e.g. the canonical view of a volume): one contiguous copy of the slabs
        # spanned (fast strided copy) when they are few, then the gather inside it.
        first, last = int(neighbour.min()), int(neighbour.max())
        if last - first + 1 <= 2 * neighbour.size:
            return contiguous_copy(stack[first:last + 1])[neighbour - first]
    return stack[neighbour]


@dataclass(frozen=True)
class SliceGeometry:
    """Maps canonical slices (rows x cols at ``spacing`` mm) to the model's square grid and back.

    Each slice is resampled in plane to ``model_spacing`` mm (so a brain has about the same size in
    pixels whatever the scanner's field of view), shrunk further if it would not fit, then centred
    and padded to ``model_size`` x ``model_size``. ``model_spacing=None`` skips the
    physical resampling and only fits the slice into the grid.
    """

    rows: int
    cols: int
    spacing: tuple  # (row, col) mm
    model_size: int
    model_spacing: float | None = 1.0

    @property
    def resized_shape(self) -> tuple[int, int]:
        if self.model_spacing is None:
            scale_r = scale_c = 1.0
        else:
            scale_r = self.spacing[0] / self.model_spacing
            scale_c = self.spacing[1] / self.model_spacing
        r, c = self.rows * scale_r, self.cols * scale_c
        shrink = min(1.0, self.model_size / max(r, c))
        return max(1, int(round(r * shrink))), max(1, int(round(c * shrink)))

    def _pads(self):
        rr, cc = self.resized_shape
        top, left = (self.model_size - rr) // 2, (self.model_size - cc) // 2
        return top, left

    def to_model(self, slices):
        """``(n, C, rows, cols)`` torch tensor or float32 numpy array -> ``(n, C, model_size,
        model_size)`` of the same kind, background -1. Arrays are resampled with
        :func:`resize_bilinear`, PyTorch's interpolation in numpy (within 1e-6 of it)."""
        rr, cc = self.resized_shape
        if isinstance(slices, np.ndarray):
            x = slices
            if (rr, cc) != (self.rows, self.cols):
                x = resize_bilinear(x, (rr, cc), antialias=rr < self.rows or cc < self.cols)
            top, left = self._pads()
            out = np.full(x.shape[:2] + (self.model_size, self.model_size), -1.0, dtype=np.float32)
            out[:, :, top:top + rr, left:left + cc] = x
            return out
        import torch
        import torch.nn.functional as F

        x = slices
        if (rr, cc) != (self.rows, self.cols):
            x = F.interpolate(x, size=(rr, cc), mode="bilinear", align_corners=False,
                              antialias=rr < self.rows or cc < self.cols)
        top, left = self._pads()
        out = torch.full((x.shape[0], x.shape[1], self.model_size, self.model_size), -1.0,
                         dtype=x.dtype, device=x.device)
        out[:, :, top:top + rr, left:left + cc] = x
        return out

    def from_model(self, slices):
        """``(n, C, model_size, model_size)`` -> ``(n, C, rows, cols)`` (inverse of :meth:`to_model`),
        a torch tensor or a numpy array as given."""
        rr, cc = self.resized_shape
        top, left = self._pads()
        x = slices[:, :, top:top + rr, left:left + cc]
        if (rr, cc) != (self.rows, self.cols) and isinstance(x, np.ndarray):
            x = resize_bilinear(x, (self.rows, self.cols), antialias=self.rows < rr or self.cols < cc)
        elif (rr, cc) != (self.rows, self.cols):
            import torch.nn.functional as F

            x = F.interpolate(x, size=(self.rows, self.cols), mode="bilinear", align_corners=False,
                              antialias=self.rows < rr or self.cols < cc)
        return x


def resize_bilinear(slices: np.ndarray, size, antialias: bool) -> np.ndarray:
    """``(n, C, rows, cols)`` float32 -> ``(n, C, *size)``: PyTorch's ``F.interpolate(...,
    mode="bilinear", align_corners=False, antialias=antialias)`` in numpy (within 1e-6 of it on
    values in [-1, 1]), for engines that run without PyTorch. Separable: one weight matrix per axis
    (:func:`_interpolation_weights`)."""
    rows = _interpolation_weights(slices.shape[-2], int(size[0]), antialias)
    cols = _interpolation_weights(slices.shape[-1], int(size[1]), antialias)
    return np.matmul(np.matmul(rows, np.asarray(slices, dtype=np.float32)), cols.T)


def _interpolation_weights(in_size: int, out_size: int, antialias: bool) -> np.ndarray:
    """``(out_size, in_size)`` float32 weights of PyTorch's bilinear interpolation along one axis
    (``align_corners=False``). With ``antialias`` the triangle filter is widened by the
    downsampling factor and each output's weights are normalised to sum to 1 (PyTorch's
    anti-aliased kernel); without, each output mixes the two nearest inputs (edges clamped).
    Positions are rounded to float32 where PyTorch's CPU kernels keep them in float32 (their
    rounding moves weights by up to 1e-5 on a 512-pixel axis)."""
    f32 = np.float32
    scale = f32(f32(in_size) / f32(out_size))
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    if antialias:
        support = f32(scale) if scale >= 1.0 else f32(1.0)
        invscale = f32(1.0 / float(scale)) if scale >= 1.0 else f32(1.0)
        for index in range(out_size):
            centre = f32(float(scale) * (index + 0.5))
            first = max(int(float(f32(centre - support)) + 0.5), 0)  # int() truncates towards zero, as C++ casts
            last = min(int(float(f32(centre + support)) + 0.5), in_size)
            offsets = (np.arange(first, last) - centre).astype(np.float32).astype(np.float64) + 0.5
            taps = np.maximum(f32(0.0), f32(1.0) - np.abs((offsets * float(invscale)).astype(np.float32)))
            total = taps.sum(dtype=np.float32)
            if total != 0:
                taps = taps / total
            weights[index, first:last] = taps
    else:
        # The source position rounded once (as PyTorch's fused multiply-add), from a float32 scale.
        source = np.maximum(float(scale) * (np.arange(out_size) + 0.5) - 0.5, 0.0).astype(np.float32)
        lower = np.minimum(np.floor(source).astype(np.intp), in_size - 1)
        upper = np.minimum(lower + 1, in_size - 1)
        fraction = np.clip(source - lower.astype(np.float32), 0.0, 1.0).astype(np.float32)
        np.add.at(weights, (np.arange(out_size), lower), f32(1.0) - fraction)
        np.add.at(weights, (np.arange(out_size), upper), fraction)
    return weights
