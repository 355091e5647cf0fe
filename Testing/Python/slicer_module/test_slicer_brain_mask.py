"""Brain mask in the module (slicer-core): the automatic extraction of a whole-head input runs in
the same call, is shown as an editable segmentation, and that segmentation can be given back."""

import numpy as np
import pytest
import slicer

from MRISynthesisLib import brain_extraction
from MRISynthesisLib.errors import Cancelled
from MRISynthesisSlicer.BrainMaskNodes import maskArrayFromNode, showMaskAsSegmentation
from MRISynthesisSlicer.SynthesisLogic import SynthesisLogic


def nodeIDs(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def wholeHeadKJI(helpers):
    """The phantom with a positive background up to the volume's faces, like a raw head scan's air."""
    return helpers.headPhantomKJI() + np.float32(20.0) + np.random.default_rng(2).random((20, 40, 36), dtype=np.float32)


def boxMaskIJK(shapeIJK):
    mask = np.zeros(shapeIJK, bool)
    mask[8:28, 10:30, 4:16] = True
    return mask


@pytest.fixture
def fakeExtraction(monkeypatch):
    """Replace deepbet by a box (the network itself is tested in Testing/Python/test_brain_extraction.py;
    brain_extraction.extract_brain is the extractor's one seam)."""
    calls = []

    def extract(volume, device="cpu", progress=None):
        calls.append(volume.shape)
        for done in range(4):
            if progress is not None and progress(done, 3) is False:
                raise Cancelled("brain extraction cancelled; nothing was written")
        return boxMaskIJK(volume.shape)

    monkeypatch.setattr(brain_extraction, "extract_brain", extract)
    return calls


@pytest.mark.parametrize("axcodes,spacing", [("RAS", (1.0, 1.0, 1.0)), ("LPS", (0.9, 0.9, 5.5)), ("ASL", (1.0, 1.2, 2.0))])
def test_mask_shown_as_segmentation_reads_back_exactly(makeVolume, helpers, axcodes, spacing):
    inputVolume = makeVolume("T1", arrayKJI=wholeHeadKJI(helpers), axcodes=axcodes, spacing=spacing)
    mask = boxMaskIJK((36, 40, 20))
    before = nodeIDs(slicer.mrmlScene)

    segmentation = showMaskAsSegmentation(mask, inputVolume, "T1 brain mask")

    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert segmentation.GetSegmentation().GetNthSegment(0).GetName() == "brain"
    assert set(nodeIDs(slicer.mrmlScene)) - set(before) == {segmentation.GetID(), segmentation.GetDisplayNodeID()}
    np.testing.assert_array_equal(maskArrayFromNode(segmentation, inputVolume), mask)
    assert len(nodeIDs(slicer.mrmlScene)) == len(before) + 2  # reading it back leaves no temporary node


def test_extracted_mask_is_placed_under_the_input_s_parent_transform(makeVolume, helpers, t1ToT2Checkpoint,
                                                                     fakeExtraction):
    """A transformed input's mask is shown where the input is and reads back unshifted (before, a 5 mm
    shift moved the mask by 5 voxels: it was drawn at the untransformed place)."""
    inputVolume = makeVolume("T1", arrayKJI=wholeHeadKJI(helpers))
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = np.eye(4)
    matrix[0, 3] = 5.0
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    inputVolume.SetAndObserveTransformNodeID(transform.GetID())

    result = SynthesisLogic().process(inputVolume, None, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu")

    segmentation = result.brainMaskSegmentation
    assert segmentation.GetTransformNodeID() == transform.GetID()
    np.testing.assert_array_equal(maskArrayFromNode(segmentation, inputVolume), boxMaskIJK((36, 40, 20)))


def test_whole_head_input_is_extracted_and_the_mask_is_shown(makeVolume, helpers, t1ToT2Checkpoint, fakeExtraction):
    inputVolume = makeVolume("T1", arrayKJI=wholeHeadKJI(helpers), axcodes="LPS", spacing=(0.9, 0.9, 5.5))
    stages = []

    result = SynthesisLogic().process(inputVolume, None, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu",
                                      onStage=stages.append)

    assert fakeExtraction == [(36, 40, 20)] and stages == ["brain extraction", "synthesis"]
    segmentation = result.brainMaskSegmentation
    assert segmentation.GetName() == "T1 brain mask"
    mask = boxMaskIJK((36, 40, 20))
    np.testing.assert_array_equal(maskArrayFromNode(segmentation, inputVolume), mask)
    output = slicer.util.arrayFromVolume(result.outputVolume).transpose(2, 1, 0)
    assert not output[~mask].any() and output[mask].any()
    assert any("Brain extracted automatically" in note for note in result.notes)


def test_edited_segmentation_given_back_is_used_without_extraction(makeVolume, helpers, t1ToT2Checkpoint,
                                                                    fakeExtraction):
    inputVolume = makeVolume("T1", arrayKJI=wholeHeadKJI(helpers))
    first = SynthesisLogic().process(inputVolume, None, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu")
    edited = np.zeros((36, 40, 20), bool)
    edited[12:24, 14:26, 6:14] = True
    segmentation = showMaskAsSegmentation(edited, inputVolume, "edited brain mask")

    second = SynthesisLogic().process(inputVolume, None, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu",
                                      maskVolume=segmentation)

    assert len(fakeExtraction) == 1 and second.brainMaskSegmentation is None
    output = slicer.util.arrayFromVolume(second.outputVolume).transpose(2, 1, 0)
    assert not output[~edited].any() and output[edited].any()
    assert first.brainMaskSegmentation is not None


def test_skull_stripped_input_is_not_extracted(makeVolume, t1ToT2Checkpoint, fakeExtraction):
    inputVolume = makeVolume("T1")  # zero background: skull-stripped
    stages = []
    result = SynthesisLogic().process(inputVolume, None, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu",
                                      onStage=stages.append)
    assert fakeExtraction == [] and result.brainMaskSegmentation is None and stages == ["synthesis"]


def test_cancel_during_extraction_leaves_the_scene_unchanged(makeVolume, helpers, t1ToT2Checkpoint, fakeExtraction):
    inputVolume = makeVolume("T1", arrayKJI=wholeHeadKJI(helpers))
    before = nodeIDs(slicer.mrmlScene)
    with pytest.raises(Cancelled):
        SynthesisLogic().process(inputVolume, None, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu",
                                 progress=lambda done, total: done < 2)
    assert nodeIDs(slicer.mrmlScene) == before


def test_empty_segmentation_is_refused(makeVolume, t1ToT2Checkpoint):
    inputVolume = makeVolume("T1")
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(ValueError, match="Brain mask 'empty' has no segment"):
        SynthesisLogic().process(inputVolume, None, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu",
                                 maskVolume=empty)
