"""Brain extraction for whole-head scans: detection of skull-stripped inputs, accuracy of the
automatic mask against reference masks, geometry, the command line's --brain-mask/--save-mask,
and clear errors."""

import os
import re
import sys

import numpy as np
import pytest
from phantoms import affine_for, head_phantom

from MRISynthesisLib import brain_extraction
from MRISynthesisLib.brain_extraction import choose_brain_mask, extract_brain, mask_used
from MRISynthesisLib.cli import main
from MRISynthesisLib.errors import Cancelled, InputError
from MRISynthesisLib.io import load_volume
from MRISynthesisLib.preprocessing import brain_mask, looks_skull_stripped
from MRISynthesisLib.synthesis import Synthesizer
from MRISynthesisLib.volume import Volume

#: Rigid registrations printed by ``python benchmarks/whole_head.py`` (RAS mm, fixed -> moving):
#: native T1 -> the same patient's skull-stripped T1 (paired/TCGA-FG-6692), native T1 -> native T2.
NATIVE_T1_TO_STRIPPED_T1 = np.array([[0.981381, -0.192053, -0.002531, -115.489918],
                                     [0.189575, 0.966436, 0.173388, 96.775028],
                                     [-0.030853, -0.17064, 0.98485, 48.641093],
                                     [0.0, 0.0, 0.0, 1.0]])
NATIVE_T1_TO_NATIVE_T2 = np.array([[0.967569, -0.249454, 0.039797, 4.419564],
                                   [0.251972, 0.964252, -0.082022, 4.212619],
                                   [-0.017913, 0.08939, 0.995836, -19.93248],
                                   [0.0, 0.0, 0.0, 1.0]])
MIN_DICE = 0.92

# T1/T2 files of the paired subjects (other contrasts and masks left out).
_PAIRED_T1_T2 = re.compile(r"(t1n|t2w|_t1_|_t2_|\.T1\.|\.T2\.|^T1_N4|^T2_N4|^t1n|^t2w)", re.IGNORECASE)


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _whole_head_phantom(shape=(40, 48, 24)):
    """A head-like phantom whose background is positive up to the faces (like a raw scan's air)."""
    return head_phantom(shape) + np.float32(5.0) + np.random.default_rng(1).random(shape, dtype=np.float32)


@pytest.fixture
def fresh_deepbet_cache():
    brain_extraction._deepbet.cache_clear()
    yield
    brain_extraction._deepbet.cache_clear()


# -- without real data ---------------------------------------------------------------------------


def test_skull_stripped_detection_on_phantoms():
    assert looks_skull_stripped(head_phantom())
    assert not looks_skull_stripped(_whole_head_phantom())
    assert not looks_skull_stripped(np.zeros((8, 8, 8), np.float32))


def test_choices_none_and_given_mask():
    volume = Volume(_whole_head_phantom(), affine_for("LPS"))
    assert choose_brain_mask(volume, "none").mask is None
    given = np.zeros(volume.shape, np.uint8)
    given[10:30, 10:30, 5:20] = 3
    chosen = choose_brain_mask(volume, given)
    assert chosen.source == "given" and chosen.mask.dtype == bool and chosen.mask.sum() == 20 * 20 * 15
    with pytest.raises(InputError, match="does not match"):
        choose_brain_mask(volume, given[:-1])
    with pytest.raises(InputError, match=r"is empty \(no voxel > 0\)"):
        choose_brain_mask(volume, np.zeros(volume.shape))
    with pytest.raises(InputError, match="unknown brain mask choice 'skull'"):
        choose_brain_mask(volume, "skull")


def test_skull_stripped_input_is_left_to_the_synthesizers_mask():
    volume = Volume(head_phantom(), affine_for("PIR", spacing=(0.9, 1.1, 2.0)))
    chosen = choose_brain_mask(volume, "auto")
    assert chosen.mask is None and chosen.source == "skull-stripped input"
    assert np.array_equal(mask_used(volume, chosen), volume.array > 0)
    none = choose_brain_mask(Volume(_whole_head_phantom(), affine_for("LPS")), "none")
    assert np.array_equal(mask_used(Volume(_whole_head_phantom(), affine_for("LPS")), none),
                          brain_mask(_whole_head_phantom()))


def test_cancel_before_extraction_raises_cancelled():
    volume = Volume(_whole_head_phantom(), affine_for("RAS"))
    with pytest.raises(Cancelled):
        choose_brain_mask(volume, "auto", progress=lambda done, total: False)


def test_constant_or_non_finite_input_is_refused_before_extraction():
    with pytest.raises(InputError, match="foreground is constant"):
        extract_brain(Volume(np.full((20, 20, 20), 7.0, np.float32), np.eye(4)))
    bad = _whole_head_phantom()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        extract_brain(Volume(bad, np.eye(4)))


def test_missing_deepbet_gives_one_clear_line_and_writes_nothing(tmp_path, capsys, monkeypatch, tiny_checkpoint,
                                                                  fresh_deepbet_cache):
    import nibabel as nib

    for name in ("deepbet", "deepbet.bet", "deepbet.utils"):
        monkeypatch.setitem(sys.modules, name, None)
    source = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(_whole_head_phantom(), affine_for("LAS")), str(source))
    before = sorted(os.listdir(tmp_path))
    code = main(["synthesize", str(source), "-o", str(tmp_path / "t2.nii.gz"), "--model", str(tiny_checkpoint),
                 "--save-mask", str(tmp_path / "mask.nii.gz"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: automatic brain extraction needs the 'deepbet'")
    assert sorted(os.listdir(tmp_path)) == before


def test_altered_deepbet_weights_are_refused(monkeypatch, fresh_deepbet_cache):
    pytest.importorskip("deepbet")
    monkeypatch.setitem(brain_extraction.DEEPBET_WEIGHTS, "model.pt", "0" * 64)
    with pytest.raises(InputError, match="not the validated version"):
        extract_brain(Volume(_whole_head_phantom(), affine_for("RAS")))


def test_brain_mask_file_on_another_grid_is_refused(tmp_path, capsys, tiny_checkpoint):
    import nibabel as nib

    source, mask = tmp_path / "t1.nii.gz", tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(head_phantom(), affine_for("LPS")), str(source))
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), affine_for("LPS")), str(mask))
    code = main(["synthesize", str(source), "-o", str(tmp_path / "o.nii.gz"), "--model", str(tiny_checkpoint),
                 "--brain-mask", str(mask), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--brain-mask has shape (10, 10, 10)" in err
    assert not (tmp_path / "o.nii.gz").exists()


def test_given_mask_file_restricts_the_output_and_is_saved(tmp_path, capsys, tiny_checkpoint):
    import nibabel as nib

    source, mask_path = tmp_path / "t1.nii.gz", tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(_whole_head_phantom(), affine_for("LPS")), str(source))
    given = np.zeros((40, 48, 24), np.uint8)
    given[8:32, 10:38, 4:20] = 1
    nib.save(nib.Nifti1Image(given, affine_for("LPS")), str(mask_path))
    assert main(["synthesize", str(source), "-o", str(tmp_path / "o.nii.gz"), "--model", str(tiny_checkpoint),
                 "--brain-mask", str(mask_path), "--save-mask", str(tmp_path / "used.nii.gz"), "--quiet"]) == 0
    assert "brain mask: the given brain mask" in capsys.readouterr().err
    output, used = load_volume(tmp_path / "o.nii.gz").array, load_volume(tmp_path / "used.nii.gz").array
    assert np.array_equal(used, given.astype(np.float32))
    assert not output[given == 0].any() and output[given == 1].any()


# -- real data -----------------------------------------------------------------------------------


def _paired_t1_t2_files(shared_data):
    files = [f for f in sorted((shared_data / "paired").glob("*/*.nii*")) if _PAIRED_T1_T2.search(f.name)
             and not re.search(r"(t1c|t1ce|mask|gold|foreground)", f.name, re.IGNORECASE)]
    assert len(files) == 30, [f.name for f in files]  # a T1 and a T2 per subject
    return files


@pytest.mark.realdata
def test_paired_subjects_are_detected_as_skull_stripped(shared_data):
    for path in _paired_t1_t2_files(shared_data)[::2]:  # one file per subject keeps the test short
        volume = load_volume(path)
        chosen = choose_brain_mask(volume, "auto")
        assert chosen.mask is None and chosen.source == "skull-stripped input", path.name


@pytest.mark.realdata
def test_whole_head_scans_are_not_taken_for_skull_stripped(shared_data):
    files = sorted((shared_data / "templates" / "spm_avg152").glob("*.nii")) + \
        sorted((shared_data / "raw" / "TCGA-FG-6692_native").glob("*.nii.gz"))
    assert len(files) == 7
    for path in files:
        assert not looks_skull_stripped(load_volume(path).array), path.name


@pytest.mark.realdata
@pytest.mark.parametrize("subject", ["CBICA-301D00252"])
def test_skull_stripped_input_gives_the_same_output_as_before_bit_for_bit(shared_data, subject, tmp_path,
                                                                          tiny_checkpoint):
    source = next(f for f in _paired_t1_t2_files(shared_data) if f.parent.name == subject)
    before = Synthesizer(tiny_checkpoint, device="cpu").synthesize(load_volume(source)).array
    out, mask = tmp_path / "auto.nii.gz", tmp_path / "mask.nii.gz"
    assert main(["synthesize", str(source), "-o", str(out), "--model", str(tiny_checkpoint), "--device", "cpu",
                 "--save-mask", str(mask), "--quiet"]) == 0
    assert np.array_equal(load_volume(out).array, before)
    assert np.array_equal(load_volume(mask).array > 0, load_volume(source).array > 0)


def _avg152_reference_mask(avg152):
    """Brain mask of the whole-head avg152 T1 template: the non-zero region of the skull-stripped
    ICBM 2009a template inside nilearn (both in MNI space), resampled onto avg152's grid through
    the two files' matrices (linear, >= 0.5), holes filled."""
    nilearn_template = pytest.importorskip("MRISynthesisLib.demo").nilearn_t1_template()
    if nilearn_template is None:
        pytest.skip("nilearn (the 'examples' extra) is not installed")
    from scipy import ndimage

    from benchmarks.whole_head import resample

    icbm = load_volume(nilearn_template)
    fraction = resample((icbm.array > 0).astype(np.float32), icbm.affine, avg152.shape, avg152.affine, np.eye(4))
    return ndimage.binary_fill_holes(fraction >= 0.5)


@pytest.fixture(scope="module")
def avg152_runs(shared_data, tmp_path_factory, tiny_checkpoint):
    """The avg152 T1 synthesised with --brain-mask auto (mask saved) and with --brain-mask none."""
    source = shared_data / "templates" / "spm_avg152" / "avg152T1.nii"
    folder = tmp_path_factory.mktemp("avg152")
    for choice in ("auto", "none"):
        assert main(["synthesize", str(source), "-o", str(folder / f"{choice}.nii.gz"), "--model",
                     str(tiny_checkpoint), "--brain-mask", choice, "--save-mask", str(folder / f"mask_{choice}.nii.gz"),
                     "--quiet"]) == 0
    return source, folder


@pytest.mark.realdata
@pytest.mark.slow
def test_automatic_mask_matches_the_avg152_reference(avg152_runs):
    source, folder = avg152_runs
    mask = load_volume(folder / "mask_auto.nii.gz").array > 0
    assert _dice(mask, _avg152_reference_mask(load_volume(source))) >= MIN_DICE


@pytest.mark.realdata
@pytest.mark.slow
def test_whole_head_output_is_background_outside_the_extracted_brain(avg152_runs):
    source, folder = avg152_runs
    mask = load_volume(folder / "mask_auto.nii.gz").array > 0
    extracted, head = load_volume(folder / "auto.nii.gz").array, load_volume(folder / "none.nii.gz").array
    assert not extracted[~mask].any() and np.count_nonzero(extracted[mask]) > 0.9 * mask.sum()
    head_mask = load_volume(folder / "mask_none.nii.gz").array > 0
    assert head_mask.sum() > 1.5 * mask.sum()  # without extraction the skull and scalp are synthesised too
    assert np.count_nonzero(head[~mask]) > 0.3 * np.count_nonzero(~mask & head_mask)


def _native(shared_data, contrast):
    folder = shared_data / "raw" / "TCGA-FG-6692_native"
    return load_volume(next(folder.glob(f"*_AX_SE_*_{contrast}.nii.gz")))


def _native_reference_mask(shared_data, target, target_to_stripped):
    stripped = load_volume(shared_data / "paired" / "TCGA-FG-6692" / "OtherEXampleFromTCIA_t1_bet.nii.gz")
    from benchmarks.whole_head import resample

    fraction = resample((stripped.array > 0).astype(np.float32), stripped.affine, target.shape, target.affine,
                        target_to_stripped)
    return fraction >= 0.5


@pytest.mark.realdata
@pytest.mark.slow
def test_automatic_mask_matches_the_reference_on_the_native_whole_head_t1(shared_data):
    t1 = _native(shared_data, "t1")
    reference = _native_reference_mask(shared_data, t1, NATIVE_T1_TO_STRIPPED_T1)
    assert _dice(choose_brain_mask(t1, "auto").mask, reference) >= MIN_DICE


@pytest.mark.realdata
@pytest.mark.slow
def test_automatic_mask_matches_the_reference_on_the_native_whole_head_t2(shared_data):
    t2 = _native(shared_data, "t2")
    t2_to_stripped = NATIVE_T1_TO_STRIPPED_T1 @ np.linalg.inv(NATIVE_T1_TO_NATIVE_T2)
    reference = _native_reference_mask(shared_data, t2, t2_to_stripped)
    assert _dice(extract_brain(t2), reference) >= MIN_DICE


@pytest.mark.realdata
@pytest.mark.slow
def test_reoriented_input_gives_the_same_mask(shared_data, avg152_runs):
    from nibabel import orientations

    source, folder = avg152_runs
    volume = load_volume(source)
    # The same voxels stored as P, I, R (axes swapped and flipped), with the matching matrix.
    target = orientations.axcodes2ornt(("P", "I", "R"))
    transform = orientations.ornt_transform(orientations.io_orientation(volume.affine), target)
    array = orientations.apply_orientation(volume.array, transform)
    affine = volume.affine @ orientations.inv_ornt_aff(transform, volume.shape)
    mask = extract_brain(Volume(np.ascontiguousarray(array), affine))
    back = orientations.apply_orientation(mask, orientations.ornt_transform(target, orientations.io_orientation(volume.affine)))
    assert np.array_equal(back, load_volume(folder / "mask_auto.nii.gz").array > 0)
