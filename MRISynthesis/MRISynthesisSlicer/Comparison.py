"""The reference volume for a comparison: its voxels on the input's grid, in world coordinates.

The metrics and the difference map are the core's (``MRISynthesisLib.worker.compare_with_reference``:
the command line's ``evaluate --normalisation model-units`` convention), computed where the
synthesis runs; this file only brings the reference onto the grid, which needs MRML.
"""

import numpy as np

from .VolumeNodes import checkScalarVolume, volumeOnGrid


def referenceOnGrid(referenceNode, gridNode) -> np.ndarray:
    """``referenceNode``'s voxels on ``gridNode``'s grid (float32 ``[i, j, k]``, a view of a C-contiguous
    ``[k, j, i]`` copy; 0 outside the grid),
    parent transforms included. ``ValueError`` for a reference that is not a usable scalar volume
    or that does not overlap the grid at all."""
    checkScalarVolume(referenceNode, "Reference volume")
    reference = volumeOnGrid(referenceNode, gridNode).array
    if not np.any(reference > 0):
        raise ValueError(f"Reference volume '{referenceNode.GetName()}' has no brain voxels where the synthetic "
                         "volume is; do the two volumes overlap in space (same patient, registered)?")
    return reference
