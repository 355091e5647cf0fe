"""Linked axial comparison views: input | synthetic, or input | synthetic | reference.

Works on MRML nodes only (layout node, slice nodes, slice composite nodes, crosshair), so it is
the same code in Slicer, where the layout manager builds the widgets from the layout node, and
in tests on a plain scene.
"""

import slicer

#: Custom layout id for the three-view comparison (built-in layout ids are all below 100).
THREE_VIEW_LAYOUT_ID = 18501
TWO_VIEW_LAYOUT_ID = slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView  # Red | Yellow
TWO_VIEW_NAMES = ("Red", "Yellow")
THREE_VIEW_NAMES = ("Red", "Yellow", "Green")
_VIEW_COLORS = {"Red": ("R", "#F34A33"), "Yellow": ("Y", "#EDD54C"), "Green": ("G", "#6EB04B")}


def threeViewLayoutDescription() -> str:
    """Layout XML: three axial slice views in one row (Red | Yellow | Green)."""
    items = []
    for name in THREE_VIEW_NAMES:
        label, color = _VIEW_COLORS[name]
        items.append(
            f' <item><view class="vtkMRMLSliceNode" singletontag="{name}">'
            f'<property name="orientation" action="default">Axial</property>'
            f'<property name="viewlabel" action="default">{label}</property>'
            f'<property name="viewcolor" action="default">{color}</property>'
            f'</view></item>\n')
    return '<layout type="horizontal" split="true">\n' + "".join(items) + "</layout>\n"


def sliceNodeByName(scene, viewName: str):
    for sliceNode in slicer.util.getNodesByClass("vtkMRMLSliceNode", scene):
        if sliceNode.GetLayoutName() == viewName:
            return sliceNode
    raise ValueError(f"the scene has no slice view named '{viewName}'")


def sliceCompositeNode(sliceNode):
    """The composite node (which volumes a view shows) that belongs to ``sliceNode``."""
    compositeNode = slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(sliceNode)
    if compositeNode is None:
        raise ValueError(f"slice view '{sliceNode.GetLayoutName()}' has no composite node")
    return compositeNode


def showComparison(layoutNode, volumeNodes, overlayNode=None, overlayOpacity: float = 0.0) -> list:
    """Switch to the comparison layout and show ``volumeNodes`` (2 or 3) side by side.

    Each view's composite node is set explicitly (background = one volume, no label map), every
    view is made axial explicitly (layout "default" orientations only apply to new views), and the
    views are linked (slice offset, zoom) with hot-linked cursors and a crosshair. ``overlayNode``
    (the difference map) becomes the foreground of the last view at ``overlayOpacity``, so the
    reference stays unobscured until the user fades the overlay in. Returns the view names used.
    """
    volumeNodes = list(volumeNodes)
    if len(volumeNodes) == 2:
        viewNames, layoutId = TWO_VIEW_NAMES, TWO_VIEW_LAYOUT_ID
    elif len(volumeNodes) == 3:
        viewNames, layoutId = THREE_VIEW_NAMES, THREE_VIEW_LAYOUT_ID
        if not layoutNode.IsLayoutDescription(layoutId):
            layoutNode.AddLayoutDescription(layoutId, threeViewLayoutDescription())
    else:
        raise ValueError(f"expected 2 or 3 volumes to compare, got {len(volumeNodes)}")
    layoutNode.SetViewArrangement(layoutId)

    scene = layoutNode.GetScene()
    for index, (viewName, volumeNode) in enumerate(zip(viewNames, volumeNodes)):
        sliceNode = sliceNodeByName(scene, viewName)
        sliceNode.SetOrientationToAxial()
        compositeNode = sliceCompositeNode(sliceNode)
        isLast = index == len(volumeNodes) - 1
        foregroundID = overlayNode.GetID() if (overlayNode is not None and isLast) else None
        compositeNode.SetBackgroundVolumeID(volumeNode.GetID())
        compositeNode.SetForegroundVolumeID(foregroundID)
        compositeNode.SetForegroundOpacity(overlayOpacity if foregroundID else 0.0)
        compositeNode.SetLabelVolumeID(None)
        compositeNode.SetLinkedControl(True)
        compositeNode.SetHotLinkedControl(True)

    crosshairNode = scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    if crosshairNode is not None:
        crosshairNode.SetCrosshairMode(slicer.vtkMRMLCrosshairNode.ShowSmallBasic)
    return list(viewNames)
