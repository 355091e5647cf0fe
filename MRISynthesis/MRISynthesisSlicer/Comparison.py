"""Synthetic vs. real target: difference volume and metrics, on the synthetic volume's grid.

The difference uses exactly the normalisation of the metrics (``MRISynthesisLib.metrics``), so the
map shows the errors that the numbers summarise, not scanner intensity scaling.
"""

import numpy as np

from MRISynthesisLib import metrics, orientation, preprocessing

from .OutputNodes import differenceVolumeName, showAsDifference
from .VolumeNodes import checkScalarVolume, updateNodeFromVolume, volumeFromNode, volumeOnGrid


def compareWithReference(syntheticNode, referenceNode, mask=None):
    """Metrics of the synthetic volume against the reference and the signed difference volume.

    ``mask`` (``[i, j, k]`` on the synthetic grid) defaults to the reference's brain mask
    (``MRISynthesisLib.preprocessing.brain_mask``). Returns ``(differenceNode, metricsResult)``;
    ``metricsResult`` is ``MRISynthesisLib.metrics.evaluate``'s dict, conventions included.
    The difference node (synthetic - reference, normalised units, 0 outside the mask) is added to
    the synthetic's scene with a diverging colour map.
    """
    synthetic = volumeFromNode(syntheticNode, "Synthetic volume")
    checkScalarVolume(referenceNode, "Reference volume")
    reference = volumeOnGrid(referenceNode, syntheticNode)
    if mask is None:
        mask = preprocessing.brain_mask(reference.array)
    if not np.any(mask):
        raise ValueError(f"Reference volume '{referenceNode.GetName()}' has no brain voxels where the synthetic "
                         "volume is; do the two volumes overlap in space (same patient, registered)?")
    axialAxis = orientation.find_axial_axis(synthetic.affine)
    result = metrics.evaluate(synthetic.array, reference.array, mask, slice_axis=axialAxis)
    mode = result["conventions"]["normalisation"]
    syntheticNormalised, _ = metrics.normalise_for_metrics(synthetic.array, mask, mode)
    referenceNormalised, _ = metrics.normalise_for_metrics(reference.array, mask, mode)
    difference = np.where(mask, syntheticNormalised - referenceNormalised, 0.0).astype(np.float32)

    scene = syntheticNode.GetScene()
    differenceNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", differenceVolumeName(syntheticNode.GetName()))
    updateNodeFromVolume(differenceNode, synthetic.with_array(difference), syntheticNode)
    inside = np.abs(difference[mask]) if mask.any() else np.zeros(1)
    showAsDifference(differenceNode, float(np.percentile(inside, 99.5)) if inside.size else 1.0)
    return differenceNode, result
