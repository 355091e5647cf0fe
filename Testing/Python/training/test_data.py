"""Specification of Training.data: discovery, split, slice cache, augmentation, datasets.

Real-data tests use ``../shared/data`` (the ``shared_data`` fixture skips when it is absent);
everything else builds tiny synthetic NIfTI files in a temporary folder.
"""

from __future__ import annotations

import json
import pickle
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from MRISynthesisLib.errors import InputError, OutputError
from Training.data import (AugmentConfig, PairedSliceDataset, SliceCache, Subject, UnpairedSliceDataset,
                           augment_pair, check_pair, discover_subjects, discover_unpaired, format_report,
                           read_manifest, read_split, split_subjects, write_split)
from Training.data.discovery import file_role

# subject folder -> (T1 file, T2 file, brain mask file or None, source) as discovery must choose them
EXPECTED = {
    "BraTS-GLI-00001-000": ("BraTS-GLI-00001-000-t1n.nii.gz", "BraTS-GLI-00001-000-t2w.nii.gz", None, "BraTS"),
    "BraTS20_Training_001": ("t1n.nii.gz", "t2w.nii.gz", None, "BraTS"),
    "TCGA-DU-7294": ("TCGA-DU-7294_t1_bet.nii.gz", "TCGA-DU-7294_t2_bet.nii.gz", None, "TCGA"),
    "TCGA-FG-6692": ("OtherEXampleFromTCIA_t1_bet.nii.gz", "OtherEXampleFromTCIA_t2_bet.nii.gz", None, "TCGA"),
    "MSLUB-patient07": ("T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
                        "T2_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz", None, "MSLUB"),
    "MSLUB-patient19": ("T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
                        "T2_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz", None, "MSLUB"),
    "GLISTR-ex0": ("ex0_t1_sus_n3_r_strip_hist.nii.gz", "ex0_t2_sus_n3_r_strip_hist.nii.gz", None, "GLISTR"),
}
for _id, _date in [("301D00252", "20040121"), ("301D00262", "20040114"), ("301D00293", "20040211"),
                   ("301D00368", "20040329"), ("301D00373", "20040319"), ("301D00377", "20040311"),
                   ("302D10226", "20040128"), ("302D10245", "20040126")]:
    _stem = f"{_id}-{_date}"
    EXPECTED[f"CBICA-{_id}"] = (f"{_stem}.T1.byte_nii.coreg.smooth.brain.correct.match.nii.gz",
                                f"{_stem}.T2.byte_nii.coreg.smooth.brain.correct.match.nii.gz",
                                f"{_stem}_foreground.nii.gz", "CBICA")


def _write_nifti(path, shape=(8, 9, 6), affine=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).uniform(1, 100, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


# ------------------------------------------------------------------------------------ discovery


@pytest.mark.parametrize("name, role", [
    ("BraTS20_Training_001_t1.nii.gz", "t1"), ("BraTS20_Training_001_t1ce.nii.gz", None),
    ("BraTS20_Training_001_t2.nii.gz", "t2"), ("BraTS20_Training_001_flair.nii.gz", None),
    ("BraTS20_Training_001_seg.nii.gz", "lesion"), ("BraTS-GLI-00001-000-t2f.nii.gz", None),
    ("BraTS-GLI-00001-000-t1c.nii.gz", None), ("sub-01_ses-1_T1w.nii.gz", "t1"), ("sub-01_T2w.nii", "t2"),
    ("sub-01_desc-brain_mask.nii.gz", "mask"), ("T1POST_N4_brain.nii.gz", None),
    ("GOLD_STANDARD_N4.nii.gz", "lesion"), ("x.manual.mask.nii.gz", "lesion"), ("x.PD.nii.gz", None),
    ("x_brainmask.nii.gz", "mask"), ("ex0_t1ce_strip.nii.gz", None), ("t2_to_t1_registered.nii.gz", None),
])
def test_file_roles_by_naming_style(name, role):
    assert file_role(name) == role


@pytest.mark.realdata
def test_discovery_finds_all_15_paired_subjects_with_the_right_files(shared_data):
    report = discover_subjects(shared_data / "paired")
    assert report.skipped == []
    found = {s.id: (s.t1.name, s.t2.name, s.mask.name if s.mask else None, s.source) for s in report.subjects}
    assert found == EXPECTED
    for subject in report.subjects:
        assert subject.t1.parent.name == subject.t2.parent.name == subject.id
        check_pair(subject)  # every real pair shares one grid
    lesions = {s.id: s.lesion_mask.name for s in report.subjects if s.lesion_mask is not None}
    assert lesions["MSLUB-patient07"].startswith("GOLD_STANDARD_")
    assert lesions["CBICA-301D00252"] == "301D00252-20040121.manual.mask.nii.gz"
    assert len(lesions) == 10
    text = format_report(report)
    assert text.startswith("15 subject(s) found, 0 skipped") and "GLISTR-ex0 [GLISTR]" in text


def test_broken_and_ambiguous_folders_are_skipped_with_reasons(tmp_path):
    _write_nifti(tmp_path / "good" / "sub_t1.nii.gz")
    _write_nifti(tmp_path / "good" / "sub_t2.nii.gz")
    _write_nifti(tmp_path / "good" / "sub_t1ce.nii.gz")
    _write_nifti(tmp_path / "no_t2" / "sub_t1.nii.gz")
    _write_nifti(tmp_path / "no_t2" / "sub_flair.nii.gz")
    _write_nifti(tmp_path / "two_t1" / "a_T1w.nii.gz")
    _write_nifti(tmp_path / "two_t1" / "b_T1w.nii.gz")
    _write_nifti(tmp_path / "two_t1" / "a_T2w.nii.gz")
    (tmp_path / "empty").mkdir()
    (tmp_path / "README.txt").write_text("not a subject")
    report = discover_subjects(tmp_path)
    assert [s.id for s in report.subjects] == ["good"]
    assert report.subjects[0].t1.name == "sub_t1.nii.gz"
    reasons = dict(report.skipped)
    assert set(reasons) == {"no_t2", "two_t1", "empty"}
    assert "no T2" in reasons["no_t2"]
    assert "ambiguous" in reasons["two_t1"] and "a_T1w.nii.gz" in reasons["two_t1"]
    assert "no NIfTI" in reasons["empty"]


def test_missing_or_pairless_data_folder_gives_clear_error(tmp_path):
    with pytest.raises(InputError, match="data folder not found"):
        discover_subjects(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        discover_subjects(tmp_path / "file.txt")
    _write_nifti(tmp_path / "only_flair" / "x_flair.nii.gz")
    with pytest.raises(InputError, match="no T1/T2 pairs found .*only_flair: no T1"):
        discover_subjects(tmp_path)
    assert discover_subjects(tmp_path, allow_empty=True).subjects == []


def test_manifest_paths_are_relative_to_the_csv(tmp_path):
    _write_nifti(tmp_path / "imgs" / "a1.nii.gz")
    _write_nifti(tmp_path / "imgs" / "a2.nii.gz")
    _write_nifti(tmp_path / "imgs" / "am.nii.gz")
    csv = tmp_path / "list.csv"
    csv.write_text("subject,t1,t2,mask\nA,imgs/a1.nii.gz,imgs/a2.nii.gz,imgs/am.nii.gz\n"
                   "B,imgs/b1.nii.gz,imgs/a2.nii.gz,\n")
    report = read_manifest(csv)
    assert [(s.id, s.t1, s.t2, s.mask) for s in report.subjects] == [
        ("A", tmp_path / "imgs" / "a1.nii.gz", tmp_path / "imgs" / "a2.nii.gz", tmp_path / "imgs" / "am.nii.gz")]
    assert report.skipped[0][0] == "B" and "t1 file not found" in report.skipped[0][1]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,t1\nA,imgs/a1.nii.gz\n")
    with pytest.raises(InputError, match="lacks column"):
        read_manifest(bad)
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")


def test_unpaired_folders_list_images_but_not_masks(tmp_path):
    _write_nifti(tmp_path / "T1" / "x.nii.gz")
    _write_nifti(tmp_path / "T1" / "x_mask.nii.gz")
    _write_nifti(tmp_path / "T2" / "y.nii")
    t1, t2 = discover_unpaired(tmp_path / "T1", tmp_path / "T2")
    assert [p.name for p in t1] == ["x.nii.gz"] and [p.name for p in t2] == ["y.nii"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no T2 images"):
        discover_unpaired(tmp_path / "T1", tmp_path / "empty")


def test_mismatched_grids_give_input_error(tmp_path):
    t1 = _write_nifti(tmp_path / "s" / "s_t1.nii.gz")
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    t2 = _write_nifti(tmp_path / "s" / "s_t2.nii.gz", affine=shifted)
    with pytest.raises(InputError, match="subject s: T2 s_t2.nii.gz and T1 s_t1.nii.gz have different"):
        check_pair(Subject("s", t1, t2))
    same_grid = _write_nifti(tmp_path / "s" / "same.nii.gz", affine=np.eye(4) + 1e-5)
    other_shape = _write_nifti(tmp_path / "s" / "m_mask.nii.gz", shape=(8, 9, 7))
    with pytest.raises(InputError, match="mask m_mask.nii.gz has shape"):
        check_pair(Subject("s", t1, same_grid, other_shape))
    check_pair(Subject("s", t1, same_grid))
    with pytest.raises(InputError, match="not on the same grid"):
        SliceCache.build([Subject("s", t1, t2)], tmp_path / "cache", slice_size=16, progress=False)


# ---------------------------------------------------------------------------------------- split


def _subjects(counts: dict) -> list:
    return [Subject(f"{source}-{i}", "t1", "t2", None, source) for source, n in counts.items() for i in range(n)]


REAL_SOURCES = {"CBICA": 8, "BraTS": 2, "TCGA": 2, "MSLUB": 2, "GLISTR": 1}


def test_split_is_subject_level_complete_and_deterministic():
    subjects = _subjects(REAL_SOURCES)
    split = split_subjects(subjects)
    ids = [s for name in ("train", "val", "test") for s in split[name]]
    assert sorted(ids) == sorted(s.id for s in subjects)  # every subject exactly once
    assert [len(split[n]) for n in ("train", "val", "test")] == [12, 2, 1]
    assert split_subjects(list(reversed(subjects)), seed=42) == split
    assert any(split_subjects(subjects, seed=seed) != split for seed in range(1, 6))


def test_split_spreads_sources():
    split = split_subjects(_subjects(REAL_SOURCES))
    for source in ("CBICA", "BraTS", "TCGA", "MSLUB"):
        assert any(s.startswith(source) for s in split["train"])
    held_out = [s.split("-")[0] for s in split["val"] + split["test"]]
    assert len(set(held_out)) == 3  # three held-out subjects from three different sources
    large = split_subjects(_subjects({"A": 90, "B": 10}))
    assert sum(s.startswith("B") for s in large["val"]) == 1 and len(large["val"]) == 10


def test_small_splits_and_too_few_subjects():
    assert {n: len(v) for n, v in split_subjects(["a", "b", "c"]).items()} == {"train": 1, "val": 1, "test": 1}
    with pytest.raises(InputError, match="2 subject\\(s\\) are too few for a train/val/test split"):
        split_subjects(["a", "b"])
    assert split_subjects(["a", "b"], fractions=(0.5, 0.5, 0.0))["test"] == []
    with pytest.raises(InputError, match="sum to 1"):
        split_subjects(["a", "b", "c"], fractions=(0.5, 0.1, 0.1))
    with pytest.raises(InputError, match="twice"):
        split_subjects(["a", "a", "b"])


def test_split_round_trips_through_json(tmp_path):
    split = split_subjects(["a", "b", "c", "d"])
    path = write_split(split, tmp_path / "split.json")
    assert read_split(path) == split
    path.write_text(json.dumps({"train": ["a"], "val": ["a"], "test": []}))
    with pytest.raises(InputError, match="'a' is in both"):
        read_split(path)


@pytest.mark.realdata
def test_real_split_with_seed_42(shared_data):
    report = discover_subjects(shared_data / "paired")
    split = split_subjects(report.subjects, seed=42)
    assert split == split_subjects(report.subjects, seed=42)
    assert not set(split["train"]) & (set(split["val"]) | set(split["test"]))
    assert sum(map(len, split.values())) == 15


# ---------------------------------------------------------------------------------------- cache


@pytest.fixture(scope="module")
def small_subjects(shared_data):
    """Two real subjects stored in different orientations (CBICA 3 mm axial, MNI template 2 mm)."""
    paired = shared_data / "paired" / "CBICA-301D00252"
    cbica = discover_subjects(paired.parent).subjects
    cbica = [s for s in cbica if s.id == "CBICA-301D00252"][0]
    spm = shared_data / "templates" / "spm_avg152"
    template = Subject("avg152", spm / "avg152T1.nii", spm / "avg152T2.nii", None, "other")
    return [cbica, template]


CACHE_OPTIONS = dict(slice_size=64, pixel_spacing_mm=4.0, context_slices=1, max_slices_per_subject=4,
                     progress=False)


@pytest.mark.realdata
def test_cache_build_values_shapes_and_reuse(small_subjects, tmp_path):
    cache = SliceCache.build(small_subjects, tmp_path / "cache", **CACHE_OPTIONS)
    assert cache.rebuilt and len(cache) == 8
    assert cache.source.shape == (8, 3, 64, 64) and cache.source.dtype == np.float16
    assert cache.target.shape == cache.mask.shape == (8, 1, 64, 64) and cache.mask.dtype == np.uint8
    assert list(cache.subject_index) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert cache.subject_ids == ["CBICA-301D00252", "avg152"]
    for images in (cache.source, cache.target):
        assert images.min() == -1.0 and images.max() <= 1.0 and images.max() > 0.5
    # background: every pixel outside the foreground mask is exactly -1, in source and padding
    outside = np.asarray(cache.mask[:, 0]) == 0
    assert np.all(np.asarray(cache.source[:, 1])[outside] == -1.0)
    assert 0.05 < 1 - outside.mean() < 0.6
    assert np.all(cache.source[:, :, :2] == -1.0)  # 240 mm field of view / 4 mm < 64 rows
    assert cache.indices_of(["avg152"]).tolist() == [4, 5, 6, 7]

    mtime = (tmp_path / "cache" / "source.npy").stat().st_mtime_ns
    again = SliceCache.build(small_subjects, tmp_path / "cache", **CACHE_OPTIONS)
    assert not again.rebuilt and again.key == cache.key
    assert (tmp_path / "cache" / "source.npy").stat().st_mtime_ns == mtime
    reopened = SliceCache.open(tmp_path / "cache")
    np.testing.assert_array_equal(reopened.target, cache.target)
    rebuilt = SliceCache.build(small_subjects, tmp_path / "cache", **dict(CACHE_OPTIONS, context_slices=0))
    assert rebuilt.rebuilt and rebuilt.source.shape == (8, 1, 64, 64)
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # no temporary folder left behind


@pytest.mark.realdata
def test_cache_direction_swaps_source_and_target(small_subjects, tmp_path):
    options = dict(CACHE_OPTIONS, context_slices=0, max_slices_per_subject=2)
    forward = SliceCache.build(small_subjects[1:], tmp_path / "f", **options)
    backward = SliceCache.build(small_subjects[1:], tmp_path / "b", direction="t2-to-t1", **options)
    np.testing.assert_array_equal(forward.source, backward.target)
    np.testing.assert_array_equal(forward.target, backward.source)


def test_cache_refuses_a_folder_with_other_files_and_missing_cache(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    t1 = _write_nifti(tmp_path / "s" / "t1.nii.gz")
    with pytest.raises(OutputError, match="not a slice cache"):
        SliceCache.build([Subject("s", t1, t1)], tmp_path / "mine", slice_size=16, progress=False)
    with pytest.raises(InputError, match="no slice cache"):
        SliceCache.open(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------- augmentation


def _blob(channels=1, size=32):
    r, c = np.mgrid[:size, :size]
    inside = (r - 12) ** 2 + (c - 15) ** 2 < 80
    image = np.where(inside, np.sin(r / 3.0) * 0.5 + (c / size), -1.0).astype(np.float32)
    return torch.from_numpy(np.repeat(image[None], channels, 0)), torch.from_numpy(inside[None].astype(np.float32))


def test_augmentation_moves_source_target_and_mask_together():
    image, mask = _blob()
    geometric = AugmentConfig(gamma=False, bias_field=False, max_rotation_deg=20)
    for seed in range(4):
        source, target, new_mask = augment_pair(image, image.clone(), mask, geometric, torch.Generator().manual_seed(seed))
        assert torch.equal(source, target)
        assert set(new_mask.unique().tolist()) <= {0.0, 1.0}
        assert not torch.equal(source, image)
        # intensity changes touch the source only and leave the geometry as it was
        full = augment_pair(image, image.clone(), mask, AugmentConfig(max_rotation_deg=20),
                            torch.Generator().manual_seed(seed))
        assert torch.equal(full[1], target) and torch.equal(full[2], new_mask)
        assert torch.all(full[0][target == -1] == -1) and full[0].min() >= -1 and full[0].max() <= 1


def test_augmentation_is_reproducible_and_switchable():
    image, mask = _blob(channels=3)
    config = AugmentConfig()
    first = augment_pair(image, image[:1], mask, config, torch.Generator().manual_seed(7))
    second = augment_pair(image, image[:1], mask, config, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert first[0].shape == (3, 32, 32) and first[1].shape == (1, 32, 32)
    off = augment_pair(image, image[:1], mask, AugmentConfig(enabled=False), torch.Generator().manual_seed(7))
    assert off[0] is image and off[2] is mask


# -------------------------------------------------------------------------------------- datasets


@pytest.mark.realdata
def test_paired_and_unpaired_datasets(small_subjects, tmp_path):
    cache = SliceCache.build(small_subjects, tmp_path / "cache", **CACHE_OPTIONS)
    dataset = PairedSliceDataset(cache, indices=cache.indices_of(["avg152"]), augment=AugmentConfig(), seed=3)
    item = dataset[1]
    assert item["source"].shape == (3, 64, 64) and item["source"].dtype == torch.float32
    assert item["target"].shape == item["mask"].shape == (1, 64, 64) and item["subject"] == 1
    assert torch.equal(dataset[1]["source"], item["source"])  # same (seed, epoch, index)
    in_worker = pickle.loads(pickle.dumps(dataset))  # what a DataLoader worker receives
    assert len(pickle.dumps(cache)) < 10_000  # the memory maps are reopened, not copied
    assert torch.equal(in_worker[1]["source"], item["source"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1]["source"], item["source"])
    plain = PairedSliceDataset(cache)
    assert len(plain) == 8 and torch.equal(plain[5]["target"], torch.from_numpy(cache.target[5].astype(np.float32)))

    unpaired = UnpairedSliceDataset(cache, seed=0)
    for i in range(len(unpaired)):
        item = unpaired[i]
        assert item["a"].shape == (3, 64, 64) and item["b"].shape == (1, 64, 64)
        assert item["subject_a"] != item["subject_b"]  # never the aligned slice of the same person
    assert [unpaired[i]["subject_b"] for i in range(8)] == [UnpairedSliceDataset(cache, seed=0)[i]["subject_b"]
                                                          for i in range(8)]


@pytest.mark.realdata
def test_single_contrast_caches_feed_the_unpaired_dataset(small_subjects, tmp_path):
    options = dict(CACHE_OPTIONS, context_slices=0, max_slices_per_subject=3)
    a = SliceCache.build_unpaired([s.t1 for s in small_subjects], tmp_path / "a", contrast="t1", **options)
    b = SliceCache.build_unpaired([small_subjects[0].t2], tmp_path / "b", contrast="t2", **options)
    assert a.target is None and len(a) == 6 and len(b) == 3
    dataset = UnpairedSliceDataset(a, b, augment=AugmentConfig())
    item = dataset[4]
    assert item["a"].shape == item["b"].shape == (1, 64, 64)
    with pytest.raises(InputError, match="one contrast only"):
        PairedSliceDataset(a)
