"""Naming, provenance attributes, subject-hierarchy placement and display of the module's outputs."""

import slicer

from MRISynthesisLib.conventions import target_contrast as targetContrast  # 'T2' for 't1-to-t2'

#: Node attributes written on every synthetic volume (read them with ``node.GetAttribute``).
MODEL_ID_ATTRIBUTE = "MRISynthesis.ModelId"
DIRECTION_ATTRIBUTE = "MRISynthesis.Direction"
SOURCE_VOLUME_ATTRIBUTE = "MRISynthesis.SourceVolumeID"
ROLE_ATTRIBUTE = "MRISynthesis.Role"  # "synthetic" or "difference"

DIFFERENCE_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
GREY_COLOR_NODE_ID = "vtkMRMLColorTableNodeGrey"


def syntheticVolumeName(inputName: str, direction: str, modelTitle: str) -> str:
    """e.g. 'MRBrainT1 synthetic T2 (Baseline U-Net)'."""
    return f"{inputName} synthetic {targetContrast(direction)} ({modelTitle})"


def differenceVolumeName(syntheticName: str) -> str:
    return f"{syntheticName} minus reference"


def placeNextTo(node, siblingNode) -> None:
    """Put ``node`` in the same subject-hierarchy folder/study as ``siblingNode``.

    Slicer's subject-hierarchy plugins create an item for every data node; plain MRML scenes
    (``slicer-core``) do not, so a missing item is created here.
    """
    scene = node.GetScene()
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if shNode is None:
        return
    invalid = slicer.vtkMRMLSubjectHierarchyNode.GetInvalidItemID()
    siblingItem = shNode.GetItemByDataNode(siblingNode)
    parentItem = shNode.GetItemParent(siblingItem) if siblingItem != invalid else invalid
    if parentItem == invalid:
        parentItem = shNode.GetSceneItemID()
    item = shNode.GetItemByDataNode(node)
    if item == invalid:
        shNode.CreateItem(parentItem, node)
    else:
        shNode.SetItemParent(item, parentItem)


def displayNodeWithFixedWindow(volumeNode):
    """The volume's scalar display node with automatic window/level off, made here when missing:
    ``CreateDefaultDisplayNodes`` would compute a histogram of the whole volume for an automatic
    window/level that is replaced at once (about 0.25 s of Slicer's main thread for 7 M voxels)."""
    displayNode = volumeNode.GetDisplayNode()
    if displayNode is None:
        displayNode = volumeNode.GetScene().AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
        displayNode.AutoWindowLevelOff()
        volumeNode.SetAndObserveDisplayNodeID(displayNode.GetID())
    displayNode.AutoWindowLevelOff()
    return displayNode


def showAsSynthetic(volumeNode, windowRange=None) -> None:
    """Grey colour map, window/level from the synthetic image itself (never the input's):
    ``windowRange`` (min, max) as the core computed it (``MRISynthesisLib.worker.display_range``),
    or computed here."""
    from MRISynthesisLib.worker import display_range

    displayNode = displayNodeWithFixedWindow(volumeNode)
    displayNode.SetAndObserveColorNodeID(GREY_COLOR_NODE_ID)
    if windowRange is None:
        windowRange = display_range(slicer.util.arrayFromVolume(volumeNode))
    displayNode.SetWindowLevelMinMax(*windowRange)


def showAsDifference(volumeNode, maxAbs: float) -> None:
    """Diverging blue-white-red colour map, symmetric around 0 so white means 'no difference'."""
    displayNode = displayNodeWithFixedWindow(volumeNode)
    displayNode.SetAndObserveColorNodeID(DIFFERENCE_COLOR_NODE_ID)
    maxAbs = float(maxAbs) if maxAbs > 0 else 1.0
    displayNode.SetWindowLevelMinMax(-maxAbs, maxAbs)


def detachStorage(volumeNode) -> str:
    """Unlink an existing node that now receives a synthetic volume from the file it was loaded from
    (Slicer's *File > Save* would otherwise write the synthetic voxels over that file, e.g. a real
    acquisition): its storage node is detached, and removed from the scene when no other node uses
    it. Returns the file name that was linked ("" when there was none)."""
    storageNode = volumeNode.GetStorageNode()
    if storageNode is None:
        return ""
    fileName = storageNode.GetFileName() or ""
    volumeNode.SetAndObserveStorageNodeID(None)
    scene = volumeNode.GetScene()
    usedElsewhere = any(node.GetStorageNode() is storageNode
                        for node in slicer.util.getNodesByClass("vtkMRMLStorableNode", scene) if node is not volumeNode)
    if scene is not None and not usedElsewhere:
        scene.RemoveNode(storageNode)
    return fileName


def setProvenance(volumeNode, role: str, modelId: str, direction: str, sourceNode) -> None:
    volumeNode.SetAttribute(ROLE_ATTRIBUTE, role)
    volumeNode.SetAttribute(MODEL_ID_ATTRIBUTE, modelId)
    volumeNode.SetAttribute(DIRECTION_ATTRIBUTE, direction)
    volumeNode.SetAttribute(SOURCE_VOLUME_ATTRIBUTE, sourceNode.GetID())
