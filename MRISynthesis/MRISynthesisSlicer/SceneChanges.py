"""Undo for the scene changes of one run: a failed run leaves every existing node as it was.

The logic registers each node it creates (:meth:`SceneChanges.created`) and each existing volume
node before it modifies it (:meth:`SceneChanges.willModify`); :meth:`SceneChanges.undo` removes
the created nodes and restores the modified ones (voxels, geometry, attributes, parent transform,
display properties, subject-hierarchy folder, link to its file) with MRML's own ``CopyContent``.
"""

import slicer

from .VolumeNodes import removeWithDisplayAndStorage


class _VolumeBackup:
    def __init__(self, volumeNode):
        self.node = volumeNode
        self.content = volumeNode.CreateNodeInstance()
        self.content.CopyContent(volumeNode, True)  # voxels (deep copy), IJKToRAS, attributes
        self.transformID = volumeNode.GetTransformNodeID()
        self.storage = volumeNode.GetStorageNode()  # re-added and re-linked if a failed run detached it
        self.displays = []
        for index in range(volumeNode.GetNumberOfDisplayNodes()):
            display = volumeNode.GetNthDisplayNode(index)
            if display is not None:
                copy = display.CreateNodeInstance()
                copy.CopyContent(display, True)
                self.displays.append((display, copy))
        self.displayIDs = [display.GetID() for display, _ in self.displays]
        self.shParent = None
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volumeNode.GetScene())
        if shNode is not None:
            item = shNode.GetItemByDataNode(volumeNode)
            if item != slicer.vtkMRMLSubjectHierarchyNode.GetInvalidItemID():
                self.shParent = shNode.GetItemParent(item)

    def restore(self):
        node, scene = self.node, self.node.GetScene()
        if scene is None:
            return
        node.CopyContent(self.content, True)
        node.SetAndObserveTransformNodeID(self.transformID)
        if self.storage is not None:
            if self.storage.GetScene() is None:
                scene.AddNode(self.storage)
            node.SetAndObserveStorageNodeID(self.storage.GetID())
        for display, copy in self.displays:
            display.CopyContent(copy, True)  # this also copies the saved input connection: point it
            display.SetInputImageDataConnection(node.GetImageDataConnection())  # at the restored voxels
        for index in reversed(range(node.GetNumberOfDisplayNodes())):  # display nodes the run added
            display = node.GetNthDisplayNode(index)
            if display is not None and display.GetID() not in self.displayIDs:
                node.RemoveNthDisplayNodeID(index)
                scene.RemoveNode(display)
        if self.shParent is not None:
            shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
            shNode.SetItemParent(shNode.GetItemByDataNode(node), self.shParent)


class SceneChanges:
    def __init__(self):
        self._created = []
        self._backups = []

    def created(self, node):
        """``node`` was added by this run; returns it."""
        self._created.append(node)
        return node

    def willModify(self, volumeNode):
        """Call before changing an existing volume node (once per node)."""
        if all(backup.node is not volumeNode for backup in self._backups):
            self._backups.append(_VolumeBackup(volumeNode))

    def undo(self):
        """Remove the created nodes (with their display/storage nodes) and restore the modified ones."""
        for node in reversed(self._created):
            removeWithDisplayAndStorage(node)
        for backup in reversed(self._backups):
            backup.restore()
        self._created, self._backups = [], []
