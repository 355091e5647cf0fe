"""Synthetic vs. real target: difference volume and metrics, on the synthetic volume's grid.

The difference uses exactly the normalisation of the metrics (``MRISynthesisLib.metrics``), so the
map shows the errors that the numbers summarise, not scanner intensity scaling. The comparison is
computed without touching the scene (:func:`compareWithReference`); ``SynthesisLogic`` adds its
result as a node, so a comparison that fails leaves every node as it was.
"""

from dataclasses import dataclass

import numpy as np

from MRISynthesisLib import metrics, orientation, preprocessing
from MRISynthesisLib.conventions import PERCENTILE_HIGH

from .VolumeNodes import checkScalarVolume, ijkToRASArray, volumeOnGrid, worldIJKToRAS


@dataclass
class ReferenceComparison:
    difference: object  # MRISynthesisLib.volume.Volume on the synthetic grid: synthetic - reference
    metrics: dict  # MRISynthesisLib.metrics.evaluate result, conventions included
    displayMax: float  # symmetric display range of the difference map


def compareWithReference(synthetic, gridNode, referenceNode, mask=None) -> ReferenceComparison:
    """Metrics of ``synthetic`` (a core Volume on ``gridNode``'s grid) against ``referenceNode``.

    The reference is taken onto the grid in world coordinates (parent transforms included).
    ``mask`` (``[i, j, k]`` on the grid) defaults to the reference's brain mask
    (``MRISynthesisLib.preprocessing.brain_mask``). SSIM runs on the slices that are axial in
    world space. Raises ``ValueError`` when the reference has no brain voxels on the grid.
    """
    checkScalarVolume(referenceNode, "Reference volume")
    reference = volumeOnGrid(referenceNode, gridNode)
    if mask is None:
        mask = preprocessing.brain_mask(reference.array)
    if not np.any(mask):
        raise ValueError(f"Reference volume '{referenceNode.GetName()}' has no brain voxels where the synthetic "
                         "volume is; do the two volumes overlap in space (same patient, registered)?")
    worldAffine = worldIJKToRAS(gridNode)
    axialAxis = orientation.find_axial_axis(worldAffine if worldAffine is not None else ijkToRASArray(gridNode))
    result = metrics.evaluate(synthetic.array, reference.array, mask, slice_axis=axialAxis)
    mode = result["conventions"]["normalisation"]
    syntheticNormalised, _ = metrics.normalise_for_metrics(synthetic.array, mask, mode)
    referenceNormalised, _ = metrics.normalise_for_metrics(reference.array, mask, mode)
    difference = np.where(mask, syntheticNormalised - referenceNormalised, 0.0).astype(np.float32)
    inside = np.abs(difference[mask])
    displayMax = float(np.percentile(inside, PERCENTILE_HIGH)) if inside.size else 1.0
    return ReferenceComparison(synthetic.with_array(difference), result, displayMax)
