"""The automatic brain-mask decision: a skull-stripped input is kept, a whole head (also one whose
air is stored as zeros) is extracted, an implausible extracted mask warns, and the output's
provenance says which mask was used. Phantom tests replace deepbet's networks with fakes (the
logic is tested, not the networks); real-data tests run them on the shared collection."""

import warnings

import numpy as np
import pytest
from phantoms import affine_for, head_phantom

from MRISynthesisLib import brain_extraction
from MRISynthesisLib.brain_extraction import (background_value, check_extracted_mask, choose_brain_mask,
                                              scalp_gap_mm, skull_stripped_decision)
from MRISynthesisLib.cli import main
from MRISynthesisLib.io import load_volume, read_provenance
from MRISynthesisLib.volume import Volume

SPACING = 2.0  # mm: phantoms of realistic size in few voxels


def _ellipsoid(shape, semi_axes_mm):
    grid = np.stack(np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * SPACING for n in shape], indexing="ij"))
    return sum((g / a) ** 2 for g, a in zip(grid, semi_axes_mm)) <= 1.0


def _zero_air_head(semi_axes_mm=(75, 90, 70), ring_mm=12, shape=(90, 105, 85)):
    """A whole head whose air is exact zeros: bright scalp, dark skull, brain; returns (volume, brain)."""
    head = _ellipsoid(shape, semi_axes_mm)
    brain = _ellipsoid(shape, [a - ring_mm for a in semi_axes_mm])
    skull = _ellipsoid(shape, [a - 5 for a in semi_axes_mm]) & ~brain
    texture = 20 * np.sin(np.arange(shape[0]) / 3.0)[:, None, None]  # smooth: anatomy-like for the input check
    array = np.where(head, 200.0, 0.0) - np.where(skull, 190.0, 0.0) + np.where(brain, -80.0 + texture, 0)
    return Volume(array.astype(np.float32), affine_for("LPS", spacing=(SPACING,) * 3)), brain


def _stripped(shift=0.0):
    volume, brain = _zero_air_head()
    array = np.where(brain, volume.array, 0).astype(np.float32) + np.float32(shift)
    return Volume(array, volume.affine), brain


@pytest.fixture
def fake_networks(monkeypatch):
    """deepbet's coarse and fine networks replaced: ``fake.share`` is the coarse answer (None: must
    not run), ``fake.brain`` the fine network's mask (None: must not run); calls are counted."""

    class Fake:
        share, brain, coarse_calls, fine_calls, second_region = None, None, 0, 0, False

    fake = Fake()

    def coarse(volume, foreground, device="cpu", engine="torch"):
        assert fake.share is not None, "the coarse network should not run"
        fake.coarse_calls += 1
        return fake.share

    def fine(volume, device="cpu", progress=None):
        assert fake.brain is not None, "the extractor should not run"
        fake.fine_calls += 1
        if fake.second_region:
            warnings.warn("the brain extractor found a second separate region of 35 ml besides the brain it kept",
                          brain_extraction.BrainExtractionWarning)
        return fake.brain.copy()

    monkeypatch.setattr(brain_extraction, "coarse_brain_share", coarse)
    monkeypatch.setattr(brain_extraction, "extract_brain", fine)
    return fake


# -- decision on phantoms ---------------------------------------------------------------------------


def test_background_value_is_the_constant_background():
    assert background_value(head_phantom()) == 0
    assert background_value(head_phantom() + 3) == 3
    with_negatives = head_phantom()
    with_negatives[0, 0, :5] = -0.5  # interpolation undershoot next to a zero background
    assert background_value(with_negatives) == 0
    assert background_value(with_negatives + 3) == 3  # a shifted background with undershoot below it
    assert background_value(np.random.default_rng(0).random((20, 20, 20)) + 1) is None


def test_scalp_gap_is_the_ring_between_head_outline_and_brain():
    volume, brain = _zero_air_head(ring_mm=12)
    assert scalp_gap_mm(volume.array > 0, brain, volume.affine) == pytest.approx(12, abs=2.5)
    assert scalp_gap_mm(brain, brain, volume.affine) == 0


def test_whole_head_with_zero_air_is_extracted_not_kept(fake_networks):
    volume, brain = _zero_air_head()
    assert brain_extraction.looks_skull_stripped(volume.array)  # what fooled the old test
    fake_networks.share, fake_networks.brain = 0.5, brain
    chosen = choose_brain_mask(volume, "auto")
    assert chosen.source == "extracted" and np.array_equal(chosen.mask, brain)
    assert chosen.evidence["scalp_gap_mm"] > brain_extraction.MAX_STRIPPED_GAP_MM
    assert fake_networks.fine_calls == 1  # the decision's extraction is the mask: not run twice


def test_head_larger_than_a_brain_needs_no_coarse_network(fake_networks):
    volume, brain = _zero_air_head(semi_axes_mm=(90, 110, 80), shape=(100, 120, 90))
    fake_networks.brain = brain
    decision = skull_stripped_decision(volume)
    assert not decision.skull_stripped and decision.foreground_ml > brain_extraction.MAX_BRAIN_ML
    assert fake_networks.coarse_calls == 0


def test_confident_coarse_network_keeps_a_skull_stripped_input_without_the_fine_one(fake_networks):
    volume, _ = _stripped()
    fake_networks.share = 0.95
    chosen = choose_brain_mask(volume, "auto")
    assert chosen.source == "skull-stripped input" and chosen.mask is None  # the synthesizer's own mask, as before
    assert fake_networks.fine_calls == 0


def test_skull_stripped_slab_with_a_plus3_background_is_kept_whole(fake_networks):
    # Issue 23 item 7: the extractor loses the end slices of a slab; the input must be kept, whole.
    volume, brain = _stripped(shift=3.0)
    slab = Volume(np.ascontiguousarray(volume.array[:, :, 30:50]), volume.affine)
    lossy = brain[:, :, 30:50].copy()
    lossy[:, :, :4] = lossy[:, :, -4:] = False
    fake_networks.share, fake_networks.brain = 0.55, lossy
    chosen = choose_brain_mask(slab, "auto")
    assert chosen.source == "skull-stripped input"
    assert np.array_equal(chosen.mask, slab.array > 3)
    assert chosen.provenance()["background"] == 3.0


def test_extract_choice_always_runs_the_extractor(fake_networks):
    volume, brain = _stripped()
    fake_networks.brain = brain
    chosen = choose_brain_mask(volume, "extract")
    assert chosen.source == "extracted" and chosen.requested == "extract" and fake_networks.fine_calls == 1


def test_implausible_extracted_masks_warn():
    voxel_ml = 0.001
    assert check_extracted_mask(np.ones(1_200_000, bool), voxel_ml) == []
    small, = check_extracted_mask(np.ones(500_000, bool), voxel_ml)
    assert "500 ml, outside the 800-2200 ml" in small
    big, = check_extracted_mask(np.ones(3_000_000, bool), voxel_ml)
    assert "3000 ml" in big


def test_a_second_large_region_of_the_extractor_is_a_warning_of_the_choice(fake_networks):
    volume, brain = _zero_air_head()
    fake_networks.brain, fake_networks.second_region = brain, True
    chosen = choose_brain_mask(volume, "extract")
    assert any("second separate region of 35 ml" in w for w in chosen.warnings)
    assert chosen.provenance()["warnings"] == list(chosen.warnings)


def test_command_line_warns_and_the_output_records_the_mask(tmp_path, capsys, fake_networks, tiny_checkpoint):
    import nibabel as nib

    volume, brain = _stripped()
    source = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(volume.array, volume.affine), str(source))
    fake_networks.brain = brain & (np.arange(brain.shape[2]) < 30)  # a partial mask: too small
    out = tmp_path / "t2.nii.gz"
    assert main(["synthesize", str(source), "-o", str(out), "--model", str(tiny_checkpoint), "--brain-mask",
                 "extract", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: the extracted brain mask is" in err and "brain mask: brain extracted automatically" in err
    record = read_provenance(out)["brain_mask_details"]
    assert record["requested"] == "extract" and record["source"] == "extracted"
    assert record["mask_ml"] == pytest.approx(fake_networks.brain.sum() * SPACING ** 3 / 1000, abs=0.1)
    assert record["warnings"] and record["warnings"][0].startswith("the extracted brain mask is")
    fake_networks.share = 0.95
    assert main(["synthesize", str(source), "-o", str(out), "--model", str(tiny_checkpoint), "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err
    record = read_provenance(out)["brain_mask_details"]
    assert record["requested"] == "auto" and record["source"] == "skull-stripped input" and record["warnings"] == []


# -- real data ----------------------------------------------------------------------------------


def _mslub_raw(shared_data, contrast):
    return load_volume(shared_data / "raw" / "MSLUB-longitudinal" / "patient04-study1" / f"study1_{contrast}.nii.gz")


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("contrast", ["T1W", "T2W"])
def test_raw_whole_head_with_zero_air_is_extracted_to_a_plausible_brain(shared_data, contrast):
    # The example: air and face stored as zeros; the old test took it for skull-stripped.
    volume = _mslub_raw(shared_data, contrast)
    chosen = choose_brain_mask(volume, "auto")
    mask_ml = chosen.mask.sum() * np.prod(volume.spacing) / 1000
    assert chosen.source == "extracted" and 1000 < mask_ml < 1800 and chosen.warnings == ()
    assert chosen.evidence["foreground_ml"] > 3000


@pytest.mark.realdata
def test_skull_stripped_hcp_templates_are_kept(shared_data):
    folder = shared_data / "templates" / "hcp_mni152"
    for name in ("MNI152_T1_1mm_brain.nii.gz", "MNI152_T2_1mm_brain.nii.gz"):
        assert choose_brain_mask(load_volume(folder / name), "auto").source == "skull-stripped input", name


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("contrast", ["T1", "T2"])
def test_whole_head_hcp_templates_are_extracted_close_to_their_brain_mask(shared_data, contrast):
    from benchmarks.whole_head import dice, resample

    folder = shared_data / "templates" / "hcp_mni152"
    volume = load_volume(folder / f"MNI152_{contrast}_2mm.nii.gz")
    chosen = choose_brain_mask(volume, "auto")
    reference = load_volume(folder / "MNI152_T1_1mm_brain_mask.nii.gz")
    on_grid = resample(reference.array, reference.affine, volume.shape, volume.affine, np.eye(4)) >= 0.5
    assert chosen.source == "extracted" and dice(chosen.mask, on_grid) >= 0.9


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("path", ["BraTS-GLI-00001-000/BraTS-GLI-00001-000-t1n.nii.gz",
                                  # negative interpolation values: after +3 some voxels lie below the background
                                  "MSLUB-patient07/T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"])
def test_skull_stripped_slab_with_a_plus3_background_is_kept_on_real_data(shared_data, path):
    volume = load_volume(shared_data / "paired" / path)
    first = volume.shape[2] // 3
    slab = Volume(np.ascontiguousarray(volume.array[:, :, first:first + 40]) + np.float32(3), volume.affine)
    chosen = choose_brain_mask(slab, "auto")
    assert chosen.source == "skull-stripped input" and np.array_equal(chosen.mask, slab.array > 3)
