"""Volume node <-> :class:`MRISynthesisLib.volume.Volume`, with the checks a user needs to see.

Slicer's ``arrayFromVolume`` is indexed ``[k, j, i]``; geometry lives on the node as the IJKToRAS
matrix (RAS, mm). Both cross the boundary together through ``Volume.from_kji``.
"""

import numpy as np
import slicer
import vtk

from MRISynthesisLib.volume import Volume


def ijkToRASArray(volumeNode) -> np.ndarray:
    """The node's 4x4 IJKToRAS matrix (mm) as a float64 numpy array."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix).astype(np.float64)


def checkScalarVolume(volumeNode, role: str) -> None:
    """Raise ``ValueError`` naming ``role`` unless the node is a 3D single-component scalar volume.

    Labelmaps, vector/RGB volumes, 2D images, volumes without voxels and constant volumes are
    refused: none of them is an MRI contrast a model can translate.
    """
    if volumeNode is None:
        raise ValueError(f"{role} is not set: select a volume")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(f"{role} '{volumeNode.GetName()}' is a {volumeNode.GetClassName()}; "
                         "expected a scalar (greyscale) volume")
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetNumberOfPoints() == 0:
        raise ValueError(f"{role} '{volumeNode.GetName()}' is empty (it has no voxels)")
    components = imageData.GetNumberOfScalarComponents()
    if volumeNode.IsA("vtkMRMLVectorVolumeNode") or components != 1:
        raise ValueError(f"{role} '{volumeNode.GetName()}' has {components} components per voxel "
                         "(a vector or colour image); expected a single-component scalar volume")
    dimensions = imageData.GetDimensions()
    if min(dimensions) < 2:
        raise ValueError(f"{role} '{volumeNode.GetName()}' is 2D (dimensions {dimensions[0]} x "
                         f"{dimensions[1]} x {dimensions[2]}); expected a 3D volume")
    scalarRange = imageData.GetScalarRange()
    if not scalarRange[1] > scalarRange[0]:
        raise ValueError(f"{role} '{volumeNode.GetName()}' is empty: every voxel is {scalarRange[0]:g}")


def volumeFromNode(volumeNode, role: str = "Input volume") -> Volume:
    """Copy of the node's voxels (float32) and geometry as a core ``Volume``; the node is untouched."""
    checkScalarVolume(volumeNode, role)
    arrayKJI = np.array(slicer.util.arrayFromVolume(volumeNode), dtype=np.float32, copy=True)
    return Volume.from_kji(arrayKJI, ijkToRASArray(volumeNode))


def updateNodeFromVolume(volumeNode, volume: Volume, geometryNode) -> None:
    """Write ``volume``'s voxels (float32) into ``volumeNode`` with exactly ``geometryNode``'s geometry.

    The voxels must already be on ``geometryNode``'s grid (same shape); geometry is copied from the
    node with ``CopyOrientation`` rather than rebuilt from the matrix, so it is bit-for-bit equal.
    The node also follows ``geometryNode``'s parent transform, if any.
    """
    expected = tuple(reversed(geometryNode.GetImageData().GetDimensions()))
    arrayKJI = volume.array_kji().astype(np.float32, copy=False)
    if arrayKJI.shape != expected:
        raise ValueError(f"synthetic volume has shape {arrayKJI.shape} (k, j, i); expected {expected}")
    slicer.util.updateVolumeFromArray(volumeNode, arrayKJI)
    volumeNode.CopyOrientation(geometryNode)
    volumeNode.SetAndObserveTransformNodeID(geometryNode.GetTransformNodeID())


def volumesLogic(scene):
    """Slicer's volumes logic when running in Slicer, else a new one on ``scene`` (slicer-core)."""
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "volumes") and modules.volumes.logic().GetMRMLScene() is scene:
        return modules.volumes.logic()
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)
    return logic


def sameGeometry(volumeNode, otherNode) -> bool:
    """Slicer's own test: same dimensions, spacing, origin and directions (within its tolerance)."""
    return volumesLogic(volumeNode.GetScene()).CompareVolumeGeometry(volumeNode, otherNode) == ""


def volumeOnGrid(volumeNode, gridNode) -> Volume:
    """``volumeNode``'s voxels as a core Volume on ``gridNode``'s grid.

    Resampled (linear; nearest neighbour for labelmaps) only when the geometries differ; the
    temporary resampled node is removed again, so the scene is unchanged.
    """
    if sameGeometry(volumeNode, gridNode):
        return Volume.from_kji(np.array(slicer.util.arrayFromVolume(volumeNode), dtype=np.float32),
                               ijkToRASArray(volumeNode))
    resampled = slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume(volumeNode, gridNode)
    try:
        return Volume.from_kji(np.array(slicer.util.arrayFromVolume(resampled), dtype=np.float32),
                               ijkToRASArray(resampled))
    finally:
        removeWithDisplayAndStorage(resampled)


def removeWithDisplayAndStorage(volumeNode) -> None:
    """Remove a volume node and the display/storage nodes that only it uses (a plain
    ``RemoveNode`` leaves those behind)."""
    scene = volumeNode.GetScene()
    if scene is None:
        return
    helpers = [volumeNode.GetNthDisplayNode(i) for i in range(volumeNode.GetNumberOfDisplayNodes())]
    helpers.append(volumeNode.GetStorageNode())
    scene.RemoveNode(volumeNode)
    for node in helpers:
        if node is not None and node.GetScene() is not None:
            scene.RemoveNode(node)
