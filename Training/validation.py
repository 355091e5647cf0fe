"""Validation on whole volumes of the validation subjects, through the real inference path.

Each epoch the generator is wrapped in :meth:`MRISynthesisLib.synthesis.Synthesizer.from_model`
and synthesises every validation subject's complete volume exactly as ``mrisynthesis
synthesize`` would (canonical slices, normalisation, resampling to the model grid and back).

Conventions (recorded with the numbers in ``metrics.jsonl`` and in exported checkpoints):

- Scoring: :func:`MRISynthesisLib.metrics.score`, the scoring function of every front end, with
  its default ``'model-units'`` conventions: the real target contrast is percentile-normalised
  inside the brain mask to [0, 1] with the same percentiles as the model input; the synthetic
  volume is already in these units and is compared as it is; data range 1.
- Mask: the subject's brain mask file when discovery found one, else
  :func:`MRISynthesisLib.preprocessing.brain_mask` of the target; it selects the scored voxels.
  The source is normalised with its own brain mask, as in training and at inference.
- Metrics: MAE, PSNR and SSIM (2D on canonical axial slices, map averaged in the mask, per-volume
  pooling); the subject values are averaged
  (unweighted mean over subjects).
- Baseline: "inverted source" = 1 - the normalised source contrast (normalised like the model's
  input) inside the mask, the trivial
  intensity inversion every model must beat; computed once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from MRISynthesisLib import metrics as core_metrics
from MRISynthesisLib.conventions import PERCENTILE_HIGH, PERCENTILE_LOW, source_and_target
from MRISynthesisLib.io import load_volume
from MRISynthesisLib.orientation import to_canonical_slices
from MRISynthesisLib.preprocessing import brain_mask, percentile_normalise
from MRISynthesisLib.synthesis import Synthesizer

from .baselines import inverted_intensities

REPORTED = ("mae", "psnr", "ssim")
HIGHER_IS_BETTER = {"mae": False, "psnr": True, "ssim": True}


@dataclass
class ValidationResult:
    mean: dict                      # metric -> mean over subjects
    per_subject: dict               # subject id -> {metric: value}
    conventions: dict
    preview: np.ndarray | None = None   # (4, rows, cols): source | synthetic | reference | |error|
    extra: dict = field(default_factory=dict)


def better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if HIGHER_IS_BETTER[metric] else value < best


class Validator:
    """Holds the validation volumes (loaded once) and scores a generator on them."""

    def __init__(self, subjects, direction: str, low: float = PERCENTILE_LOW, high: float = PERCENTILE_HIGH,
                 batch_size: int = 8):
        self.subjects = list(subjects)
        self.direction = direction
        self.low, self.high = low, high
        self.batch_size = batch_size
        self._volumes: dict = {}

    def load_subject(self, subject):
        """(source Volume, target Volume, mask [i,j,k], normalised reference [i,j,k]) of a subject."""
        if subject.id not in self._volumes:
            t1, t2 = load_volume(subject.t1), load_volume(subject.t2)
            source, target = source_and_target(self.direction, t1, t2)
            if subject.mask:
                mask = load_volume(subject.mask).array > 0
            else:
                mask = brain_mask(target.array)
            reference, _ = percentile_normalise(target.array, mask, self.low, self.high)
            self._volumes[subject.id] = (source, target, mask, reference)
        return self._volumes[subject.id]

    def evaluate(self, model, metadata, device, preview: bool = True) -> ValidationResult:
        """Synthesise every validation volume with ``model`` and score it (model left in eval mode)."""
        synthesizer = Synthesizer.from_model(model, metadata, device=str(device), batch_size=self.batch_size,
                                             mixed_precision=False)
        per_subject, conventions, grid = {}, {}, None
        for index, subject in enumerate(self.subjects):
            source, target, mask, reference = self.load_subject(subject)
            # No mask argument: the source is normalised with its own brain mask, exactly as in
            # training (cache) and at inference; ``mask`` only selects the voxels that are scored.
            synthetic = synthesizer.synthesize(source).array
            per_subject[subject.id], conventions = self._score(synthetic, target, mask)
            if preview and index == 0:
                grid = self._preview(source, synthetic, reference, mask)
        return ValidationResult(self._mean(per_subject), per_subject, conventions, grid)

    def inverted_source_baseline(self) -> ValidationResult:
        """Scores of the trivial baseline 1 - normalised source, inside the mask."""
        per_subject, conventions = {}, {}
        for subject in self.subjects:
            source, target, mask, _ = self.load_subject(subject)
            normalised, _ = percentile_normalise(source.array, brain_mask(source.array), self.low, self.high)
            inverted = inverted_intensities(normalised, mask)
            per_subject[subject.id], conventions = self._score(inverted, target, mask)
        return ValidationResult(self._mean(per_subject), per_subject, conventions)

    def _score(self, synthetic, target, mask):
        """``({metric: value}, conventions)`` of ``synthetic`` (``[i, j, k]`` on ``target``'s grid)."""
        result = core_metrics.score(target.with_array(np.asarray(synthetic, dtype=np.float32)), target, mask,
                                    percentiles=(self.low, self.high),
                                    mask_description="the subject's brain mask (file, else of the target)")
        conventions = dict(result.conventions)
        conventions["subject_pooling"] = "unweighted mean over validation subjects"
        return {name: float(result[name]) for name in REPORTED}, conventions

    @staticmethod
    def _mean(per_subject: dict) -> dict:
        if not per_subject:
            return {}
        return {name: float(np.mean([values[name] for values in per_subject.values()])) for name in REPORTED}

    def _preview(self, source, synthetic, reference, mask):
        source_n, _ = percentile_normalise(source.array, mask, self.low, self.high)
        stacks = [to_canonical_slices(np.asarray(a, dtype=np.float32), source.affine)[0]
                  for a in (source_n, synthetic, reference, mask.astype(np.float32))]
        k = int(np.argmax(stacks[3].reshape(stacks[3].shape[0], -1).sum(axis=1)))
        source_s, synthetic_s, reference_s = (s[k] for s in stacks[:3])
        return np.stack([source_s, synthetic_s, reference_s, np.abs(synthetic_s - reference_s)])
