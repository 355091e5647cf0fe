"""Rigid (6 degrees of freedom) registration of two MRI volumes of one person, with SimpleITK.

Used by :mod:`Training.prepare_pairs` to put a raw T2 onto its T1's grid. The method is the
field's standard for intra-subject, cross-contrast alignment: Mattes mutual information (which
needs no intensity relation between the contrasts), a regular-step gradient descent over the
rotation angles and translation of an Euler transform, and three resolutions (shrink 4, 2, 1 with
Gaussian smoothing of 2, 1, 0 mm) so the coarse levels find the large moves and the fine one the
last millimetre. It starts from the scanners' own coordinates (identity in world space, rotation
centre at the fixed volume's centre): acquisitions of one session are already within a few mm.

Why SimpleITK: it is ITK's registration framework (the reference implementation behind ANTs and
3D Slicer's BRAINSFit), with binary wheels for every Python and operating system (Windows, macOS,
Linux; ANTsPy has none for Windows), no compiler, and already a dependency of the tests.

Volumes cross this boundary as :class:`MRISynthesisLib.volume.Volume` (``array[i, j, k]``,
``affine`` ijk -> RAS in mm); SimpleITK works in LPS, and :func:`to_sitk` converts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from MRISynthesisLib.volume import Volume

#: RAS <-> LPS (flip the first two world axes).
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_MM = (2.0, 1.0, 0.0)
HISTOGRAM_BINS = 50
SAMPLING_SHARE = 0.25
SEED = 42


@dataclass(frozen=True)
class RigidRegistration:
    """The result of :func:`register_rigid`.

    ``fixed_to_moving``: 4x4 matrix mapping RAS points (mm) of the fixed volume's space to the
    moving volume's space (apply it to a fixed-grid point to find where to sample the moving
    volume). ``rotation_deg``: the rotation angle; ``translation_mm``: the displacement of the
    fixed volume's centre. ``metric_before`` / ``metric_after``: Mattes mutual information at full
    resolution with the scanners' alignment and after registration (negative; lower is better).
    ``iterations``: optimiser iterations of the last level; ``stop``: the optimiser's reason.
    """

    fixed_to_moving: np.ndarray
    rotation_deg: float
    translation_mm: float
    metric_before: float
    metric_after: float
    iterations: int
    stop: str


def to_sitk(volume: Volume):
    """``volume`` as a SimpleITK float32 image (LPS geometry; voxels as they are)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume.array, np.float32).transpose(2, 1, 0)))
    matrix = _RAS_TO_LPS @ volume.affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (matrix / spacing).ravel()])
    image.SetOrigin([float(v) for v in _RAS_TO_LPS @ volume.affine[:3, 3]])
    return image


def register_rigid(fixed: Volume, moving: Volume, threads: int | None = None) -> RigidRegistration:
    """Rigidly register ``moving`` to ``fixed`` (see the module docstring).

    ``threads``: ITK threads (default: ``OMP_NUM_THREADS`` or all cores). Raises ``RuntimeError``
    (SimpleITK's) when the optimisation cannot run, e.g. when the volumes do not overlap.
    """
    import SimpleITK as sitk

    if threads is None:
        threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count() or 1
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    fixed_image, moving_image = to_sitk(fixed), to_sitk(moving)
    start = sitk.Euler3DTransform()
    centre = fixed_image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed_image.GetSize()])
    start.SetCenter(centre)

    method = _method()
    method.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_MM))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=200,
                                                    relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(start, inPlace=False)
    result = method.Execute(fixed_image, moving_image)
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(result).GetNthTransform(0)) \
        if result.GetName() == "CompositeTransform" else sitk.Euler3DTransform(result)

    def metric(transform) -> float:
        evaluator = _method()
        evaluator.SetInitialTransform(transform)
        return float(evaluator.MetricEvaluate(fixed_image, moving_image))

    lps = _lps_matrix(euler)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps @ np.diag([-1.0, -1.0, 1.0, 1.0])
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(lps[:3, :3]) - 1) / 2))))
    shift = float(np.linalg.norm(np.asarray(euler.TransformPoint(centre)) - np.asarray(centre)))
    return RigidRegistration(ras, angle, shift, metric(start), metric(euler), method.GetOptimizerIteration(),
                             method.GetOptimizerStopConditionDescription())


def resample_onto(moving: Volume, fixed: Volume, fixed_to_moving: np.ndarray, order: int = 1) -> Volume:
    """``moving`` sampled on ``fixed``'s grid through ``fixed_to_moving`` (RAS, mm): linear
    (``order=1``) or nearest (0) interpolation, 0 outside ``moving``'s field of view."""
    from scipy import ndimage

    index_map = np.linalg.inv(moving.affine) @ fixed_to_moving @ fixed.affine
    array = ndimage.affine_transform(np.asarray(moving.array, dtype=np.float32), index_map[:3, :3], index_map[:3, 3],
                                     output_shape=fixed.shape, order=order, cval=0.0, mode="constant")
    return Volume(array, fixed.affine.copy())


def field_of_view(moving: Volume, fixed: Volume, fixed_to_moving: np.ndarray) -> np.ndarray:
    """Boolean ``[i, j, k]`` on ``fixed``'s grid: the voxels that map inside ``moving``'s volume."""
    index_map = np.linalg.inv(moving.affine) @ fixed_to_moving @ fixed.affine
    grid = np.indices(fixed.shape, dtype=np.float32).reshape(3, -1)
    moved = index_map[:3, :3].astype(np.float32) @ grid + index_map[:3, 3:4].astype(np.float32)
    inside = np.all((moved >= -0.5) & (moved <= np.array(moving.shape, np.float32)[:, None] - 0.5), axis=0)
    return inside.reshape(fixed.shape)


def _method():
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING_SHARE, SEED)
    method.SetInterpolator(sitk.sitkLinear)
    return method


def _lps_matrix(transform) -> np.ndarray:
    """4x4 matrix (LPS) of a SimpleITK rigid transform: ``y = R (x - c) + c + t``."""
    rotation = np.array(transform.GetMatrix()).reshape(3, 3)
    centre, translation = np.array(transform.GetCenter()), np.array(transform.GetTranslation())
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = translation + centre - rotation @ centre
    return matrix
