"""Parent transforms: the input, the reference and the mask are compared in world coordinates.

Every case is checked against the same volumes with their transforms hardened (the voxels moved
into place, no transform left): the synthetic image and the metrics must be the same. Slicer's own
CompareVolumeGeometry / ResampleVolumeToReferenceVolume get these cases wrong (they compare
transform IDs and use only one volume's transform); the module no longer relies on them.
"""

import numpy as np
import pytest
import slicer
import vtk

from MRISynthesisSlicer import VolumeNodes
from MRISynthesisSlicer.SynthesisLogic import SynthesisLogic

METRICS = ("mae", "psnr", "ssim", "mi_bits")


def linearTransform(scene, rotationDegrees=(8.0, -5.0, 12.0), translation=(6.0, -4.0, 3.0), name="T"):
    """A rigid transform node (rotations about x, y, z in degrees, then a translation in mm)."""
    transform = vtk.vtkTransform()
    transform.PostMultiply()
    transform.RotateX(rotationDegrees[0])
    transform.RotateY(rotationDegrees[1])
    transform.RotateZ(rotationDegrees[2])
    transform.Translate(*translation)
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(transform.GetMatrix())
    return node


def nonLinearTransform(scene):
    """A thin-plate-spline warp (shifts one landmark by 3 mm)."""
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point in [(0, 0, 0), (40, 0, 0), (0, 40, 0), (0, 0, 40), (20, 20, 20)]:
        source.InsertNextPoint(point)
        target.InsertNextPoint(point[0] + (3 if point == (20, 20, 20) else 0), point[1], point[2])
    warp = vtk.vtkThinPlateSplineTransform()
    warp.SetSourceLandmarks(source)
    warp.SetTargetLandmarks(target)
    warp.SetBasisToR()
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    node.SetAndObserveTransformToParent(warp)
    return node


def makePair(makeVolume, helpers, suffix=""):
    """Input T1 phantom and a reference on another grid (coarser, LPS) over the same anatomy."""
    inputVolume = makeVolume("T1" + suffix, arrayKJI=helpers.headPhantomKJI(seed=1), spacing=(1.0, 1.0, 2.0))
    referenceKJI = helpers.headPhantomKJI((16, 32, 30), seed=5)
    matrix = helpers.ijkToRAS("LPS", (1.2, 1.25, 2.5), origin=(48.0, 20.0, 6.0))
    reference = makeVolume("T2" + suffix, arrayKJI=referenceKJI, matrix=matrix)
    return inputVolume, reference


def run(inputVolume, reference, checkpoint, **options):
    return SynthesisLogic().process(inputVolume, None, str(checkpoint), "t1-to-t2", device="cpu",
                                    referenceVolume=reference, showResults=False, **options)


def hardenedCopies(makeVolume, helpers, inputVolume, reference):
    """New volumes with the same voxels, their transforms hardened (IJKToRAS = world)."""
    copies = []
    for node in (inputVolume, reference):
        copy = makeVolume(node.GetName() + " hardened", arrayKJI=slicer.util.arrayFromVolume(node).copy(),
                          matrix=helpers.ijkToRASOf(node))
        copy.SetAndObserveTransformNodeID(node.GetTransformNodeID())
        copy.HardenTransform()
        assert copy.GetTransformNodeID() is None
        copies.append(copy)
    return copies


CASES = ["input_under_transform_reference_without", "different_transforms", "same_transform",
         "reference_under_transform_input_without"]


@pytest.mark.parametrize("case", CASES)
def test_metrics_equal_those_of_the_hardened_volumes(case, app, makeVolume, helpers, t1ToT2Checkpoint):
    inputVolume, reference = makePair(makeVolume, helpers)
    first = linearTransform(app.scene)
    second = linearTransform(app.scene, rotationDegrees=(-6.0, 4.0, -9.0), translation=(-3.0, 5.0, -2.0), name="T2")
    inputTransform, referenceTransform = {
        "input_under_transform_reference_without": (first, None),
        "different_transforms": (first, second),
        "same_transform": (first, first),
        "reference_under_transform_input_without": (None, second),
    }[case]
    for node, transform in ((inputVolume, inputTransform), (reference, referenceTransform)):
        node.SetAndObserveTransformNodeID(transform.GetID() if transform else None)
    hardenedInput, hardenedReference = hardenedCopies(makeVolume, helpers, inputVolume, reference)

    result = run(inputVolume, reference, t1ToT2Checkpoint)
    hardened = run(hardenedInput, hardenedReference, t1ToT2Checkpoint)

    # The synthetic volume sits under the input's transform, on the input's grid ...
    assert result.outputVolume.GetTransformNodeID() == inputVolume.GetTransformNodeID()
    np.testing.assert_array_equal(helpers.ijkToRASOf(result.outputVolume), helpers.ijkToRASOf(inputVolume))
    # ... and is the image of the hardened input (slices chosen in world orientation).
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.outputVolume),
                                  slicer.util.arrayFromVolume(hardened.outputVolume))
    for name in METRICS:
        assert result.metrics[name] == pytest.approx(hardened.metrics[name], rel=1e-5, abs=1e-6), name
    assert result.metrics["conventions"]["mask_voxels"] == hardened.metrics["conventions"]["mask_voxels"]
    np.testing.assert_allclose(slicer.util.arrayFromVolume(result.differenceVolume),
                               slicer.util.arrayFromVolume(hardened.differenceVolume), atol=1e-5)
    assert result.differenceVolume.GetTransformNodeID() == inputVolume.GetTransformNodeID()


def test_ignoring_the_transform_would_change_the_metrics(app, makeVolume, helpers, t1ToT2Checkpoint):
    """The transforms above are large enough to matter: the test would catch them being ignored."""
    inputVolume, reference = makePair(makeVolume, helpers)
    withoutTransform = run(inputVolume, reference, t1ToT2Checkpoint)
    inputVolume.SetAndObserveTransformNodeID(linearTransform(app.scene).GetID())
    withTransform = run(inputVolume, reference, t1ToT2Checkpoint)
    assert withTransform.metrics["mae"] != pytest.approx(withoutTransform.metrics["mae"], rel=0.02)


def test_same_transform_needs_no_resampling(app, makeVolume, helpers, volumesLogic):
    """Same grid under the same transform: the voxels are used as they are (Slicer's
    CompareVolumeGeometry reports a transform mismatch here and would trigger resampling)."""
    transform = linearTransform(app.scene)
    first = makeVolume("A", arrayKJI=helpers.headPhantomKJI(seed=2))
    second = makeVolume("B", arrayKJI=helpers.headPhantomKJI(seed=3))
    for node in (first, second):
        node.SetAndObserveTransformNodeID(transform.GetID())

    assert "Transform mismatch" in volumesLogic.CompareVolumeGeometry(first, second)
    assert VolumeNodes.sameGrid(second, first)
    np.testing.assert_array_equal(VolumeNodes.volumeOnGrid(second, first).array_kji(),
                                  slicer.util.arrayFromVolume(second))


def test_translation_moves_the_reference_by_whole_voxels(app, makeVolume, helpers):
    """A reference shifted by a transform of exactly 2 voxels along i comes back shifted by 2 voxels."""
    arrayKJI = helpers.headPhantomKJI(seed=4)
    grid = makeVolume("grid", arrayKJI=arrayKJI)
    reference = makeVolume("reference", arrayKJI=arrayKJI)
    reference.SetAndObserveTransformNodeID(
        linearTransform(app.scene, rotationDegrees=(0, 0, 0), translation=(2.0, 0, 0)).GetID())

    onGrid = VolumeNodes.volumeOnGrid(reference, grid).array_kji()

    np.testing.assert_allclose(onGrid[:, :, 2:], arrayKJI[:, :, :-2], atol=1e-4)
    assert np.all(onGrid[:, :, :2] == 0)


def test_mask_under_another_transform_is_taken_in_world(app, makeVolume, helpers, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    maskKJI = np.zeros(slicer.util.arrayFromVolume(inputVolume).shape, np.uint8)
    maskKJI[:, 10:30, 8:28] = 1
    # The mask's grid is shifted by -3 mm along i, and its transform shifts it back by +3 mm.
    matrix = helpers.ijkToRASOf(inputVolume)
    matrix[0, 3] -= 3.0
    mask = slicer.util.addVolumeFromArray(maskKJI, ijkToRAS=matrix, name="mask",
                                          nodeClassName="vtkMRMLLabelMapVolumeNode")
    mask.SetAndObserveTransformNodeID(linearTransform(app.scene, (0, 0, 0), (3.0, 0, 0)).GetID())

    output = SynthesisLogic().process(inputVolume, None, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu",
                                      maskVolume=mask, showResults=False).outputVolume

    outputArray = slicer.util.arrayFromVolume(output)
    assert np.all(outputArray[maskKJI == 0] == 0)
    assert outputArray[maskKJI == 1].max() > 0


def nodeIDs(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def test_non_linear_transform_between_input_and_reference_is_refused_before_running(app, makeVolume, helpers,
                                                                                     t1ToT2Checkpoint):
    inputVolume, reference = makePair(makeVolume, helpers)
    reference.SetAndObserveTransformNodeID(nonLinearTransform(app.scene).GetID())
    output = makeVolume("previous result", arrayKJI=np.full((4, 5, 6), 7.0, np.float32))
    nodesBefore = nodeIDs(app.scene)
    calls = []

    with pytest.raises(ValueError, match="'T1' and 'T2' are related by a non-linear transform"):
        SynthesisLogic().process(inputVolume, output, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu",
                                 referenceVolume=reference, progress=lambda done, total: calls.append(done))

    assert calls == []  # refused before the model ran
    assert nodeIDs(app.scene) == nodesBefore
    assert np.all(slicer.util.arrayFromVolume(output) == 7.0)


def test_shared_non_linear_transform_cancels_out(app, makeVolume, helpers, t1ToT2Checkpoint):
    """Input and reference under the same warp are aligned with each other: accepted, with a note
    that the slices were taken on the input's own grid."""
    inputVolume = makeVolume("T1")
    reference = makeVolume("T2", arrayKJI=helpers.headPhantomKJI(seed=6))
    warp = nonLinearTransform(app.scene)
    for node in (inputVolume, reference):
        node.SetAndObserveTransformNodeID(warp.GetID())

    result = run(inputVolume, reference, t1ToT2Checkpoint)

    assert result.outputVolume.GetTransformNodeID() == warp.GetID()
    assert any("non-linear transform" in note for note in result.notes)
    assert np.isfinite(result.metrics["mae"])


def test_mask_under_a_non_linear_transform_is_refused_before_running(app, makeVolume, helpers, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    maskKJI = (helpers.headPhantomKJI() > 0).astype(np.uint8)
    mask = slicer.util.addVolumeFromArray(maskKJI, ijkToRAS=helpers.ijkToRASOf(inputVolume), name="brain",
                                          nodeClassName="vtkMRMLLabelMapVolumeNode")
    mask.SetAndObserveTransformNodeID(nonLinearTransform(app.scene).GetID())
    calls, nodesBefore = [], nodeIDs(app.scene)

    with pytest.raises(ValueError, match="'T1' and 'brain' are related by a non-linear transform"):
        SynthesisLogic().process(inputVolume, None, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu",
                                 maskVolume=mask, progress=lambda done, total: calls.append(done))

    assert calls == [] and nodeIDs(app.scene) == nodesBefore


def test_mask_without_voxels_is_a_clear_error(app, makeVolume, t1ToT2Checkpoint):
    empty = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "no mask")
    with pytest.raises(ValueError, match="Brain mask 'no mask' is empty"):
        SynthesisLogic().process(makeVolume("T1"), None, str(t1ToT2Checkpoint), "t1-to-t2", maskVolume=empty)
