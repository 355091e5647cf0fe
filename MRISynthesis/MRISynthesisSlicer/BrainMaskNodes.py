"""Brain masks as MRML nodes: read a labelmap or segmentation on the input's grid, show the mask
that was used as an editable segmentation.

The automatic mask (``MRISynthesisLib.brain_extraction``) is shown as a segmentation node with
one segment, "brain", so the user can inspect it, fix it with the Segment Editor and choose it
as *Brain mask* for the next run.
"""

import numpy as np
import slicer
import vtk

from .VolumeNodes import ijkToRASArray, removeWithDisplayAndStorage, volumeOnGrid

#: Name of the segment holding the brain.
BRAIN_SEGMENT = "brain"
BRAIN_COLOR = (0.95, 0.75, 0.2)


def maskArrayFromNode(maskNode, inputVolume) -> np.ndarray:
    """Boolean ``[i, j, k]`` mask on ``inputVolume``'s grid from a labelmap (non-zero = brain) or a
    segmentation node (union of its segments). Raises ``ValueError`` when it has no brain voxel."""
    if maskNode.IsA("vtkMRMLSegmentationNode"):
        segmentIds = vtk.vtkStringArray()
        maskNode.GetSegmentation().GetSegmentIDs(segmentIds)
        scene = inputVolume.GetScene()
        existing = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__brain_mask__")
        try:
            if segmentIds.GetNumberOfValues() == 0 or not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                    maskNode, segmentIds, labelmap, inputVolume):
                raise ValueError(f"Brain mask '{maskNode.GetName()}' has no segment to use")
            mask = volumeOnGrid(labelmap, inputVolume).array != 0
        finally:  # the labelmap and what the export made for it (display, colour table) go again
            created = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
            for node in created:
                if node.GetID() not in existing:
                    scene.RemoveNode(node)
    else:
        mask = volumeOnGrid(maskNode, inputVolume).array != 0
    if not mask.any():
        raise ValueError(f"Brain mask '{maskNode.GetName()}' has no non-zero voxel inside the input volume")
    return mask


def showMaskAsSegmentation(mask, inputVolume, name):
    """A new segmentation node ``name`` with one segment "brain" = ``mask`` (``[i, j, k]`` on
    ``inputVolume``'s grid), its geometry taken from the input volume and placed under the input's
    parent transform, so it is drawn where the input is."""
    scene = inputVolume.GetScene()
    labelmap = slicer.util.addVolumeFromArray(np.ascontiguousarray(np.asarray(mask, dtype=np.uint8).transpose(2, 1, 0)),
                                              ijkToRAS=ijkToRASArray(inputVolume), name=BRAIN_SEGMENT,
                                              nodeClassName="vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    try:
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
            raise RuntimeError(f"could not import the brain mask into segmentation '{name}'")
        segment = segmentation.GetSegmentation().GetNthSegment(0)
        segment.SetName(BRAIN_SEGMENT)
        segment.SetColor(*BRAIN_COLOR)
        display = segmentation.GetDisplayNode()
        if display is not None:
            display.SetOpacity2DFill(0.2)
        segmentation.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
    except Exception:
        scene.RemoveNode(segmentation)
        raise
    finally:
        removeWithDisplayAndStorage(labelmap)
    return segmentation
