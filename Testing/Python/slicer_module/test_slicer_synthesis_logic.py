"""SynthesisLogic.process against Slicer's real MRML layer (slicer-core): geometry, provenance,
cancel, comparison with a reference, views and error messages."""

import numpy as np
import pytest
import slicer

from MRISynthesisLib.errors import Cancelled
from MRISynthesisLib.synthesis import Synthesizer
from MRISynthesisLib.volume import Volume
from MRISynthesisSlicer import ComparisonViews, OutputNodes
from MRISynthesisSlicer.SynthesisLogic import SynthesisLogic


def nodeIDs(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def synthesize(inputVolume, checkpoint, **options):
    return SynthesisLogic().process(inputVolume, None, str(checkpoint), "t1-to-t2", device="cpu", **options)


# --- geometry ------------------------------------------------------------------------------------

GEOMETRIES = {
    "axial_RAS": ("RAS", (1.0, 1.0, 1.0)),
    "axial_LPS": ("LPS", (1.0, 1.0, 1.0)),
    "coronal": ("LSA", (1.0, 1.0, 1.0)),
    "sagittal": ("ASL", (1.0, 1.0, 1.0)),
    "anisotropic_axial": ("RAS", (0.9, 0.8, 5.0)),
    "anisotropic_coronal": ("RSP", (0.7, 0.7, 4.0)),
}


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_output_geometry_equals_input_geometry(geometry, makeVolume, volumesLogic, helpers, t1ToT2Checkpoint):
    axcodes, spacing = GEOMETRIES[geometry]
    inputVolume = makeVolume("T1", axcodes=axcodes, spacing=spacing)

    output = synthesize(inputVolume, t1ToT2Checkpoint).outputVolume

    assert volumesLogic.CompareVolumeGeometry(output, inputVolume) == ""
    np.testing.assert_array_equal(helpers.ijkToRASOf(output), helpers.ijkToRASOf(inputVolume))
    outputArray = slicer.util.arrayFromVolume(output)
    assert outputArray.shape == slicer.util.arrayFromVolume(inputVolume).shape
    assert outputArray.dtype == np.float32
    assert 0.0 <= outputArray.min() and outputArray.max() <= 1.0 and outputArray.max() > 0


def test_oblique_input_keeps_geometry(makeVolume, volumesLogic, helpers, t1ToT2Checkpoint):
    angle = np.deg2rad(25)
    matrix = helpers.ijkToRAS("RAS", (1.0, 1.2, 3.0))
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    matrix[:3, :3] = rotation @ matrix[:3, :3]
    inputVolume = makeVolume("oblique", matrix=matrix)

    output = synthesize(inputVolume, t1ToT2Checkpoint).outputVolume

    assert volumesLogic.CompareVolumeGeometry(output, inputVolume) == ""
    np.testing.assert_array_equal(helpers.ijkToRASOf(output), helpers.ijkToRASOf(inputVolume))


@pytest.mark.parametrize("axcodes", ["LPS", "ASL", "LSA"])
def test_node_voxel_order_reaches_the_core_as_kji(axcodes, makeVolume, helpers, t1ToT2Checkpoint):
    """The node path gives exactly what the core gives for the same (i, j, k) array and affine,
    so Slicer's (k, j, i) array order is converted once and correctly in both directions."""
    arrayKJI = helpers.headPhantomKJI()
    matrix = helpers.ijkToRAS(axcodes, (1.0, 1.1, 2.0))
    inputVolume = makeVolume("T1", arrayKJI=arrayKJI, matrix=matrix)

    viaSlicer = slicer.util.arrayFromVolume(synthesize(inputVolume, t1ToT2Checkpoint).outputVolume)
    direct = Synthesizer(t1ToT2Checkpoint, device="cpu").synthesize(Volume(arrayKJI.transpose(2, 1, 0), matrix))

    np.testing.assert_array_equal(viaSlicer, direct.array_kji())


def test_same_anatomy_stored_RAS_or_LPS_gives_the_same_synthetic(makeVolume, helpers, t1ToT2Checkpoint):
    arrayKJI = helpers.headPhantomKJI()
    rasMatrix = helpers.ijkToRAS("RAS")
    ras = makeVolume("RAS", arrayKJI=arrayKJI, matrix=rasMatrix)
    # Same voxels in space: flip i and j and move the origin to the opposite corner.
    lpsMatrix = rasMatrix.copy()
    lpsMatrix[:3, 0] *= -1
    lpsMatrix[:3, 1] *= -1
    lpsMatrix[:3, 3] = rasMatrix[:3, :3] @ [arrayKJI.shape[2] - 1, arrayKJI.shape[1] - 1, 0] + rasMatrix[:3, 3]
    lps = makeVolume("LPS", arrayKJI=np.ascontiguousarray(arrayKJI[:, ::-1, ::-1]), matrix=lpsMatrix)

    fromRAS = slicer.util.arrayFromVolume(synthesize(ras, t1ToT2Checkpoint).outputVolume)
    fromLPS = slicer.util.arrayFromVolume(synthesize(lps, t1ToT2Checkpoint).outputVolume)

    np.testing.assert_allclose(fromLPS[:, ::-1, ::-1], fromRAS, atol=1e-5)


# --- the input is never modified, cancel leaves the scene as it was --------------------------------

def inputState(volume, helpers):
    display = volume.GetDisplayNode()
    return dict(array=slicer.util.arrayFromVolume(volume).copy(), matrix=helpers.ijkToRASOf(volume),
                name=volume.GetName(), mtime=volume.GetMTime(), imageMTime=volume.GetImageData().GetMTime(),
                window=display.GetWindow(), level=display.GetLevel())


def assertSameState(before, after):
    np.testing.assert_array_equal(after.pop("array"), before.pop("array"))
    np.testing.assert_array_equal(after.pop("matrix"), before.pop("matrix"))
    assert after == before


def test_input_unchanged_after_processing(app, makeVolume, helpers, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1", axcodes="LPS")
    inputVolume.GetDisplayNode().SetWindowLevelMinMax(20, 250)
    before = inputState(inputVolume, helpers)

    reference = makeVolume("T2", arrayKJI=helpers.headPhantomKJI(seed=3), axcodes="LPS")
    synthesize(inputVolume, t1ToT2Checkpoint, referenceVolume=reference)

    assertSameState(before, inputState(inputVolume, helpers))


def test_cancel_leaves_scene_and_input_unchanged(app, makeVolume, helpers, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    reference = makeVolume("T2", arrayKJI=helpers.headPhantomKJI(seed=4))
    before, nodesBefore = inputState(inputVolume, helpers), nodeIDs(app.scene)
    calls = []

    def cancelAfterFirstBatch(done, total):
        calls.append((done, total))
        return False

    with pytest.raises(Cancelled):
        SynthesisLogic().process(inputVolume, None, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu",
                                 referenceVolume=reference, progress=cancelAfterFirstBatch, batchSize=2)

    assert len(calls) == 1 and calls[0][0] == 2
    assert nodeIDs(app.scene) == nodesBefore
    assertSameState(before, inputState(inputVolume, helpers))
    assert app.layoutNode.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView


def test_existing_output_node_is_not_touched_on_cancel(makeVolume, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    output = makeVolume("previous result", arrayKJI=np.full((4, 5, 6), 7.0, np.float32))

    with pytest.raises(Cancelled):
        SynthesisLogic().process(inputVolume, output, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu",
                                 progress=lambda done, total: False)

    assert slicer.util.arrayFromVolume(output).shape == (4, 5, 6)
    assert np.all(slicer.util.arrayFromVolume(output) == 7.0)


def test_progress_reports_every_batch_up_to_the_total(makeVolume, t1ToT2Checkpoint):
    calls = []
    synthesize(makeVolume("T1"), t1ToT2Checkpoint, progress=lambda done, total: calls.append((done, total)),
               batchSize=4)
    total = calls[-1][1]
    assert calls[-1][0] == total > 0
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


# --- naming, provenance, display, subject hierarchy -----------------------------------------------

def test_output_name_attributes_and_display(makeVolume, t1ToT2Checkpoint):
    inputVolume = makeVolume("MRBrainT1")
    inputVolume.GetDisplayNode().SetWindowLevelMinMax(0, 400)

    result = synthesize(inputVolume, t1ToT2Checkpoint)
    output = result.outputVolume

    assert output.GetName() == "MRBrainT1 synthetic T2 (tiny baseline)"
    assert output.GetAttribute(OutputNodes.MODEL_ID_ATTRIBUTE) == "tiny-t1-to-t2" == result.modelId
    assert output.GetAttribute(OutputNodes.DIRECTION_ATTRIBUTE) == "t1-to-t2"
    assert output.GetAttribute(OutputNodes.SOURCE_VOLUME_ATTRIBUTE) == inputVolume.GetID()
    assert output.GetAttribute(OutputNodes.ROLE_ATTRIBUTE) == "synthetic"
    display = output.GetDisplayNode()
    assert not display.GetAutoWindowLevel()
    # Window/level comes from the synthetic image (values 0..1), not from the input's 0..400.
    low, high = display.GetWindowLevelMin(), display.GetWindowLevelMax()
    assert low == 0.0 and 0.0 < high <= 1.0
    assert display.GetColorNodeID() == OutputNodes.GREY_COLOR_NODE_ID
    assert result.device == "cpu" and result.batchSize == 8 and result.notes == []


def test_t2_to_t1_output_is_named_synthetic_T1(makeVolume, t2ToT1Checkpoint):
    output = SynthesisLogic().process(makeVolume("T2w"), None, str(t2ToT1Checkpoint), "t2-to-t1",
                                      device="cpu").outputVolume
    assert output.GetName() == "T2w synthetic T1 (tiny baseline)"
    assert output.GetAttribute(OutputNodes.DIRECTION_ATTRIBUTE) == "t2-to-t1"


def test_output_is_placed_in_the_input_study(app, makeVolume, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(app.scene)
    study = shNode.CreateStudyItem(shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient 1"), "MR study")
    shNode.CreateItem(study, inputVolume)

    output = synthesize(inputVolume, t1ToT2Checkpoint).outputVolume

    assert shNode.GetItemParent(shNode.GetItemByDataNode(output)) == study


def test_existing_output_node_is_overwritten_and_keeps_its_name(makeVolume, volumesLogic, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1", axcodes="LSA")
    output = makeVolume("my synthetic", arrayKJI=np.zeros((3, 3, 3), np.float32))

    result = SynthesisLogic().process(inputVolume, output, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu")

    assert result.outputVolume is output and output.GetName() == "my synthetic"
    assert volumesLogic.CompareVolumeGeometry(output, inputVolume) == ""


def test_output_follows_the_input_parent_transform(app, makeVolume, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    inputVolume.SetAndObserveTransformNodeID(transform.GetID())
    output = synthesize(inputVolume, t1ToT2Checkpoint).outputVolume
    assert output.GetTransformNodeID() == transform.GetID()


def test_brain_mask_volume_restricts_the_synthetic(app, makeVolume, helpers, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    maskKJI = np.zeros(slicer.util.arrayFromVolume(inputVolume).shape, np.uint8)
    maskKJI[:, 10:30, 8:28] = 1
    mask = slicer.util.addVolumeFromArray(maskKJI, ijkToRAS=helpers.ijkToRASOf(inputVolume), name="mask",
                                          nodeClassName="vtkMRMLLabelMapVolumeNode")

    output = synthesize(inputVolume, t1ToT2Checkpoint, maskVolume=mask).outputVolume

    outputArray = slicer.util.arrayFromVolume(output)
    assert np.all(outputArray[maskKJI == 0] == 0)
    assert outputArray[maskKJI == 1].max() > 0


def test_uncertainty_map_for_a_model_that_can_sample(makeVolume, volumesLogic, vaeCheckpoint):
    inputVolume = makeVolume("T1")
    result = synthesize(inputVolume, vaeCheckpoint, uncertainty=True)
    uncertainty = result.uncertaintyVolume
    assert uncertainty.GetName() == f"{result.outputVolume.GetName()} uncertainty"
    assert volumesLogic.CompareVolumeGeometry(uncertainty, inputVolume) == ""
    assert slicer.util.arrayFromVolume(uncertainty).min() >= 0


# --- reference: difference map and metrics ---------------------------------------------------------

def test_reference_gives_difference_map_and_metrics(app, makeVolume, volumesLogic, helpers, t1ToT2Checkpoint):
    from MRISynthesisLib import metrics, preprocessing

    inputVolume = makeVolume("T1", axcodes="LPS")
    referenceKJI = helpers.headPhantomKJI(seed=7)
    reference = makeVolume("T2", arrayKJI=referenceKJI, axcodes="LPS")
    nodesBefore = set(nodeIDs(app.scene))

    result = synthesize(inputVolume, t1ToT2Checkpoint, referenceVolume=reference)

    difference = result.differenceVolume
    assert volumesLogic.CompareVolumeGeometry(difference, result.outputVolume) == ""
    assert difference.GetName() == f"{result.outputVolume.GetName()} minus reference"
    assert difference.GetAttribute(OutputNodes.ROLE_ATTRIBUTE) == "difference"
    display = difference.GetDisplayNode()
    assert display.GetColorNodeID() == OutputNodes.DIFFERENCE_COLOR_NODE_ID
    assert display.GetWindowLevelMin() == pytest.approx(-display.GetWindowLevelMax())
    # The map is synthetic - reference in the metrics' model units (the synthetic as it is, the
    # reference percentile-normalised in the mask), 0 outside the mask.
    syntheticKJI = slicer.util.arrayFromVolume(result.outputVolume)
    mask = preprocessing.brain_mask(referenceKJI)
    expected = (syntheticKJI - preprocessing.percentile_normalise(referenceKJI, mask)[0]) * mask
    np.testing.assert_allclose(slicer.util.arrayFromVolume(difference), expected, atol=1e-6)
    for name in ("mae", "psnr", "ssim", "mi_bits"):
        assert np.isfinite(result.metrics[name])
    assert result.metrics["mae"] == pytest.approx(np.abs(expected[mask]).mean(), rel=1e-5)
    assert result.metrics["conventions"]["mask"].startswith("automatic brain mask of the reference")
    assert result.metrics["conventions"]["normalisation"] == "model-units"
    # Only the synthetic and the difference volume (and their display nodes) were added.
    added = set(nodeIDs(app.scene)) - nodesBefore
    assert {result.outputVolume.GetID(), difference.GetID()} <= added
    assert all(app.scene.GetNodeByID(i).IsA("vtkMRMLScalarVolumeNode")
               or app.scene.GetNodeByID(i).IsA("vtkMRMLDisplayNode") for i in added)


def test_metrics_use_the_command_line_s_model_units(makeVolume, helpers, t1ToT2Checkpoint):
    """A synthetic with a 0.9 gain and +0.03 offset error scores in Slicer exactly as
    `mrisynthesis evaluate` (model units) scores it, not with both volumes normalised (which hid the
    error: MAE 0.0001 / 77.7 dB in Slicer against 0.023 / 31.0 dB on the command line)."""
    from MRISynthesisLib import metrics

    inputVolume = makeVolume("T1")
    first = synthesize(inputVolume, t1ToT2Checkpoint, showResults=False).outputVolume
    syntheticKJI = slicer.util.arrayFromVolume(first).copy()
    reference = makeVolume("T2", arrayKJI=np.where(syntheticKJI > 0, syntheticKJI / 0.9 - 0.03 / 0.9, 0)
                           .astype(np.float32))

    result = synthesize(inputVolume, t1ToT2Checkpoint, referenceVolume=reference)

    from MRISynthesisLib.volume import Volume

    affine = helpers.ijkToRASOf(inputVolume)
    commandLine = metrics.score(Volume.from_kji(syntheticKJI, affine),
                                Volume.from_kji(slicer.util.arrayFromVolume(reference), affine))  # as `evaluate`
    for name in ("mae", "psnr", "ssim", "mi_bits"):
        assert result.metrics[name] == pytest.approx(commandLine[name], rel=1e-5), name
    assert result.metrics["mae"] > 0.005 and result.metrics["psnr"] < 50


def test_synthetic_scored_against_itself_is_exact_in_normalised_units(makeVolume, t1ToT2Checkpoint):
    """The synthetic as its own reference differs only by the reference's percentile scaling."""
    from MRISynthesisLib import preprocessing

    inputVolume = makeVolume("T1")
    first = synthesize(inputVolume, t1ToT2Checkpoint, showResults=False).outputVolume

    result = synthesize(inputVolume, t1ToT2Checkpoint, referenceVolume=first)

    syntheticKJI = slicer.util.arrayFromVolume(first)
    mask = syntheticKJI > 0
    expected = (syntheticKJI - preprocessing.percentile_normalise(syntheticKJI, mask)[0]) * mask
    np.testing.assert_allclose(slicer.util.arrayFromVolume(result.differenceVolume), expected, atol=1e-6)


def test_reference_on_another_grid_is_resampled_without_leaving_nodes(app, makeVolume, volumesLogic, helpers,
                                                                      t1ToT2Checkpoint):
    inputVolume = makeVolume("T1", spacing=(1.0, 1.0, 2.0))
    reference = makeVolume("T2 other grid", arrayKJI=helpers.headPhantomKJI((10, 20, 18), seed=2),
                           spacing=(2.0, 2.0, 4.0))
    referenceBefore = slicer.util.arrayFromVolume(reference).copy()
    nodesBefore = set(nodeIDs(app.scene))

    result = synthesize(inputVolume, t1ToT2Checkpoint, referenceVolume=reference)

    assert volumesLogic.CompareVolumeGeometry(result.differenceVolume, inputVolume) == ""
    added = {app.scene.GetNodeByID(i) for i in set(nodeIDs(app.scene)) - nodesBefore}
    assert {n.GetID() for n in added if n.IsA("vtkMRMLVolumeNode")} == {
        result.outputVolume.GetID(), result.differenceVolume.GetID()}
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(reference), referenceBefore)


# --- comparison views ------------------------------------------------------------------------------

def compositeNode(scene, viewName):
    return ComparisonViews.sliceCompositeNode(ComparisonViews.sliceNodeByName(scene, viewName))


def test_side_by_side_views_show_input_and_synthetic(app, makeVolume, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    output = synthesize(inputVolume, t1ToT2Checkpoint).outputVolume

    assert app.layoutNode.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    for viewName, volume in zip(("Red", "Yellow"), (inputVolume, output)):
        composite = compositeNode(app.scene, viewName)
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundVolumeID() is None
        assert composite.GetLinkedControl() and composite.GetHotLinkedControl()
        assert ComparisonViews.sliceNodeByName(app.scene, viewName).GetOrientation() == "Axial"
    crosshair = app.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    assert crosshair.GetCrosshairMode() == slicer.vtkMRMLCrosshairNode.ShowSmallBasic


def test_three_views_with_reference_and_difference_overlay(app, makeVolume, helpers, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    reference = makeVolume("T2", arrayKJI=helpers.headPhantomKJI(seed=9))
    # Yellow starts sagittal and Green coronal in the default layout; both must become axial.
    assert ComparisonViews.sliceNodeByName(app.scene, "Yellow").GetOrientation() == "Sagittal"

    result = synthesize(inputVolume, t1ToT2Checkpoint, referenceVolume=reference)

    assert app.layoutNode.GetViewArrangement() == ComparisonViews.THREE_VIEW_LAYOUT_ID
    assert app.layoutNode.IsLayoutDescription(ComparisonViews.THREE_VIEW_LAYOUT_ID)
    expected = {"Red": inputVolume, "Yellow": result.outputVolume, "Green": reference}
    for viewName, volume in expected.items():
        composite = compositeNode(app.scene, viewName)
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetLinkedControl() and composite.GetHotLinkedControl()
        assert ComparisonViews.sliceNodeByName(app.scene, viewName).GetOrientation() == "Axial"
    green = compositeNode(app.scene, "Green")
    assert green.GetForegroundVolumeID() == result.differenceVolume.GetID()
    assert green.GetForegroundOpacity() == 0.0
    assert compositeNode(app.scene, "Yellow").GetForegroundVolumeID() is None


def test_three_view_layout_description_is_valid_layout_xml(app):
    ComparisonViews.showComparison(app.layoutNode, [slicer.util.addVolumeFromArray(np.ones((2, 2, 2))) for _ in range(3)])
    xml = app.layoutNode.GetCurrentLayoutDescription()
    assert xml.count('class="vtkMRMLSliceNode"') == 3
    assert [n.GetLayoutName() for n in app.layoutLogic.GetViewNodes()] == ["Red", "Yellow", "Green"]


def test_show_results_false_keeps_the_layout(app, makeVolume, t1ToT2Checkpoint):
    synthesize(makeVolume("T1"), t1ToT2Checkpoint, showResults=False)
    assert app.layoutNode.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView


# --- clear errors ----------------------------------------------------------------------------------

def expectError(match, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        SynthesisLogic().process(*args, **kwargs)


def test_no_input_volume_is_a_clear_error(t1ToT2Checkpoint):
    expectError("Input volume is not set", None, None, str(t1ToT2Checkpoint), "t1-to-t2")


def test_2d_volume_is_a_clear_error(makeVolume, t1ToT2Checkpoint):
    image = makeVolume("slice", arrayKJI=np.random.default_rng(0).random((1, 40, 40)).astype(np.float32))
    expectError(r"'slice' is 2D \(dimensions 40 x 40 x 1\)", image, None, str(t1ToT2Checkpoint), "t1-to-t2")


def test_vector_volume_is_a_clear_error(app, helpers, t1ToT2Checkpoint):
    rgb = slicer.util.addVolumeFromArray(np.ones((8, 9, 10, 3), np.uint8), name="photo",
                                         nodeClassName="vtkMRMLVectorVolumeNode")
    expectError("'photo' has 3 components per voxel", rgb, None, str(t1ToT2Checkpoint), "t1-to-t2")


def test_volume_without_voxels_is_a_clear_error(app, t1ToT2Checkpoint):
    empty = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    expectError("'empty' is empty", empty, None, str(t1ToT2Checkpoint), "t1-to-t2")


def test_constant_volume_is_a_clear_error(makeVolume, t1ToT2Checkpoint):
    blank = makeVolume("blank", arrayKJI=np.zeros((10, 20, 20), np.float32))
    expectError("'blank' is empty: every voxel is 0", blank, None, str(t1ToT2Checkpoint), "t1-to-t2")


def test_labelmap_input_is_a_clear_error(app, t1ToT2Checkpoint):
    labels = slicer.util.addVolumeFromArray(np.ones((8, 9, 10), np.uint8), name="seg",
                                            nodeClassName="vtkMRMLLabelMapVolumeNode")
    expectError("'seg' is a vtkMRMLLabelMapVolumeNode; expected a scalar", labels, None, str(t1ToT2Checkpoint),
                "t1-to-t2")


def test_output_same_as_input_is_refused(makeVolume, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    expectError("Output volume is the input volume", inputVolume, inputVolume, str(t1ToT2Checkpoint), "t1-to-t2")


def test_model_of_the_other_direction_is_refused(app, makeVolume, t2ToT1Checkpoint):
    expectError("synthesizes t2-to-t1, but t1-to-t2 was requested", makeVolume("T1"), None,
                str(t2ToT1Checkpoint), "t1-to-t2")


def test_unknown_direction_is_refused(makeVolume, t1ToT2Checkpoint):
    expectError("direction 't1-to-flair' is not one of", makeVolume("T1"), None, str(t1ToT2Checkpoint), "t1-to-flair")


def test_uncertainty_for_a_model_that_cannot_sample_is_refused(makeVolume, t1ToT2Checkpoint):
    expectError("cannot produce an uncertainty map", makeVolume("T1"), None, str(t1ToT2Checkpoint), "t1-to-t2",
                uncertainty=True)


def test_reference_that_does_not_overlap_is_a_clear_error(app, makeVolume, t1ToT2Checkpoint):
    reference = makeVolume("T2 elsewhere", matrix=np.diag([1.0, 1.0, 1.0, 1.0]) + np.array(
        [[0, 0, 0, 500.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    inputVolume = makeVolume("T1")
    nodesBefore = nodeIDs(app.scene)
    expectError("'T2 elsewhere' has no brain voxels where the synthetic volume is", inputVolume, None,
                str(t1ToT2Checkpoint), "t1-to-t2", referenceVolume=reference)
    assert nodeIDs(app.scene) == nodesBefore  # the synthetic made before the failure was removed


def test_missing_checkpoint_is_a_clear_error(makeVolume, tmp_path):
    from MRISynthesisLib.errors import CheckpointError

    with pytest.raises(CheckpointError, match="checkpoint not found"):
        SynthesisLogic().process(makeVolume("T1"), None, str(tmp_path / "nope.safetensors"), "t1-to-t2")


# --- models named through the catalog --------------------------------------------------------------

@pytest.fixture
def catalogWithTinyModel(tmp_path, monkeypatch, t1ToT2Checkpoint):
    import json
    import shutil

    from MRISynthesisLib.checkpoint import file_sha256

    (tmp_path / "Models").mkdir()
    shutil.copy(t1ToT2Checkpoint, tmp_path / "Models" / "tiny.safetensors")
    entry = dict(id="tiny-catalog-model", title="Tiny catalog model", direction="t1-to-t2",
                 file="Models/tiny.safetensors", sha256=file_sha256(tmp_path / "Models" / "tiny.safetensors"))
    (tmp_path / "Models.json").write_text(json.dumps({"models": [entry]}))
    monkeypatch.setenv("MRISYNTHESIS_RESOURCES", str(tmp_path))
    return entry


def test_catalog_id_names_the_model(makeVolume, catalogWithTinyModel):
    result = SynthesisLogic().process(makeVolume("T1"), None, "tiny-catalog-model", "t1-to-t2", device="cpu")
    assert result.outputVolume.GetName() == "T1 synthetic T2 (tiny baseline)"
    assert result.modelId == "tiny-t1-to-t2"  # the checkpoint's own id, stored on the node


def test_no_model_uses_the_direction_default(makeVolume, catalogWithTinyModel):
    result = SynthesisLogic().process(makeVolume("T1"), None, None, "t1-to-t2", device="cpu")
    assert result.outputVolume.GetAttribute(OutputNodes.MODEL_ID_ATTRIBUTE) == "tiny-t1-to-t2"


def test_unknown_catalog_id_is_a_clear_error(makeVolume, catalogWithTinyModel):
    expectError("unknown model 'no-such-model'; catalog ids: tiny-catalog-model", makeVolume("T1"), None,
                "no-such-model", "t1-to-t2")
