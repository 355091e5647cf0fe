"""Volume node <-> :class:`MRISynthesisLib.volume.Volume`, with the checks a user needs to see.

Slicer's ``arrayFromVolume`` is indexed ``[k, j, i]``; geometry lives on the node as the IJKToRAS
matrix (RAS, mm). Both cross the boundary together (``kjiVolume``: a transposed view, no copy).

Parent transforms: a node's IJKToRAS maps voxels to its *local* RAS; its parent transform (if any)
maps local RAS to world RAS, which is where Slicer shows it. Everything that relates two nodes
here (same grid? resample one onto the other) works in world coordinates, with the linear
transform between the two nodes' parents (``vtkMRMLTransformNode.GetMatrixTransformBetweenNodes``).
Slicer's ``CompareVolumeGeometry`` and ``ResampleVolumeToReferenceVolume`` are not used: the first
compares transform IDs (and reports a mismatch even for the same transform), the second applies
only the first volume's transform.
"""

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from MRISynthesisLib.volume import Volume

#: Index-space tolerance (voxels) below which two grids are taken as identical (no resampling).
SAME_GRID_TOLERANCE = 1e-6


def ijkToRASArray(volumeNode) -> np.ndarray:
    """The node's 4x4 IJKToRAS matrix (mm, local RAS) as a float64 numpy array."""
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
    array = slicer.util.arrayFromVolume(volumeNode)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ValueError(f"{role} '{volumeNode.GetName()}' contains NaN or infinite values")
    scalarRange = imageData.GetScalarRange()
    if not scalarRange[1] > scalarRange[0]:
        raise ValueError(f"{role} '{volumeNode.GetName()}' is empty: every voxel is {scalarRange[0]:g}")


def isPlainScalarVolume(volumeNode) -> bool:
    """True only for ``vtkMRMLScalarVolumeNode`` itself, not its subclasses (labelmap, vector,
    diffusion-weighted, tensor volumes)."""
    return volumeNode is not None and volumeNode.GetClassName() == "vtkMRMLScalarVolumeNode"


def defaultInputVolume(scene):
    """The first visible plain scalar volume of ``scene`` (None if there is none): what the module
    preselects as input. Labelmaps and hidden vector/DWI/tensor volumes are skipped."""
    for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", scene):
        if isPlainScalarVolume(node) and not node.GetHideFromEditors():
            return node
    return None


# --- parent transforms -----------------------------------------------------------------------------

def matrixBetweenNodes(fromNode, toNode) -> np.ndarray:
    """4x4 matrix from ``fromNode``'s local RAS to ``toNode``'s local RAS (through world).

    ``ValueError`` when a non-linear transform lies between them (a shared parent transform,
    linear or not, cancels out)."""
    fromParent, toParent = fromNode.GetParentTransformNode(), toNode.GetParentTransformNode()
    if fromParent is None and toParent is None:
        return np.eye(4)
    if fromParent is not None:
        linear = fromParent.IsTransformToNodeLinear(toParent) if toParent is not None else \
            fromParent.IsTransformToWorldLinear()
    else:
        linear = toParent.IsTransformToWorldLinear()
    if not linear:
        raise ValueError(f"'{fromNode.GetName()}' and '{toNode.GetName()}' are related by a non-linear transform, "
                         "which MRI Synthesis does not support here; harden it (Data module: right-click the "
                         "transform, 'Harden transform') or resample one volume onto the other first")
    matrix = vtk.vtkMatrix4x4()
    slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(fromParent, toParent, matrix)
    return slicer.util.arrayFromVTKMatrix(matrix).astype(np.float64)


def worldIJKToRAS(volumeNode):
    """IJK -> world RAS (the node's IJKToRAS after its parent transforms), or None when a
    transform above the node is non-linear."""
    parent = volumeNode.GetParentTransformNode()
    if parent is None:
        return ijkToRASArray(volumeNode)
    if not parent.IsTransformToWorldLinear():
        return None
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix).astype(np.float64) @ ijkToRASArray(volumeNode)


def gridToVolumeIJK(gridNode, volumeNode) -> np.ndarray:
    """4x4 matrix from ``gridNode``'s voxel indices to ``volumeNode``'s voxel indices (world-aware)."""
    return (np.linalg.inv(ijkToRASArray(volumeNode)) @ matrixBetweenNodes(gridNode, volumeNode)
            @ ijkToRASArray(gridNode))


def dimensionsIJK(volumeNode) -> tuple:
    return tuple(volumeNode.GetImageData().GetDimensions())


def sameGrid(volumeNode, gridNode) -> bool:
    """True when both nodes' voxels coincide in world space (same dimensions, and each voxel
    centre maps to the same index within ``SAME_GRID_TOLERANCE``): no resampling needed."""
    if dimensionsIJK(volumeNode) != dimensionsIJK(gridNode):
        return False
    return bool(np.allclose(gridToVolumeIJK(gridNode, volumeNode), np.eye(4), rtol=0, atol=SAME_GRID_TOLERANCE))


def _resampledKJI(volumeNode, gridNode, nearest: bool) -> np.ndarray:
    """``volumeNode``'s voxels sampled at ``gridNode``'s voxel centres (float32, ``[k, j, i]``, 0 outside)."""
    source = vtk.vtkImageData()
    source.ShallowCopy(volumeNode.GetImageData())
    source.SetOrigin(0.0, 0.0, 0.0)  # node geometry is in IJKToRAS; work in index space
    source.SetSpacing(1.0, 1.0, 1.0)
    axes = vtk.vtkMatrix4x4()
    mapping = gridToVolumeIJK(gridNode, volumeNode)
    for row in range(4):
        for column in range(4):
            axes.SetElement(row, column, mapping[row, column])
    reslice = vtk.vtkImageReslice()
    reslice.SetInputData(source)
    reslice.SetResliceAxes(axes)  # output index -> input index
    reslice.SetOutputOrigin(0.0, 0.0, 0.0)
    reslice.SetOutputSpacing(1.0, 1.0, 1.0)
    di, dj, dk = dimensionsIJK(gridNode)
    reslice.SetOutputExtent(0, di - 1, 0, dj - 1, 0, dk - 1)
    reslice.SetOutputScalarType(vtk.VTK_FLOAT)
    reslice.SetBackgroundLevel(0.0)
    if nearest:
        reslice.SetInterpolationModeToNearestNeighbor()
    else:
        reslice.SetInterpolationModeToLinear()
    reslice.Update()
    return vtk_to_numpy(reslice.GetOutput().GetPointData().GetScalars()).reshape(dk, dj, di).astype(np.float32)


def kjiVolume(arrayKJI, ijkToRAS) -> Volume:
    """A core ``Volume`` whose ``[i, j, k]`` array is a transposed *view* of ``arrayKJI`` (which the
    caller owns): no transposing copy on Slicer's main thread (seconds' worth for large volumes);
    ``volume.array.transpose(2, 1, 0)`` gives the C-contiguous ``[k, j, i]`` array back."""
    return Volume(np.asarray(arrayKJI).transpose(2, 1, 0), np.array(ijkToRAS, dtype=np.float64))


def volumeOnGrid(volumeNode, gridNode) -> Volume:
    """``volumeNode``'s voxels as a core Volume on ``gridNode``'s grid, in world coordinates.

    Both nodes' parent transforms are taken into account (``ValueError`` if a non-linear one lies
    between them). The voxels are copied as they are when the grids coincide; otherwise they are
    resampled (linear; nearest neighbour for labelmaps), 0 outside ``volumeNode``. No node is
    created or modified. The returned Volume carries ``gridNode``'s local IJKToRAS.
    """
    if sameGrid(volumeNode, gridNode):
        arrayKJI = np.array(slicer.util.arrayFromVolume(volumeNode), dtype=np.float32, copy=True)
    else:
        arrayKJI = _resampledKJI(volumeNode, gridNode, nearest=volumeNode.IsA("vtkMRMLLabelMapVolumeNode"))
    return kjiVolume(arrayKJI, ijkToRASArray(gridNode))


# --- reading and writing ---------------------------------------------------------------------------

def volumeFromNode(volumeNode, role: str = "Input volume", inWorld: bool = False) -> Volume:
    """Copy of the node's voxels (float32) and geometry as a core ``Volume``; the node is untouched.

    ``inWorld``: the affine includes the node's (linear) parent transforms, i.e. the orientation
    Slicer displays; a non-linear parent transform leaves the node's own IJKToRAS.
    """
    checkScalarVolume(volumeNode, role)
    arrayKJI = np.array(slicer.util.arrayFromVolume(volumeNode), dtype=np.float32, copy=True)
    affine = worldIJKToRAS(volumeNode) if inWorld else None
    return kjiVolume(arrayKJI, ijkToRASArray(volumeNode) if affine is None else affine)


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


def isInScene(node, scene) -> bool:
    """False once ``node`` was removed from ``scene`` or the scene was closed."""
    return node is not None and scene is not None and node.GetScene() is scene \
        and scene.GetNodeByID(node.GetID()) is node


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
