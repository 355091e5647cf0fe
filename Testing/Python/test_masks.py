"""What a brain mask file may hold (``--brain-mask FILE``, ``evaluate --mask``, a mask array from
Slicer): binary 0/1, a label map (non-negative whole numbers, every label > 0 is brain) or a
probability map (values in [0, 1], brain above 0.5). Anything else is refused with one line, and
the emptiness check and the mask used are the same computation."""

import numpy as np
import pytest
from phantoms import affine_for, head_phantom

from MRISynthesisLib.brain_extraction import choose_brain_mask, mask_from_values
from MRISynthesisLib.cli import main
from MRISynthesisLib.errors import InputError
from MRISynthesisLib.io import load_volume, save_volume
from MRISynthesisLib.volume import Volume

SHAPE = (30, 34, 20)


@pytest.fixture
def t1(tmp_path):
    return save_volume(Volume(head_phantom(SHAPE), affine_for("LPS", spacing=(0.9, 0.9, 2.0))), tmp_path / "t1.nii.gz")


def _brain():
    brain = np.zeros(SHAPE, dtype=bool)
    brain[8:22, 9:25, 5:15] = True
    return brain


def _mask_file(tmp_path, t1, values, name="mask.nii.gz"):
    return save_volume(load_volume(t1).with_array(values.astype(np.float32)), tmp_path / name)


def _synthesize(t1, tiny_checkpoint, mask, tmp_path):
    return main(["synthesize", str(t1), "-o", str(tmp_path / "out.nii.gz"), "--model", str(tiny_checkpoint),
                 "--quiet", "--brain-mask", str(mask), "--save-mask", str(tmp_path / "used.nii.gz")])


def test_probability_map_without_exact_zeros_is_thresholded_at_one_half(tmp_path, t1, tiny_checkpoint):
    probability = np.where(_brain(), 0.97, 0.02)  # background never exactly 0
    mask = _mask_file(tmp_path, t1, probability)
    assert _synthesize(t1, tiny_checkpoint, mask, tmp_path) == 0
    used = load_volume(tmp_path / "used.nii.gz").array
    assert np.array_equal(used > 0, _brain())
    assert not load_volume(tmp_path / "out.nii.gz").array[~_brain()].any()


def test_label_map_counts_every_label_as_brain(tmp_path, t1, tiny_checkpoint):
    labels = _brain() * 2 + (_brain() & (np.arange(SHAPE[2]) > 10)) * 1  # labels 0, 2, 3
    assert _synthesize(t1, tiny_checkpoint, _mask_file(tmp_path, t1, labels), tmp_path) == 0
    assert np.array_equal(load_volume(tmp_path / "used.nii.gz").array > 0, _brain())


@pytest.mark.parametrize("values,pattern", [
    (lambda b: np.where(b, 1.0, -1.0), "has negative values"),  # a -1 background
    (lambda b: np.where(b, 417.3, 12.5), "not a brain mask"),  # an image given as the mask
    (lambda b: np.where(b, 0.3, 0.0), r"is empty \(no voxel above 0.5\)"),  # a faint probability map
    (lambda b: np.zeros(b.shape), r"is empty \(no voxel > 0\)"),
])
def test_mask_file_holding_something_else_is_refused_in_one_line(tmp_path, t1, tiny_checkpoint, capsys, values,
                                                                  pattern):
    import re

    mask = _mask_file(tmp_path, t1, values(_brain()))
    assert _synthesize(t1, tiny_checkpoint, mask, tmp_path) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --brain-mask mask.nii.gz ") and re.search(pattern, lines[0])
    assert not (tmp_path / "out.nii.gz").exists()


def test_evaluate_reads_its_mask_the_same_way(tmp_path, t1, capsys):
    reference = load_volume(t1)
    pred = save_volume(reference.with_array(reference.array * 0.9), tmp_path / "pred.nii.gz")
    mask = _mask_file(tmp_path, t1, np.where(_brain(), 1.0, -1.0))
    assert main(["evaluate", "--pred", str(pred), "--ref", str(t1), "--mask", str(mask)]) == 2
    assert "has negative values" in capsys.readouterr().err


def test_one_interpretation_for_files_and_arrays():
    brain = _brain()
    volume = Volume(head_phantom(SHAPE), affine_for("LPS"))
    for values in (brain, brain.astype(np.uint8) * 255, np.where(brain, 0.8, 0.1)):
        assert np.array_equal(mask_from_values(values), brain)
        assert np.array_equal(choose_brain_mask(volume, values).mask, brain)  # e.g. a labelmap from Slicer
    with pytest.raises(InputError, match="has negative values"):
        choose_brain_mask(volume, np.where(brain, 1, -1))
