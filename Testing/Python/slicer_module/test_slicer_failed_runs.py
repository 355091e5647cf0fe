"""A failed or interrupted run leaves every existing node exactly as it was.

Covers a reference that fails after synthesis (no overlap, NaN), output nodes that must be refused
(labelmap, mask, vector volume), a failure while the results are written (undone), and the user
removing a node or closing the scene between two slice batches (the widget processes GUI events
in its progress callback).
"""

import numpy as np
import pytest
import slicer

from MRISynthesisLib.errors import Cancelled
from MRISynthesisSlicer import OutputNodes
from MRISynthesisSlicer.SynthesisLogic import SynthesisLogic


def nodeIDs(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def volumeState(node, helpers):
    """Everything the logic could change on a volume node, as comparable values."""
    display = node.GetDisplayNode()
    attributes = {name: node.GetAttribute(name) for name in node.GetAttributeNames() or ()}
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    return dict(
        array=slicer.util.arrayFromVolume(node).copy(), dtype=str(slicer.util.arrayFromVolume(node).dtype),
        matrix=helpers.ijkToRASOf(node).copy(), name=node.GetName(), attributes=attributes,
        transform=node.GetTransformNodeID(), displays=node.GetNumberOfDisplayNodes(),
        storageFile=node.GetStorageNode().GetFileName() if node.GetStorageNode() else None,
        color=display.GetColorNodeID() if display else None,
        windowLevel=(display.GetWindow(), display.GetLevel(), display.GetAutoWindowLevel())
        if hasattr(display, "GetWindow") else None,
        shParent=shNode.GetItemParent(shNode.GetItemByDataNode(node)))


def assertUnchanged(before, after):
    np.testing.assert_array_equal(after.pop("array"), before.pop("array"))
    np.testing.assert_array_equal(after.pop("matrix"), before.pop("matrix"))
    assert after == before


@pytest.fixture
def existingOutput(app, makeVolume, helpers):
    """A previous result the user chose as output: own voxels, geometry, transform, attributes,
    display and subject-hierarchy folder."""
    node = makeVolume("previous result", arrayKJI=np.full((4, 5, 6), 7.0, np.float32), axcodes="LPS")
    node.SetAttribute("MyLab.Note", "keep me")
    node.AddDefaultStorageNode()  # loaded from a file: File > Save would write there
    node.GetStorageNode().SetFileName("/data/sub-01/anat/sub-01_T2w.nii.gz")
    node.SetAttribute(OutputNodes.MODEL_ID_ATTRIBUTE, "older-model")
    node.GetDisplayNode().AutoWindowLevelOff()
    node.GetDisplayNode().SetWindowLevelMinMax(-3, 11)
    node.SetAndObserveTransformNodeID(app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode").GetID())
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(app.scene)
    folder = shNode.CreateFolderItem(shNode.GetSceneItemID(), "my results")
    shNode.SetItemParent(shNode.GetItemByDataNode(node), folder)
    return node


def runFailing(match, error, inputVolume, output, checkpoint, **options):
    with pytest.raises(error, match=match):
        SynthesisLogic().process(inputVolume, output, str(checkpoint), "t1-to-t2", device="cpu", **options)


# --- issue 9 item 5: failures after synthesis do not touch the existing output -------------------------

def test_reference_without_overlap_leaves_the_existing_output_untouched(app, makeVolume, helpers, existingOutput,
                                                                       t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    far = helpers.ijkToRAS("RAS", origin=(600.0, 0.0, 0.0))
    reference = makeVolume("T2 elsewhere", arrayKJI=helpers.headPhantomKJI(seed=2), matrix=far)
    before, nodesBefore = volumeState(existingOutput, helpers), nodeIDs(app.scene)

    runFailing("has no brain voxels where the synthetic volume is", ValueError, inputVolume, existingOutput,
               t1ToT2Checkpoint, referenceVolume=reference)

    assertUnchanged(before, volumeState(existingOutput, helpers))
    assert nodeIDs(app.scene) == nodesBefore


def test_reference_with_nan_is_refused_before_anything_changes(app, makeVolume, helpers, existingOutput,
                                                               t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    referenceKJI = helpers.headPhantomKJI(seed=3)
    referenceKJI[5, 20, 18] = np.nan
    reference = makeVolume("T2 with NaN", arrayKJI=referenceKJI)
    before, nodesBefore = volumeState(existingOutput, helpers), nodeIDs(app.scene)

    runFailing("'T2 with NaN' contains NaN or infinite values", ValueError, inputVolume, existingOutput,
               t1ToT2Checkpoint, referenceVolume=reference)

    assertUnchanged(before, volumeState(existingOutput, helpers))
    assert nodeIDs(app.scene) == nodesBefore


def test_labelmap_is_refused_as_output(app, makeVolume, helpers, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    labels = slicer.util.addVolumeFromArray(np.ones((8, 9, 10), np.uint8), name="segmentation",
                                            nodeClassName="vtkMRMLLabelMapVolumeNode")
    before, nodesBefore = volumeState(labels, helpers), nodeIDs(app.scene)

    runFailing("Output volume 'segmentation' is a vtkMRMLLabelMapVolumeNode; expected a scalar volume node",
               ValueError, inputVolume, labels, t1ToT2Checkpoint)

    assertUnchanged(before, volumeState(labels, helpers))
    assert nodeIDs(app.scene) == nodesBefore


@pytest.mark.parametrize("nodeClass", ["vtkMRMLLabelMapVolumeNode", "vtkMRMLScalarVolumeNode"])
def test_mask_is_refused_as_output(nodeClass, app, makeVolume, helpers, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    maskKJI = np.zeros(slicer.util.arrayFromVolume(inputVolume).shape, np.uint8)
    maskKJI[:, 10:30, 8:28] = 1
    mask = slicer.util.addVolumeFromArray(maskKJI, ijkToRAS=helpers.ijkToRASOf(inputVolume), name="brain",
                                          nodeClassName=nodeClass)
    before = volumeState(mask, helpers)

    runFailing("Output volume is the brain mask volume", ValueError, inputVolume, mask, t1ToT2Checkpoint,
               maskVolume=mask)

    assertUnchanged(before, volumeState(mask, helpers))


def test_vector_volume_is_refused_as_output(app, makeVolume, t1ToT2Checkpoint):
    rgb = slicer.util.addVolumeFromArray(np.ones((8, 9, 10, 3), np.uint8), name="photo",
                                         nodeClassName="vtkMRMLVectorVolumeNode")
    runFailing("'photo' is a vtkMRMLVectorVolumeNode", ValueError, makeVolume("T1"), rgb, t1ToT2Checkpoint)
    assert slicer.util.arrayFromVolume(rgb).shape == (8, 9, 10, 3)


def test_reference_is_refused_as_output(makeVolume, helpers, t1ToT2Checkpoint):
    reference = makeVolume("T2", arrayKJI=helpers.headPhantomKJI(seed=4))
    runFailing("Output volume is the reference volume", ValueError, makeVolume("T1"), reference, t1ToT2Checkpoint,
               referenceVolume=reference)


def test_failure_while_writing_results_is_undone(app, makeVolume, helpers, existingOutput, t1ToT2Checkpoint,
                                                 monkeypatch):
    """Even a failure in the last step (after the voxels were written) restores the output node."""
    inputVolume = makeVolume("T1")
    reference = makeVolume("T2", arrayKJI=helpers.headPhantomKJI(seed=5))
    before, nodesBefore = volumeState(existingOutput, helpers), nodeIDs(app.scene)

    def failingPlacement(node, sibling):
        raise RuntimeError("subject hierarchy unavailable")

    monkeypatch.setattr(OutputNodes, "placeNextTo", failingPlacement)
    runFailing("subject hierarchy unavailable", RuntimeError, inputVolume, existingOutput, t1ToT2Checkpoint,
               referenceVolume=reference)

    assertUnchanged(before, volumeState(existingOutput, helpers))
    assert nodeIDs(app.scene) == nodesBefore


def test_successful_run_into_existing_output_changes_only_what_it_should(app, makeVolume, helpers, existingOutput,
                                                                        t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    result = SynthesisLogic().process(inputVolume, existingOutput, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu")
    assert result.outputVolume is existingOutput
    assert existingOutput.GetAttribute("MyLab.Note") == "keep me"
    assert existingOutput.GetAttribute(OutputNodes.MODEL_ID_ATTRIBUTE) == "tiny-t1-to-t2"
    assert existingOutput.GetTransformNodeID() is None  # follows the input
    # Issue 23 item 3: no longer linked to the acquisition's file, so File > Save cannot write over it.
    assert existingOutput.GetStorageNode() is None
    assert not [node for node in slicer.util.getNodesByClass("vtkMRMLStorageNode", app.scene)
                if node.GetFileName() == "/data/sub-01/anat/sub-01_T2w.nii.gz"]
    assert any("no longer linked to the file '/data/sub-01/anat/sub-01_T2w.nii.gz'" in note for note in result.notes)
    np.testing.assert_array_equal(helpers.ijkToRASOf(existingOutput), helpers.ijkToRASOf(inputVolume))


# --- issue 11 item 5: nodes removed or scene closed during the run ------------------------------------

def removeDuringRun(scene, node):
    """A progress callback that deletes ``node`` after the first batch, as a user could."""
    def progress(done, total):
        if node.GetScene() is not None:
            scene.RemoveNode(node)
        return True
    return progress


@pytest.mark.parametrize("removed", ["input", "output", "reference"])
def test_node_removed_mid_run_cancels_cleanly(removed, app, makeVolume, helpers, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    reference = makeVolume("T2", arrayKJI=helpers.headPhantomKJI(seed=6))
    output = makeVolume("previous result", arrayKJI=np.full((4, 5, 6), 7.0, np.float32))
    victim = {"input": inputVolume, "output": output, "reference": reference}[removed]
    nodesBefore = set(nodeIDs(app.scene))
    victimID = victim.GetID()

    with pytest.raises(Cancelled, match=f"'{victim.GetName()}' was removed from the scene"):
        SynthesisLogic().process(inputVolume, output, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu", batchSize=2,
                                 referenceVolume=reference, progress=removeDuringRun(app.scene, victim))

    # Only the user's removal happened: no node added, the others untouched.
    assert set(nodeIDs(app.scene)) == nodesBefore - {victimID}
    if removed != "output":
        assert np.all(slicer.util.arrayFromVolume(output) == 7.0)
    assert app.layoutNode.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView


def test_scene_closed_mid_run_cancels_cleanly(app, makeVolume, helpers, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    reference = makeVolume("T2", arrayKJI=helpers.headPhantomKJI(seed=7))

    def closeScene(done, total):
        app.scene.Clear(False)  # File > Close Scene keeps the singleton view nodes
        return True

    with pytest.raises(Cancelled, match="was removed from the scene \\(or the scene was closed\\)"):
        SynthesisLogic().process(inputVolume, None, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu", batchSize=2,
                                 referenceVolume=reference, progress=closeScene)

    assert slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", app.scene) == []
