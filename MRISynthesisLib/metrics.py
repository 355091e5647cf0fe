"""Image-similarity metrics for a synthesized MRI contrast against its reference.

SSIM and PSNR numbers are dominated by conventions (intensity normalisation, ``data_range``,
mask, pooling), so :func:`evaluate` records every convention it used next to the numbers, and
:func:`format_table` prints them under the table.

Conventions (all of them are also stated in the ``conventions`` entry of :func:`evaluate`):

- Arrays are 3D ``(slices, rows, cols)`` when ``slice_axis=0`` (any axis may be the slice axis)
  or a single 2D slice. Metrics are computed in float64.
- Normalisation (:func:`normalise_for_metrics`) is applied to prediction and reference
  separately, each with statistics taken inside the same mask. ``'percentile'`` (default, as in
  the BraTS BraSyn evaluation) clips each volume to its own p0.5..p99.5 inside the mask and maps
  that to [0, 1]; ``'minmax'`` does the same with the mask's min..max; ``'zscore'`` subtracts the
  mask mean and divides by the mask standard deviation; ``'none'`` keeps the values.
  ``'model-units'`` normalises only the reference, exactly as training validation and the
  README's model table do (:func:`MRISynthesisLib.preprocessing.percentile_normalise`: p0.5..p99.5
  in the mask -> [0, 1], 0 outside the mask) and compares the synthetic volume as it is, since a
  model's output is already in those units; the command line uses it by default.
- ``data_range`` (SSIM constants, PSNR peak) is 1.0 after ``'percentile'`` or ``'minmax'``,
  otherwise max - min of the normalised reference inside the mask. It is never taken from the
  dtype.
- Mask: the given one, else the foreground ``ref > 0``, else (``ref`` has no positive voxel)
  all voxels.
- Region ``'mask'``: MAE/MSE/PSNR/MI over mask voxels; SSIM = full SSIM map averaged over mask
  voxels. Region ``'whole_slice'``: all voxels of the slices that contain mask voxels (for
  comparison with papers that did not mask). The SSIM map is averaged over all those voxels,
  borders included (scikit-image's own scalar crops a (win_size - 1) / 2 = 5 pixel border).
- SSIM is Wang et al. 2004: Gaussian window sigma 1.5 (11 x 11, truncated at 3.5 sigma),
  K1 0.01, K2 0.03, population covariance, computed in 2D on each slice along ``slice_axis``;
  slices must be at least 11 x 11.
- Pooling ``'per-volume'``: all voxels of the region pooled (PSNR from the pooled MSE, SSIM maps
  of all slices pooled). ``'per-slice'``: one value per slice that contains mask voxels (empty
  slices are never included) and their unweighted mean; the volume's ``data_range`` is used.
- PSNR is ``10 log10(data_range^2 / MSE)`` in dB and ``inf`` when MSE is 0. All numbers are
  python floats; :func:`json_compatible` turns ``inf`` into ``null`` with a note, for strict JSON.
- A mask of fewer than :data:`MIN_MASK_VOXELS` voxels gives numbers that mean little (one voxel
  scores perfectly); :func:`evaluate` then adds a ``warnings`` entry.
- Mutual information: joint histogram with ``bins`` x ``bins`` (default 64) equal-width bins,
  each axis spanning that image's own min..max over the selected voxels;
  MI = H(A) + H(B) - H(A,B) in bits; NMI = (H(A) + H(B)) / H(A,B) (Studholme), 1 (independent)
  to 2 (one image determines the other); NMI is 1.0 when H(A,B) = 0 (both images constant).
"""

from __future__ import annotations

import math

import numpy as np
from skimage.feature import graycomatrix, graycoprops
from skimage.metrics import structural_similarity

from .conventions import PERCENTILE_HIGH, PERCENTILE_LOW
from .errors import InputError

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = [
    "EVALUATE_NORMALISATIONS", "METRIC_NAMES", "MIN_MASK_VOXELS", "Score", "absolute_error_map",
    "describe_conventions", "evaluate", "format_table", "glcm_features", "json_compatible", "mae", "mse",
    "mutual_information", "normalise_for_metrics", "psnr", "relative_error_map", "score", "ssim"]

NORMALISATIONS = ("none", "minmax", "percentile", "zscore")
#: :func:`evaluate` also accepts 'model-units' (reference normalised, synthetic compared as it is).
EVALUATE_NORMALISATIONS = NORMALISATIONS + ("model-units",)
#: Fewer mask voxels than this (1 cm^3 at 1 mm) and :func:`evaluate` warns that the numbers mean little.
MIN_MASK_VOXELS = 1000
METRIC_NAMES = ("mae", "mse", "psnr", "ssim", "mi_bits", "nmi")
GLCM_PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")

SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# skimage's window for gaussian_weights: 2 * int(3.5 * sigma + 0.5) + 1
SSIM_WINDOW = 2 * int(3.5 * SSIM_SIGMA + 0.5) + 1
SSIM_CONVENTION = "gaussian sigma 1.5, K1 0.01, K2 0.03, population covariance, map averaged in mask"

_DISPLAY_NAMES = {
    "mae": "MAE",
    "mse": "MSE",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "mi_bits": "MI (bits)",
    "nmi": "NMI",
}


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------

def _as_image(array, name: str) -> np.ndarray:
    """Return ``array`` as a finite float64 2D or 3D numpy array, else raise InputError."""
    try:
        image = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name} must be a numeric array, got {type(array).__name__}: {error}") from None
    if image.ndim not in (2, 3):
        raise InputError(f"{name} must be a 2D or 3D array, got shape {image.shape}")
    if image.size == 0:
        raise InputError(f"{name} is empty (shape {image.shape})")
    non_finite = int(np.count_nonzero(~np.isfinite(image)))
    if non_finite:
        raise InputError(f"{name} contains {non_finite} NaN or infinite values; expected finite values only")
    return image


def _as_pair(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    pred = _as_image(pred, "pred")
    ref = _as_image(ref, "ref")
    if pred.shape != ref.shape:
        raise InputError(f"pred has shape {pred.shape} but ref has shape {ref.shape}; expected the same shape")
    return pred, ref


def _as_mask(mask, shape: tuple[int, ...]) -> np.ndarray:
    """Return a boolean mask of ``shape`` (all True when ``mask`` is None); raise if it is empty."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise InputError(f"mask has shape {mask.shape} but the images have shape {shape}; expected the same shape")
    if mask.dtype != bool:
        if not np.issubdtype(mask.dtype, np.number) or not np.all(np.isfinite(mask)):
            raise InputError(f"mask must be boolean or finite numbers (non-zero = inside), got dtype {mask.dtype}")
        mask = mask != 0
    if not mask.any():
        raise InputError(f"mask of shape {shape} is empty; expected at least one voxel inside")
    return mask


def _resolve_mask(mask, ref: np.ndarray) -> tuple[np.ndarray, str]:
    """The mask :func:`evaluate` uses, and how it was chosen."""
    if mask is not None:
        return _as_mask(mask, ref.shape), "given"
    foreground = ref > 0
    if foreground.any():
        return foreground, "foreground (ref > 0)"
    return np.ones(ref.shape, dtype=bool), "all voxels (ref has no voxel > 0)"


def _check_data_range(data_range) -> float:
    try:
        value = float(data_range)
    except (TypeError, ValueError):
        raise InputError(f"data_range must be a positive number, got {data_range!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"data_range must be a positive finite number, got {data_range!r}")
    return value


def _check_slice_axis(slice_axis, ndim: int) -> int:
    if ndim == 2:
        return 0  # a 2D image is one slice; slice_axis is not used
    if not isinstance(slice_axis, (int, np.integer)) or not -ndim <= slice_axis < ndim:
        raise InputError(f"slice_axis must be an axis of the {ndim}D images (0, 1 or 2), got {slice_axis!r}")
    return int(slice_axis) % ndim


def _slice_stack(array: np.ndarray, slice_axis: int) -> np.ndarray:
    """View of ``array`` as ``(slices, rows, cols)``; a 2D array becomes one slice."""
    if array.ndim == 2:
        return array[np.newaxis]
    return np.moveaxis(array, slice_axis, 0)


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

def normalise_for_metrics(array, mask, mode: str = "percentile") -> tuple[np.ndarray, dict]:
    """Normalise one image or volume before computing metrics, with statistics from ``mask``.

    Args:
        array: 2D or 3D image.
        mask: boolean array of the same shape (None: all voxels); statistics use its voxels only,
            the transform is applied to every voxel.
        mode: ``'none'`` (values kept), ``'minmax'`` (clip to the mask's min..max, map to [0, 1]),
            ``'percentile'`` (clip to the mask's p0.5..p99.5, map to [0, 1]) or ``'zscore'``
            ((x - mean) / std over the mask; std 0 is treated as 1).

    Returns:
        ``(normalised float64 array, info)``; ``info`` holds ``mode`` and the statistics used
        (``low``/``high`` or ``mean``/``std``) as python floats. A volume that is constant in the
        mask maps to all zeros under ``'minmax'`` and ``'percentile'``.
    """
    image = _as_image(array, "array")
    mask = _as_mask(mask, image.shape)
    if mode not in NORMALISATIONS:
        raise InputError(f"normalisation must be one of {', '.join(NORMALISATIONS)}; got {mode!r}")
    values = image[mask]
    if mode == "none":
        return image, {"mode": "none"}
    if mode == "zscore":
        mean = float(values.mean())
        std = float(values.std())
        return (image - mean) / (std if std > 0 else 1.0), {"mode": "zscore", "mean": mean, "std": std}
    if mode == "minmax":
        low, high = float(values.min()), float(values.max())
        info = {"mode": "minmax", "low": low, "high": high}
    else:
        low, high = (float(v) for v in np.percentile(values, [PERCENTILE_LOW, PERCENTILE_HIGH]))
        info = {"mode": "percentile", "low": low, "high": high,
                "percentiles": [PERCENTILE_LOW, PERCENTILE_HIGH]}
    scale = high - low
    if scale <= 0:
        return np.zeros_like(image), info
    return (np.clip(image, low, high) - low) / scale, info


def _data_range(ref_normalised: np.ndarray, mask: np.ndarray, mode: str) -> float:
    if mode in ("percentile", "minmax"):
        return 1.0
    values = ref_normalised[mask]
    value = float(values.max() - values.min())
    if value <= 0:
        raise InputError(
            f"ref is constant inside the mask (value {float(values[0]):g}), so data_range would be 0 "
            f"under normalisation {mode!r}; use 'percentile' or 'minmax'"
        )
    return value


# --------------------------------------------------------------------------------------------
# Voxel-wise metrics and error maps
# --------------------------------------------------------------------------------------------

def mae(pred, ref, mask=None) -> float:
    """Mean absolute error over the voxels of ``mask`` (all voxels when None), image units."""
    pred, ref = _as_pair(pred, ref)
    mask = _as_mask(mask, ref.shape)
    return float(np.mean(np.abs(pred[mask] - ref[mask])))


def mse(pred, ref, mask=None) -> float:
    """Mean squared error over the voxels of ``mask`` (all voxels when None), image units squared."""
    pred, ref = _as_pair(pred, ref)
    mask = _as_mask(mask, ref.shape)
    return float(np.mean((pred[mask] - ref[mask]) ** 2))


def _psnr_from_mse(mse_value: float, data_range: float) -> float:
    if mse_value == 0:
        return math.inf
    return float(10.0 * math.log10(data_range**2 / mse_value))


def psnr(pred, ref, data_range, mask=None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``; ``inf`` when MSE is 0.

    ``data_range`` is required (the peak value range of the reference, e.g. 1.0 for [0, 1]
    images); MSE is pooled over the voxels of ``mask`` (all voxels when None).
    """
    data_range = _check_data_range(data_range)
    return _psnr_from_mse(mse(pred, ref, mask), data_range)


def absolute_error_map(pred, ref, mask=None) -> np.ndarray:
    """``|pred - ref|`` as float32 of the input shape; 0 outside ``mask`` when one is given."""
    pred, ref = _as_pair(pred, ref)
    mask = _as_mask(mask, ref.shape)
    return np.where(mask, np.abs(pred - ref), 0.0).astype(np.float32)


def relative_error_map(pred, ref, mask, eps: float = 1e-2) -> np.ndarray:
    """``|pred - ref| / (|ref| + eps)`` inside ``mask`` and 0 outside, float32 of the input shape.

    The mask is required because background division blows up. ``eps`` is in the units of
    ``ref``; the default suits [0, 1]-normalised images, where percentile clipping sets the
    darkest 0.5 % of mask voxels to exactly 0. ``mask=None`` means all voxels.
    """
    pred, ref = _as_pair(pred, ref)
    mask = _as_mask(mask, ref.shape)
    if not (math.isfinite(eps) and eps > 0):
        raise InputError(f"eps must be a positive finite number, got {eps!r}")
    relative = absolute_error_map(pred, ref, mask) / (np.abs(ref) + eps)  # 0 outside the mask
    return relative.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------

def _ssim_slice_map(pred_slice: np.ndarray, ref_slice: np.ndarray, data_range: float) -> np.ndarray:
    _, ssim_map = structural_similarity(
        ref_slice, pred_slice, data_range=data_range, gaussian_weights=True, sigma=SSIM_SIGMA,
        use_sample_covariance=False, K1=SSIM_K1, K2=SSIM_K2, full=True,
    )
    return ssim_map


def _ssim_maps(pred_stack: np.ndarray, ref_stack: np.ndarray, data_range: float, slices) -> dict[int, np.ndarray]:
    """Full SSIM maps of the given slices of ``(slices, rows, cols)`` stacks, keyed by slice index."""
    rows, cols = ref_stack.shape[1:]
    if rows < SSIM_WINDOW or cols < SSIM_WINDOW:
        raise InputError(
            f"slices are {rows} x {cols} pixels; SSIM (Gaussian window {SSIM_WINDOW} x {SSIM_WINDOW}) "
            f"needs at least {SSIM_WINDOW} x {SSIM_WINDOW}"
        )
    return {int(s): _ssim_slice_map(pred_stack[s], ref_stack[s], data_range) for s in slices}


def ssim(pred, ref, data_range, mask=None, slice_axis: int = 0) -> float:
    """Structural similarity (Wang et al. 2004), the full SSIM map averaged over ``mask``.

    2D SSIM with a Gaussian window (sigma 1.5), K1 0.01, K2 0.03 and population covariance is
    computed on every slice along ``slice_axis`` (a 2D input is one slice) that contains mask
    voxels; the maps are pooled over the mask voxels (all voxels when None). ``data_range`` is
    required. Slices must be at least 11 x 11 pixels.
    """
    data_range = _check_data_range(data_range)
    pred, ref = _as_pair(pred, ref)
    mask = _as_mask(mask, ref.shape)
    axis = _check_slice_axis(slice_axis, ref.ndim)
    pred_stack, ref_stack, mask_stack = (_slice_stack(a, axis) for a in (pred, ref, mask))
    slices = np.flatnonzero(mask_stack.any(axis=(1, 2)))
    maps = _ssim_maps(pred_stack, ref_stack, data_range, slices)
    return float(np.concatenate([maps[s][mask_stack[s]] for s in maps]).mean())


# --------------------------------------------------------------------------------------------
# Mutual information
# --------------------------------------------------------------------------------------------

def _entropy_bits(probabilities: np.ndarray) -> float:
    p = probabilities[probabilities > 0]
    return float(-np.sum(p * np.log2(p)))


def _mutual_information_of_values(a: np.ndarray, b: np.ndarray, bins: int) -> tuple[float, float]:
    ranges = [(float(v.min()), float(v.max())) for v in (a, b)]
    joint, _, _ = np.histogram2d(a, b, bins=bins, range=ranges)
    joint /= joint.sum()
    h_a = _entropy_bits(joint.sum(axis=1))
    h_b = _entropy_bits(joint.sum(axis=0))
    h_ab = _entropy_bits(joint.ravel())
    # Rounding can make MI a few ulp negative for independent images.
    mi = max(h_a + h_b - h_ab, 0.0)
    nmi = (h_a + h_b) / h_ab if h_ab > 0 else 1.0
    return float(mi), float(nmi)


def mutual_information(a, b, mask=None, bins: int = 64) -> tuple[float, float]:
    """Mutual information in bits and Studholme's normalised MI of two images.

    A ``bins`` x ``bins`` joint histogram of the voxels of ``mask`` (all voxels when None) is built
    with equal-width bins spanning each image's own min..max over those voxels.
    MI = H(A) + H(B) - H(A,B) (bits, >= 0); NMI = (H(A) + H(B)) / H(A,B), from 1 (independent)
    to 2 (each image determines the other), and 1.0 when both images are constant.

    Returns:
        ``(mi_bits, nmi)`` as python floats.
    """
    a, b = _as_pair(a, b)
    mask = _as_mask(mask, a.shape)
    if not isinstance(bins, (int, np.integer)) or bins < 2:
        raise InputError(f"bins must be an integer >= 2, got {bins!r}")
    return _mutual_information_of_values(a[mask], b[mask], int(bins))


# --------------------------------------------------------------------------------------------
# GLCM texture features
# --------------------------------------------------------------------------------------------

def glcm_features(
    image,
    mask,
    levels: int = 64,
    distances=(1,),
    angles=(0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4),
    slice_axis: int = 0,
    *,
    normalisation: str = "percentile",
    min_voxels: int = 100,
) -> dict:
    """Grey-level co-occurrence texture features of an image inside a mask, slice by slice.

    The image is normalised with :func:`normalise_for_metrics` (``normalisation``, statistics in
    the mask), then the range min..max of the mask voxels (the whole volume's; [0, 1] after
    ``'percentile'``) is quantised into ``levels`` equal-width grey levels. For every slice along
    ``slice_axis`` with at least ``min_voxels`` mask voxels a symmetric GLCM is built from pixel
    pairs with both pixels in the mask (``skimage.feature.graycomatrix``), and ``graycoprops``
    contrast, dissimilarity, homogeneity, energy (sqrt of ASM) and correlation (1 for a constant
    region, skimage's convention) are averaged over ``distances`` and ``angles`` (radians); the
    result is the mean over those slices. Contrast is in squared grey levels, so it depends on
    ``levels``.

    Returns:
        ``{'contrast', 'dissimilarity', 'homogeneity', 'energy', 'correlation'}`` python floats,
        ``'slices_used'`` (list of slice indices) and ``'conventions'`` (dict).
    """
    image = _as_image(image, "image")
    mask = _as_mask(mask, image.shape)
    # The GLCM holds (levels + 1)^2 counts per distance and angle.
    if not isinstance(levels, (int, np.integer)) or not 2 <= levels <= 1024:
        raise InputError(f"levels must be an integer from 2 to 1024, got {levels!r}")
    axis = _check_slice_axis(slice_axis, image.ndim)
    normalised, _ = normalise_for_metrics(image, mask, normalisation)

    low, high = float(normalised[mask].min()), float(normalised[mask].max())
    scale = (high - low) if high > low else 1.0
    quantised = np.clip(np.floor((normalised - low) / scale * levels), 0, levels - 1).astype(np.int64)
    # Level 0 marks voxels outside the mask; dropping its GLCM row and column keeps only
    # pairs with both voxels inside the mask.
    labelled = np.where(mask, quantised + 1, 0).astype(np.uint16)

    per_slice = {name: [] for name in GLCM_PROPERTIES}
    slices_used = []
    for index, (slice_labels, slice_mask) in enumerate(zip(_slice_stack(labelled, axis), _slice_stack(mask, axis))):
        if np.count_nonzero(slice_mask) < min_voxels:
            continue
        counts = graycomatrix(slice_labels, distances, angles, levels=levels + 1, symmetric=True)[1:, 1:]
        if np.any(counts.sum(axis=(0, 1)) == 0):
            continue  # some offset has no pair inside the mask (e.g. a one-pixel-wide mask)
        for name in GLCM_PROPERTIES:
            per_slice[name].append(float(graycoprops(counts, name).mean()))
        slices_used.append(index)
    if not slices_used:
        raise InputError(f"no slice has at least {min_voxels} mask voxels with neighbours inside the mask; "
                         "expected a larger mask or a smaller min_voxels")

    result = {name: float(np.mean(values)) for name, values in per_slice.items()}
    result["slices_used"] = slices_used
    result["conventions"] = {
        "normalisation": normalisation,
        "levels": int(levels),
        "quantisation": f"{levels} equal-width levels over the mask's min..max after normalisation",
        "distances": [int(d) for d in distances],
        "angles_rad": [float(a) for a in angles],
        "glcm": "symmetric, pairs with both voxels in the mask, properties averaged over distances and angles",
        "pooling": f"mean over slices with >= {min_voxels} mask voxels",
        "slice_axis": axis if image.ndim == 3 else None,
    }
    return result


# --------------------------------------------------------------------------------------------
# Evaluation of a prediction against its reference
# --------------------------------------------------------------------------------------------

def _region_metrics(pred_values, ref_values, ssim_values, data_range: float, bins: int) -> dict:
    """All metrics of one region, from the voxel values and SSIM-map values inside it."""
    difference = pred_values - ref_values
    mse_value = float(np.mean(difference**2))
    mi_bits, nmi = _mutual_information_of_values(pred_values, ref_values, bins)
    return {
        "mae": float(np.mean(np.abs(difference))),
        "mse": mse_value,
        "psnr": _psnr_from_mse(mse_value, data_range),
        "ssim": float(np.mean(ssim_values)),
        "mi_bits": mi_bits,
        "nmi": nmi,
    }


def evaluate(
    pred,
    ref,
    mask=None,
    *,
    normalisation: str = "percentile",
    slice_axis: int = 0,
    bins: int = 64,
    per_slice: bool = False,
    percentiles: tuple = (PERCENTILE_LOW, PERCENTILE_HIGH),
) -> dict:
    """Compare a synthesized image or volume with its reference; every convention is recorded.

    Args:
        pred, ref: arrays of the same shape, 3D (slices along ``slice_axis``) or 2D (one slice);
            finite values; slices at least 11 x 11 (SSIM window).
        mask: boolean region of interest (e.g. brain mask) of the same shape; None: ``ref > 0``,
            or all voxels if ``ref`` has no positive voxel.
        normalisation: ``'percentile'`` (default), ``'minmax'``, ``'zscore'`` or ``'none'``; see
            :func:`normalise_for_metrics`. Applied to each image separately, statistics in the mask.
            ``'model-units'``: only the reference is normalised (as in training validation and the
            README's model table), the synthetic volume is compared as it is, data range 1.
        slice_axis: axis of the 3D arrays along which 2D SSIM slices (and per-slice values) are taken.
        bins: bins per axis of the joint histogram for MI/NMI.
        per_slice: also return one value per slice containing mask voxels and their mean.
        percentiles: ``(low, high)`` of the reference's normalisation under ``'model-units'`` (a
            model's own, :attr:`MRISynthesisLib.checkpoint.ModelMetadata.percentiles`).

    Returns:
        dict with ``mae``, ``mse``, ``psnr`` (dB), ``ssim``, ``mi_bits``, ``nmi`` inside the mask
        (per-volume pooling), ``whole_slice`` (the same metrics over all voxels of the slices that
        contain mask voxels), ``per_slice`` if requested (``slice_indices``, a list per metric and
        ``mean``), ``conventions`` and ``warnings`` (list of strings, e.g. a tiny mask). All values
        are python types; PSNR may be ``inf`` (see :func:`json_compatible`).

    Raises:
        InputError: mismatched shapes, an empty mask, NaN/inf values, unknown normalisation,
            slices smaller than 11 x 11, or a constant reference under 'none'/'zscore'.
    """
    pred, ref = _as_pair(pred, ref)
    mask, mask_source = _resolve_mask(mask, ref)
    axis = _check_slice_axis(slice_axis, ref.ndim)
    if not isinstance(bins, (int, np.integer)) or bins < 2:
        raise InputError(f"bins must be an integer >= 2, got {bins!r}")
    bins = int(bins)

    if normalisation not in EVALUATE_NORMALISATIONS:
        raise InputError(f"normalisation must be one of {', '.join(EVALUATE_NORMALISATIONS)}; got {normalisation!r}")
    if normalisation == "model-units":
        pred_n, pred_info = pred, {"mode": "none (synthetic values in model units, compared as they are)"}
        ref_n, ref_info = _reference_in_model_units(ref, mask, *percentiles)
        data_range = 1.0
    else:
        pred_n, pred_info = normalise_for_metrics(pred, mask, normalisation)
        ref_n, ref_info = normalise_for_metrics(ref, mask, normalisation)
        data_range = _data_range(ref_n, mask, normalisation)

    pred_stack, ref_stack, mask_stack = (_slice_stack(a, axis) for a in (pred_n, ref_n, mask))
    slices = [int(s) for s in np.flatnonzero(mask_stack.any(axis=(1, 2)))]
    maps = _ssim_maps(pred_stack, ref_stack, data_range, slices)

    result = _region_metrics(
        pred_n[mask], ref_n[mask],
        np.concatenate([maps[s][mask_stack[s]] for s in slices]), data_range, bins,
    )
    result["whole_slice"] = _region_metrics(
        pred_stack[slices].ravel(), ref_stack[slices].ravel(),
        np.concatenate([maps[s].ravel() for s in slices]), data_range, bins,
    )
    if per_slice:
        values = {name: [] for name in METRIC_NAMES}
        for s in slices:
            inside = mask_stack[s]
            metrics = _region_metrics(pred_stack[s][inside], ref_stack[s][inside], maps[s][inside], data_range, bins)
            for name in METRIC_NAMES:
                values[name].append(metrics[name])
        result["per_slice"] = {
            "slice_indices": slices,
            **values,
            "mean": {name: float(np.mean(values[name])) for name in METRIC_NAMES},
        }

    result["conventions"] = {
        "normalisation": normalisation,
        "normalisation_params": {"pred": pred_info, "ref": ref_info},
        "data_range": data_range,
        "mask": mask_source,
        "mask_voxels": int(np.count_nonzero(mask)),
        "region": "mask",
        "whole_slice_region": f"all voxels of the {len(slices)} slices that contain mask voxels",
        "pooling": "per-volume",
        "per_slice_pooling": ("unweighted mean over slices that contain mask voxels" if per_slice else None),
        "ssim": SSIM_CONVENTION,
        "mi": f"bits, {bins}-bin joint histogram over mask voxels",
        "psnr": "dB, 10 log10(data_range^2 / MSE), inf when MSE is 0",
        "slice_axis": axis if ref.ndim == 3 else None,
    }
    voxels = result["conventions"]["mask_voxels"]
    result["warnings"] = ([f"the mask has only {voxels} voxel{'s' if voxels != 1 else ''} (fewer than "
                           f"{MIN_MASK_VOXELS}); these numbers say little about the image"]
                          if voxels < MIN_MASK_VOXELS else [])
    return result


def _reference_in_model_units(ref: np.ndarray, mask: np.ndarray, low_percentile: float = PERCENTILE_LOW,
                              high_percentile: float = PERCENTILE_HIGH) -> tuple[np.ndarray, dict]:
    """The reference as a model's output is scaled: p0.5..p99.5 in the mask -> [0, 1], 0 outside."""
    from .preprocessing import percentile_normalise

    try:
        normalised, (low, high) = percentile_normalise(ref, mask, low_percentile, high_percentile)
    except InputError:
        raise InputError("ref is constant inside the mask, so it cannot be normalised to model units; "
                         "use a larger mask or --normalisation none") from None
    info = {"mode": "percentile in the mask, 0 outside (preprocessing.percentile_normalise)", "low": low,
            "high": high, "percentiles": [low_percentile, high_percentile]}
    return normalised.astype(np.float64), info


# --------------------------------------------------------------------------------------------
# Scoring a synthetic volume against its reference: the one function every front end uses
# --------------------------------------------------------------------------------------------

#: How :func:`score` describes the slice axis: metrics run on canonical axial slices.
AXIAL_SLICES = "axial (canonical slices, index 0 = most inferior), whatever the files' storage order"
#: What :func:`score` means by 'model-units', in words (the default of every front end).
MODEL_UNITS = ("reference percentile-normalised ({low:g}..{high:g} inside the mask) to [0, 1], 0 outside; "
               "synthetic compared as it is (already in those units)")


class Score(dict):
    """The result of :func:`score`: :func:`evaluate`'s dict (``mae``, ``mse``, ``psnr``, ``ssim``,
    ``mi_bits``, ``nmi``, ``whole_slice``, optional ``per_slice``, ``conventions``, ``warnings``)
    with the volumes that were compared, so a front end can show the difference map it summarises.

    ``synthetic`` and ``reference``: the volumes as compared (after normalisation), on the
    synthetic volume's grid; ``mask``: boolean ``[i, j, k]``.
    """

    def __init__(self, values: dict, synthetic, reference, mask):
        super().__init__(values)
        self.synthetic, self.reference, self.mask = synthetic, reference, mask

    @property
    def conventions(self) -> dict:
        return self["conventions"]

    @property
    def warnings(self) -> list:
        return self["warnings"]

    def conventions_text(self) -> str:
        """The conventions in one paragraph (what Slicer, the QC report and docs show)."""
        return describe_conventions(self["conventions"])

    def difference(self) -> np.ndarray:
        """``synthetic - reference`` as compared, 0 outside the mask (float32 ``[i, j, k]``)."""
        return np.where(self.mask, self.synthetic - self.reference, 0.0).astype(np.float32)


def score(synthetic, reference, mask=None, *, normalisation: str = "model-units",
          percentiles: tuple = (PERCENTILE_LOW, PERCENTILE_HIGH), per_slice: bool = False,
          mask_description: str | None = None) -> Score:
    """Compare a synthetic :class:`~MRISynthesisLib.volume.Volume` with a real reference on the same grid.

    The one scoring function of MRISynthesis (``evaluate``, the BIDS App, the Slicer module,
    training validation and the study use it). Defaults, the conventions of the model cards:
    ``normalisation='model-units'`` (the reference is percentile-normalised with ``percentiles``
    inside the mask to [0, 1], the synthetic volume is compared as it is, data range 1); ``mask``
    (boolean ``[i, j, k]``) defaults to :func:`MRISynthesisLib.preprocessing.brain_mask` of the
    reference; every metric is computed on canonical axial slices (whatever the storage order),
    pooled per volume. ``mask_description`` says in the conventions where a given mask came from.
    Returns a :class:`Score`; raises :class:`InputError` like :func:`evaluate`.
    """
    from .orientation import to_canonical_slices
    from .preprocessing import brain_mask

    if synthetic.shape != reference.shape:
        raise InputError(f"the synthetic volume has shape {synthetic.shape} but the reference has "
                         f"{reference.shape}; they must share one grid")
    if mask is None:
        mask, source = brain_mask(reference.array), "automatic brain mask of the reference (preprocessing.brain_mask)"
    else:
        mask, source = np.asarray(mask) != 0, mask_description or "given"
    stacks = [to_canonical_slices(np.asarray(a), reference.affine)[0]
              for a in (synthetic.array, reference.array, mask)]
    values = evaluate(stacks[0], stacks[1], stacks[2], normalisation=normalisation, slice_axis=0,
                      per_slice=per_slice, percentiles=tuple(percentiles))
    values["conventions"].update(mask=source, slice_axis=AXIAL_SLICES)
    values["warnings"] += _zero_synthetic_warning(synthetic.array, mask, given=mask_description is not None)
    if normalisation == "model-units":
        values["conventions"]["reference"] = MODEL_UNITS.format(low=percentiles[0], high=percentiles[1])
        compared_synthetic = np.asarray(synthetic.array, dtype=np.float32)
        compared_reference = _reference_in_model_units(np.asarray(reference.array), mask, *percentiles)[0]
    else:
        compared_synthetic = normalise_for_metrics(synthetic.array, mask, normalisation)[0]
        compared_reference = normalise_for_metrics(reference.array, mask, normalisation)[0]
    return Score(values, compared_synthetic, compared_reference.astype(np.float32), mask)


#: Share of the mask where the synthetic volume is exactly 0 above which :func:`score` warns: a
#: synthetic volume is 0 outside the brain it was made in; against a skull-stripped reference
#: that is well under 1 % of the reference's mask, against a whole-head one most of it.
MAX_ZERO_SYNTHETIC_FRACTION = 0.10


def _zero_synthetic_warning(synthetic: np.ndarray, mask: np.ndarray, given: bool) -> list:
    voxels = int(np.count_nonzero(mask))
    zero = int(np.count_nonzero((np.asarray(synthetic) == 0) & mask)) if voxels else 0
    if not voxels or zero <= MAX_ZERO_SYNTHETIC_FRACTION * voxels:
        return []
    where = "the given mask" if given else "the reference's automatic (foreground) mask"
    return [f"the synthetic volume is 0 in {100 * zero / voxels:.0f}% of {where}: it is 0 outside the brain it was "
            "synthesised in, so against a whole-head reference these numbers score the head around the brain too; "
            "pass the brain mask (evaluate --mask, e.g. the file synthesize --save-mask wrote)"]


def describe_conventions(conventions: dict) -> str:
    """One paragraph of the conventions :func:`evaluate` / :func:`score` recorded."""
    reference = conventions.get("reference") or f"both volumes normalised ({conventions['normalisation']})"
    return (f"Inside the mask ({conventions['mask']}; {conventions['mask_voxels']} voxels). {reference[0].upper()}"
            f"{reference[1:]}; data range {_format_convention(conventions['data_range'])}. "
            f"SSIM: {conventions['ssim']}, on {conventions.get('slice_axis')} slices. MI: {conventions['mi']}. "
            f"Pooling: {conventions['pooling']}. Values are in normalised units, not scanner units.")


def json_compatible(result):
    """``result`` for strict JSON: infinite or NaN numbers become ``None`` and a ``notes`` entry
    (top level) says which; ``json.dumps(..., allow_nan=False)`` then succeeds."""
    replaced = []

    def convert(value, where):
        if isinstance(value, dict):
            return {key: convert(item, f"{where}.{key}" if where else str(key)) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(item, f"{where}[{index}]") for index, item in enumerate(value)]
        if isinstance(value, float) and not math.isfinite(value):
            replaced.append(f"{where} = {value}")
            return None
        return value

    converted = convert(result, "")
    if replaced and isinstance(converted, dict):
        converted["notes"] = list(converted.get("notes") or []) + [
            "null stands for a non-finite value (PSNR is infinite when MSE is 0): " + ", ".join(replaced)]
    return converted


def _format_number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def _format_convention(value) -> str:
    if isinstance(value, dict):
        nested = any(isinstance(item, dict) for item in value.values())
        return ("; " if nested else ", ").join(
            f"{key} ({_format_convention(item)})" if isinstance(item, dict) else f"{key}={_format_convention(item)}"
            for key, item in value.items()
        )
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_convention(item) for item in value)
    if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        return f"{value:.6g}"
    return str(value)


def format_table(result: dict) -> str:
    """A plain-text table of an :func:`evaluate` result, with the conventions listed under it."""
    columns = [("mask", result), ("whole slice", result.get("whole_slice"))]
    if "per_slice" in result:
        columns.append(("per-slice mean", result["per_slice"]["mean"]))
    columns = [(title, values) for title, values in columns if values is not None]

    rows = [["metric", *(title for title, _ in columns)]]
    for name in METRIC_NAMES:
        rows.append([_DISPLAY_NAMES[name], *(_format_number(values.get(name)) for _, values in columns)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))

    if "per_slice" in result:
        lines.append(f"per-slice values: {len(result['per_slice']['slice_indices'])} slices containing mask voxels")
    conventions = result.get("conventions", {})
    if conventions:
        lines.append("")
        lines.append("conventions:")
        for key, value in conventions.items():
            if value is not None:
                lines.append(f"  {key}: {_format_convention(value)}")
    return "\n".join(lines)
