"""Scoring of every method on the test subjects, whole volumes, through the real inference path.

Conventions (the same as the training package's validation, :mod:`Training.validation`):

- Scoring: :func:`MRISynthesisLib.metrics.score` (the one scoring function, model-units
  conventions): the real target contrast percentile-normalised (0.5..99.5 inside the brain mask)
  to [0, 1]; synthetic volumes are already in these units (trained models through
  :class:`MRISynthesisLib.synthesis.Synthesizer`, baselines through :mod:`Training.baselines`)
  and are compared as they are; data range 1.
- Brain mask: the subject's brain-mask file when discovery found one, else
  :func:`MRISynthesisLib.preprocessing.brain_mask` of the target; the Synthesizer gets the same mask.
- Region: inside the brain mask (primary) and whole slices that contain brain; SSIM is 2D on
  canonical axial slices (Gaussian sigma 1.5), map averaged over the region; MI in bits from a
  64-bin joint histogram; per-volume pooling; then mean +- SD (sample SD, n-1) over subjects.
- GLCM texture (:func:`MRISynthesisLib.metrics.glcm_features`): 64 grey levels after per-image
  percentile normalisation in the region, distance 1, four angles, mean over axial slices with
  enough region voxels; inside the brain and inside the lesion mask (CBICA ``manual.mask``, MSLUB
  ``GOLD_STANDARD``) where one exists, for the real and the synthetic image.
- Speed: foreground slices synthesised per CPU second for the whole volume (preprocessing,
  resampling, batches of 8, float32; process CPU time, so other work on the shared machine does
  not change it; with one torch thread it equals wall-clock time on an idle core).
"""

from __future__ import annotations

import time

import numpy as np

from MRISynthesisLib import metrics as core_metrics
from MRISynthesisLib.errors import InputError
from MRISynthesisLib.io import load_volume
from MRISynthesisLib.orientation import to_canonical_slices
from MRISynthesisLib.preprocessing import brain_mask, foreground_slices, percentile_normalise
from Training.validation import Validator

from Training.baselines import IntensityLookup, inverted_intensities

METRICS = ("mae", "mse", "psnr", "ssim", "mi_bits")
GLCM_PROPERTIES = ("contrast", "dissimilarity")
GLCM_LEVELS = 64
LESION_MIN_VOXELS = 20


class TestCase:
    """One test subject in one direction: the volumes every method is scored against (loaded once)."""

    def __init__(self, subject, direction: str):
        self.subject = subject
        self.direction = direction
        # The training package's loader, so validation and test use one masking/normalisation rule.
        self.source, self.target, self.mask, self.reference = Validator([subject], direction).load_subject(subject)
        self.lesion = None
        if getattr(subject, "lesion_mask", None):
            self.lesion = (load_volume(subject.lesion_mask).array > 0) & self.mask
            if not self.lesion.any():
                self.lesion = None
        self._stacks: dict = {}
        self._texture: dict | None = None

    @property
    def source_normalised(self) -> np.ndarray:
        """The source as the models see it: normalised inside its own brain mask."""
        return percentile_normalise(self.source.array, brain_mask(self.source.array))[0]

    def stack(self, array) -> np.ndarray:
        """``array`` [i, j, k] as a canonical axial stack (slices inferior -> superior)."""
        return to_canonical_slices(np.asarray(array, dtype=np.float32), self.source.affine)[0]

    def cached_stack(self, name: str) -> np.ndarray:
        if name not in self._stacks:
            array = {"reference": self.reference, "mask": self.mask, "source": self.source_normalised,
                     "lesion": self.lesion}[name]
            self._stacks[name] = None if array is None else self.stack(array)
            if name in ("mask", "lesion") and self._stacks[name] is not None:
                self._stacks[name] = self._stacks[name] > 0.5
        return self._stacks[name]

    def real_texture(self) -> dict:
        """GLCM features of the real target in the brain and in the lesions (computed once)."""
        if self._texture is None:
            reference = self.cached_stack("reference")
            self._texture = {"brain": texture(reference, self.cached_stack("mask")),
                             "lesion": texture(reference, self.cached_stack("lesion")) if self.lesion is not None else None}
        return self._texture

    @property
    def n_slices(self) -> int:
        return int(len(foreground_slices(self.cached_stack("mask"))))

    @property
    def figure_slice(self) -> int:
        """The canonical axial slice with the most brain (the one shown in figures)."""
        mask = self.cached_stack("mask")
        return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))


def predict(method, case: TestCase, checkpoint=None, lookup: IntensityLookup | None = None, grid=None,
            flip_tta: bool = False):
    """``(synthetic [i, j, k] in [0, 1], CPU seconds)`` of ``method`` (a protocol.Method) on ``case``.

    ``grid``: ``(slice_size, pixel_spacing_mm)`` of the trained models, for the 'ceiling' kind.
    ``flip_tta``: trained models also average the left-right mirrored prediction.
    CPU seconds of the process (all threads), because the machine is shared."""
    started = time.process_time()
    if method.kind == "ceiling":
        synthetic = through_model_grid(case, *grid)
    elif method.kind == "inverted":
        synthetic = inverted_intensities(case.source_normalised, case.mask)
    elif method.kind == "lookup":
        synthetic = lookup.predict(case.source_normalised, case.mask)
    else:
        from MRISynthesisLib.synthesis import Synthesizer

        synthesizer = Synthesizer(checkpoint, device="cpu", mixed_precision=False, flip_tta=flip_tta)
        started = time.process_time()
        synthetic = synthesizer.synthesize(case.source).array  # as a user would: no mask given
    return synthetic, time.process_time() - started


def through_model_grid(case: TestCase, slice_size: int, pixel_spacing_mm: float) -> np.ndarray:
    """The real target synthesised by an identity 'model' on the model grid: the Synthesizer
    normalises it exactly like the reference, resamples it to the grid and back."""
    import torch

    from MRISynthesisLib.checkpoint import ModelMetadata
    from MRISynthesisLib.synthesis import Synthesizer

    metadata = ModelMetadata(architecture="identity", config={}, direction=case.direction, slice_size=slice_size,
                             pixel_spacing_mm=pixel_spacing_mm)
    synthesizer = Synthesizer.from_model(torch.nn.Identity(), metadata, device="cpu", mixed_precision=False)
    return synthesizer.synthesize(case.target, mask=case.mask).array


def texture(stack, region_stack) -> dict | None:
    """GLCM contrast and dissimilarity of ``stack`` inside ``region_stack``; None if the region is too small."""
    try:
        features = core_metrics.glcm_features(stack, region_stack, levels=GLCM_LEVELS,
                                              min_voxels=LESION_MIN_VOXELS)
    except InputError:
        return None
    return {name: features[name] for name in GLCM_PROPERTIES}


def score(case: TestCase, synthetic, seconds: float) -> dict:
    """Metrics (brain mask and whole slices), texture (real and synthetic) and speed of one prediction."""
    synthetic_stack = case.stack(synthetic)
    result = core_metrics.score(case.target.with_array(np.asarray(synthetic, dtype=np.float32)), case.target,
                                case.mask, mask_description="the subject's brain mask (file, else of the target)")
    lesion = case.cached_stack("lesion")
    real_texture = case.real_texture()
    return {
        "subject": case.subject.id, "source": case.subject.source,
        "mask": {name: result[name] for name in METRICS},
        "whole_slice": {name: result["whole_slice"][name] for name in METRICS},
        "texture": {"brain": {"real": real_texture["brain"], "synthetic": texture(synthetic_stack, case.cached_stack("mask"))},
                    "lesion": ({"real": real_texture["lesion"], "synthetic": texture(synthetic_stack, lesion)}
                               if lesion is not None else None)},
        "slices": case.n_slices, "seconds": seconds,
        "slices_per_second": case.n_slices / seconds if seconds > 0 else None,
        "conventions": {k: v for k, v in result["conventions"].items() if k != "normalisation_params"},
    }


def figure_panels(case: TestCase, synthetic) -> dict:
    """The figure slice of a prediction: synthetic, and relative absolute error inside the brain."""
    k = case.figure_slice
    synthetic_slice = case.stack(synthetic)[k]
    reference_slice = case.cached_stack("reference")[k]
    mask_slice = case.cached_stack("mask")[k]
    return {"synthetic": synthetic_slice,
            "relative_error": core_metrics.relative_error_map(synthetic_slice, reference_slice, mask_slice)}


def case_panels(case: TestCase) -> dict:
    """Input, real target and brain mask of the figure slice."""
    k = case.figure_slice
    return {"input": case.cached_stack("source")[k], "real": case.cached_stack("reference")[k],
            "mask": case.cached_stack("mask")[k]}


def uncertainty(checkpoint, case: TestCase, samples: int = 8) -> dict:
    """VAE posterior sampling: std map of the figure slice, mean std in the brain and its correlation
    with the absolute error of the mean prediction (Pearson, brain voxels)."""
    from MRISynthesisLib.synthesis import Synthesizer

    synthesizer = Synthesizer(checkpoint, device="cpu", mixed_precision=False)
    mean, std = synthesizer.synthesize_with_uncertainty(case.source, samples=samples, mask=case.mask)
    mask = case.mask
    error = np.abs(mean.array - case.reference)[mask]
    spread = std.array[mask]
    correlation = float(np.corrcoef(spread, error)[0, 1]) if spread.std() > 0 and error.std() > 0 else None
    return {"samples": samples, "mean_std_in_brain": float(spread.mean()), "std_error_correlation": correlation,
            "std_slice": case.stack(std.array)[case.figure_slice]}


def mean_sd(values) -> dict:
    """``{'mean', 'sd', 'n'}`` of finite values; sd is the sample SD (n-1), None for n < 2."""
    values = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "n": len(values)}


def aggregate(rows, region: str = "mask", metrics=METRICS) -> dict:
    """Mean +- SD over subjects, per source and ``'overall'``: ``{group: {metric: mean_sd}}``.

    ``rows``: per-subject results of :func:`score` (``source`` and ``rows[i][region][metric]``).
    Sources are sorted by name; 'overall' pools all subjects (each subject counts once).
    """
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(row["source"], []).append(row)
    table = {source: {m: mean_sd([r[region][m] for r in groups[source]]) for m in metrics} for source in sorted(groups)}
    table["overall"] = {m: mean_sd([r[region][m] for r in rows]) for m in metrics}
    return table
