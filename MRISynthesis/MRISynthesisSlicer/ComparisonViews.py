"""Linked axial comparison views: input | synthetic, or input | synthetic | reference.

Works on MRML nodes only (layout node, slice nodes, slice composite nodes, crosshair), so it is
the same code in Slicer, where the layout manager builds the widgets from the layout node, and
in tests on a plain scene.

The comparison makes the standard Red/Yellow/Green views axial, links them (slice offset, zoom),
hot-links them and shows a crosshair. Layout "default" orientations
apply only to newly created views, so Conventional or Four-Up would otherwise keep three axial
views afterwards: the orientations before the comparison are remembered on the layout node and
restored as soon as the layout changes to one that is not a comparison layout, and so are the
views' linking, hot-linking and the crosshair mode (each one unless the user changed it since).
"""

import slicer
import vtk

#: Custom layout id for the three-view comparison (built-in layout ids are all below 100).
THREE_VIEW_LAYOUT_ID = 18501
TWO_VIEW_LAYOUT_ID = slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView  # Red | Yellow
TWO_VIEW_NAMES = ("Red", "Yellow")
THREE_VIEW_NAMES = ("Red", "Yellow", "Green")
_VIEW_COLORS = {"Red": ("R", "#F34A33"), "Yellow": ("Y", "#EDD54C"), "Green": ("G", "#6EB04B")}
#: Layout-node attribute: "Yellow=Sagittal;Green=Coronal", the orientations to restore.
SAVED_ORIENTATIONS_ATTRIBUTE = "MRISynthesis.OrientationsBeforeComparison"
#: Layout-node attribute: "Red.linked=0;Red.hotLinked=0;...;crosshair=0", the view links and crosshair
#: mode to restore (what the comparison sets: linked, hot-linked, small crosshair).
SAVED_VIEW_SETTINGS_ATTRIBUTE = "MRISynthesis.ViewSettingsBeforeComparison"
COMPARISON_ORIENTATION = "Axial"
COMPARISON_CROSSHAIR = slicer.vtkMRMLCrosshairNode.ShowSmallBasic
_layoutWatches = []  # (layoutNode, observer tag): at most one per layout node


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


def registerLayout(layoutNode) -> None:
    """Make the three-view layout known to ``layoutNode`` (idempotent). Called when Slicer has
    started, so that a scene saved in this layout finds it when reopened in a new session."""
    if not layoutNode.IsLayoutDescription(THREE_VIEW_LAYOUT_ID):
        layoutNode.AddLayoutDescription(THREE_VIEW_LAYOUT_ID, threeViewLayoutDescription())


def savedOrientations(layoutNode) -> dict:
    text = layoutNode.GetAttribute(SAVED_ORIENTATIONS_ATTRIBUTE) or ""
    return dict(item.split("=", 1) for item in text.split(";") if "=" in item)


def rememberOrientations(layoutNode, viewNames) -> None:
    """Store the current orientation of each view in ``viewNames`` that is not stored yet (a second
    comparison keeps what was there before the first one)."""
    saved = savedOrientations(layoutNode)
    for viewName in viewNames:
        if viewName not in saved:
            saved[viewName] = sliceNodeByName(layoutNode.GetScene(), viewName).GetOrientation()
    layoutNode.SetAttribute(SAVED_ORIENTATIONS_ATTRIBUTE, ";".join(f"{k}={v}" for k, v in saved.items()))


def _settingsOf(text) -> dict:
    return {key: int(value) for key, value in (item.split("=", 1) for item in (text or "").split(";") if "=" in item)}


def rememberViewSettings(layoutNode, viewNames) -> None:
    """Store the linking and hot-linking of each view in ``viewNames`` and the crosshair mode, unless
    stored already (a second comparison keeps what was there before the first one)."""
    saved = _settingsOf(layoutNode.GetAttribute(SAVED_VIEW_SETTINGS_ATTRIBUTE))
    scene = layoutNode.GetScene()
    for viewName in viewNames:
        compositeNode = sliceCompositeNode(sliceNodeByName(scene, viewName))
        saved.setdefault(f"{viewName}.linked", int(compositeNode.GetLinkedControl()))
        saved.setdefault(f"{viewName}.hotLinked", int(compositeNode.GetHotLinkedControl()))
    crosshairNode = scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    if crosshairNode is not None:
        saved.setdefault("crosshair", int(crosshairNode.GetCrosshairMode()))
    layoutNode.SetAttribute(SAVED_VIEW_SETTINGS_ATTRIBUTE, ";".join(f"{k}={v}" for k, v in saved.items()))


def restoreViewSettings(layoutNode) -> None:
    """Give back the remembered linking, hot-linking and crosshair mode, each unless the user changed
    it since the comparison set it; forgets what was remembered."""
    saved = _settingsOf(layoutNode.GetAttribute(SAVED_VIEW_SETTINGS_ATTRIBUTE))
    layoutNode.RemoveAttribute(SAVED_VIEW_SETTINGS_ATTRIBUTE)
    scene = layoutNode.GetScene()
    for key, value in saved.items():
        if key == "crosshair":
            crosshairNode = scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
            if crosshairNode is not None and crosshairNode.GetCrosshairMode() == COMPARISON_CROSSHAIR:
                crosshairNode.SetCrosshairMode(value)
            continue
        viewName, setting = key.split(".", 1)
        try:
            compositeNode = sliceCompositeNode(sliceNodeByName(scene, viewName))
        except ValueError:
            continue
        if setting == "linked" and compositeNode.GetLinkedControl():
            compositeNode.SetLinkedControl(value)
        elif setting == "hotLinked" and compositeNode.GetHotLinkedControl():
            compositeNode.SetHotLinkedControl(value)


def restoreOrientations(layoutNode) -> list:
    """Give each remembered view its orientation back, unless the user has reoriented it since
    (it is no longer axial). Forgets what was remembered; returns the names of the restored views."""
    saved = savedOrientations(layoutNode)
    layoutNode.RemoveAttribute(SAVED_ORIENTATIONS_ATTRIBUTE)
    restored = []
    for viewName, orientation in saved.items():
        try:
            sliceNode = sliceNodeByName(layoutNode.GetScene(), viewName)
        except ValueError:
            continue
        if sliceNode.GetOrientation() == COMPARISON_ORIENTATION and orientation != COMPARISON_ORIENTATION:
            sliceNode.SetOrientation(orientation)
            restored.append(viewName)
    return restored


def isComparisonLayout(layoutId) -> bool:
    return layoutId in (TWO_VIEW_LAYOUT_ID, THREE_VIEW_LAYOUT_ID)


def watchLayout(layoutNode) -> None:
    """Restore the remembered orientations once the layout leaves the comparison (one-shot observer)."""
    if any(node is layoutNode for node, _ in _layoutWatches):
        return

    def onLayoutModified(caller, event):
        if isComparisonLayout(layoutNode.GetViewArrangement()):
            return
        unwatchLayout(layoutNode)
        if layoutNode.GetScene() is not None:
            restoreOrientations(layoutNode)
            restoreViewSettings(layoutNode)

    _layoutWatches.append((layoutNode, layoutNode.AddObserver(vtk.vtkCommand.ModifiedEvent, onLayoutModified)))


def unwatchLayout(layoutNode) -> None:
    for entry in [entry for entry in _layoutWatches if entry[0] is layoutNode]:
        layoutNode.RemoveObserver(entry[1])
        _layoutWatches.remove(entry)


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
    reference stays unobscured until the user fades the overlay in. The views' previous
    orientations, linking, hot-linking and crosshair mode come back when the user switches to a
    non-comparison layout. Returns the view
    names used.
    """
    volumeNodes = list(volumeNodes)
    if len(volumeNodes) == 2:
        viewNames, layoutId = TWO_VIEW_NAMES, TWO_VIEW_LAYOUT_ID
    elif len(volumeNodes) == 3:
        viewNames, layoutId = THREE_VIEW_NAMES, THREE_VIEW_LAYOUT_ID
        registerLayout(layoutNode)
    else:
        raise ValueError(f"expected 2 or 3 volumes to compare, got {len(volumeNodes)}")
    rememberOrientations(layoutNode, viewNames)
    rememberViewSettings(layoutNode, viewNames)
    layoutNode.SetViewArrangement(layoutId)

    scene = layoutNode.GetScene()
    for index, (viewName, volumeNode) in enumerate(zip(viewNames, volumeNodes)):
        sliceNode = sliceNodeByName(scene, viewName)
        sliceNode.SetOrientation(COMPARISON_ORIENTATION)
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
        crosshairNode.SetCrosshairMode(COMPARISON_CROSSHAIR)
    watchLayout(layoutNode)
    return list(viewNames)
