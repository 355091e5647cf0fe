"""prepare-pairs: a raw T1/T2 pair on different grids with a known head movement becomes a
registered pair (recovered within 1 mm / 1 degree) in the layout training discovers; bad subject
folders get one line each and do not stop the others; nothing is written half.

The phantom head is defined in world coordinates (scalp, skull, brain, two ventricles and a lesion
placed asymmetrically, different intensities in T1 and T2), so the T2 can be sampled after a known
rigid movement on its own grid. deepbet is replaced by a fake that finds the phantom's brain (the
tests are about registration, checks and writing, not the extractor)."""

import math

import numpy as np
import pytest
from scipy import ndimage

from MRISynthesisLib import brain_extraction
from MRISynthesisLib.brain_extraction import BrainMaskChoice
from MRISynthesisLib.volume import Volume

CENTRE = np.array([2.0, -5.0, 10.0])
#: (centre offset mm, semi-axes mm, (T1 value, T2 value)), painted in this order.
PARTS = [((0, 0, 0), (70, 85, 65), (180, 120)),      # scalp
         ((0, 0, 0), (64, 79, 59), (10, 10)),        # skull
         ((0, 0, 0), (56, 71, 51), (120, 80)),       # brain
         ((-10, 5, 15), (6, 15, 8), (30, 200)),      # ventricles
         ((12, 0, 12), (5, 12, 7), (30, 200)),
         ((25, -30, 20), (8, 8, 8), (60, 180))]      # lesion


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m = np.eye(4)
    m[i, i] = m[j, j] = math.cos(a)
    m[i, j], m[j, i] = -math.sin(a), math.sin(a)
    return m


def about_centre(matrix: np.ndarray, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    to, back = np.eye(4), np.eye(4)
    to[:3, 3], back[:3, 3] = -CENTRE, CENTRE + np.asarray(shift)
    return back @ matrix @ to


#: The head moved between the T1 and the T2: 6 degrees about S, 4 about R, (5, -4, 3) mm.
MOVEMENT = about_centre(rotation(2, 6) @ rotation(0, 4), shift=(5, -4, 3))


def phantom(contrast: int, shape, spacing, origin, movement=np.eye(4), scale=1.0) -> Volume:
    """The phantom head seen by contrast 0 (T1) or 1 (T2) on a grid, after ``movement`` (RAS)."""
    affine = np.diag(list(spacing) + [1.0])
    affine[:3, 3] = origin
    world = affine[:3, :3] @ np.indices(shape).reshape(3, -1) + affine[:3, 3:4]
    anatomy = np.linalg.inv(movement)
    points = (anatomy[:3, :3] @ world + anatomy[:3, 3:4] - CENTRE[:, None]) / scale
    image = np.zeros(points.shape[1])
    for offset, semi_axes, values in PARTS:
        inside = (((points - np.array(offset)[:, None]) / np.array(semi_axes)[:, None]) ** 2).sum(0) <= 1
        image[inside] = values[contrast]
    return Volume(ndimage.gaussian_filter(image.reshape(shape), 0.7).astype(np.float32), affine)


def t1_phantom():
    return phantom(0, (56, 64, 50), (3.0, 3.0, 3.0), (-82.0, -101.0, -65.0))


def t2_phantom(movement=MOVEMENT, origin=(-80.0, -98.0, -70.0), scale=1.0):
    return phantom(1, (60, 68, 44), (2.8, 2.8, 3.5), origin, movement, scale)


def fake_brain(volume) -> np.ndarray:
    """The phantom's brain: the largest bright region inside the dark skull, holes filled."""
    labels, count = ndimage.label(volume.array > 50)
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


@pytest.fixture
def fake_extractor(monkeypatch):
    monkeypatch.setattr(brain_extraction, "choose_brain_mask",
                        lambda volume, choice="auto", **kw: BrainMaskChoice(fake_brain(volume), "extracted"))
    monkeypatch.setattr(brain_extraction, "extract_brain", lambda volume, **kw: fake_brain(volume))


def _save(volume: Volume, path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(volume.array, volume.affine), str(path))


def test_known_head_movement_is_recovered_within_1_mm_and_1_degree():
    from Training.data.registration import register_rigid

    result = register_rigid(t1_phantom(), t2_phantom(), threads=2)
    corners = np.array([[x, y, z, 1.0] for x in (-50, 50) for y in (-60, 60) for z in (-40, 40)]).T
    corners[:3] += CENTRE[:, None]  # the corners of the brain's bounding box
    error_mm = np.linalg.norm((result.fixed_to_moving @ corners - MOVEMENT @ corners)[:3], axis=0).max()
    residual = result.fixed_to_moving[:3, :3] @ MOVEMENT[:3, :3].T
    error_deg = math.degrees(math.acos(min(1.0, (np.trace(residual) - 1) / 2)))
    assert error_mm < 1.0 and error_deg < 1.0, (error_mm, error_deg)
    assert result.metric_after < result.metric_before
    assert result.rotation_deg == pytest.approx(7.2, abs=1.0)  # the movement's angle: 6 and 4 degrees combined


@pytest.mark.slow
def test_raw_folder_with_bad_subjects_prepares_the_good_one_and_one_line_for_each_other(tmp_path, fake_extractor):
    from MRISynthesisLib.io import load_volume
    from Training.data.discovery import discover_subjects
    from Training.prepare_pairs import main, prepare_pairs

    raw, out = tmp_path / "raw", tmp_path / "out"
    t1 = t1_phantom()
    folders = {"good": t2_phantom(), "missing": None, "flat": "2d", "broken": "garbage",
               "far": t2_phantom(origin=(420.0, -98.0, -70.0)),          # no overlap: registration cannot run
               "other": t2_phantom(movement=np.eye(4), scale=0.6)}       # another, smaller head
    for name, t2 in folders.items():
        (raw / name).mkdir(parents=True)
        _save(t1, raw / name / f"{name}_T1w.nii.gz")
        if isinstance(t2, Volume):
            _save(t2, raw / name / f"{name}_T2w.nii.gz")
        elif t2 == "2d":
            import nibabel as nib

            nib.save(nib.Nifti1Image(t1.array[:, :, 20], t1.affine), str(raw / name / f"{name}_T2w.nii.gz"))
        elif t2 == "garbage":
            (raw / name / f"{name}_T2w.nii.gz").write_bytes(b"not a nifti file")
    before = {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()}

    lines = []
    results = prepare_pairs(raw, out, threads=2, report=lines.append)
    status = {r.subject: r.status for r in results}
    assert status == {"broken": "failed", "far": "failed", "flat": "failed", "good": "prepared",
                      "missing": "failed", "other": "refused"}, lines
    assert len(lines) == 6 and all("\n" not in line for line in lines)
    reasons = {r.subject: r.reason for r in results}
    assert reasons["missing"].startswith("no T2 file recognised among: missing_T1w.nii.gz")
    assert "expected a 3D volume" in reasons["flat"] and "cannot read" in reasons["broken"]
    assert reasons["far"].startswith("registration failed: ")
    assert reasons["other"].startswith("registration check failed: ")

    # Only the good subject is a folder; the refused one left its QC report; nothing temporary.
    assert sorted(p.name for p in out.iterdir()) == ["good", "other.refused.json", "other.refused.png"]
    assert sorted(p.name for p in (out / "good").iterdir()) == ["brain_mask.nii.gz", "qc.json", "qc.png", "t1.nii.gz",
                                                                "t2.nii.gz"]
    subject, = discover_subjects(out).subjects
    assert subject.id == "good" and subject.mask is not None
    pair = [load_volume(p) for p in (subject.t1, subject.t2, subject.mask)]
    assert all(v.same_geometry(pair[0]) for v in pair)
    # The registered T2 shows the T1's anatomy where it should: its ventricles (bright in T2) on the T1's.
    expected = phantom(1, t1.shape, (3.0, 3.0, 3.0), (-82.0, -101.0, -65.0)).array * (pair[2].array > 0)
    assert np.corrcoef(pair[1].array.ravel(), expected.ravel())[0, 1] > 0.95
    assert {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()} == before  # inputs untouched

    # A second run leaves a prepared subject alone; the exit status says whether all are ready.
    import shutil

    again = tmp_path / "again"
    for name in ("good", "missing"):
        shutil.copytree(raw / name, again / name)
    written = (out / "good" / "t2.nii.gz").stat().st_mtime_ns
    assert main([str(again), str(out)]) == 1
    assert (out / "good" / "t2.nii.gz").stat().st_mtime_ns == written
    shutil.rmtree(again / "missing")
    assert main([str(again), str(out)]) == 0


def test_bad_command_is_one_line_and_writes_nothing(tmp_path, capsys):
    from Training.prepare_pairs import main

    raw = tmp_path / "raw"
    (raw / "subject").mkdir(parents=True)
    assert main([str(tmp_path / "absent"), str(tmp_path / "out")]) == 2
    assert main([str(raw), str(raw / "pairs")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in err] == ["error"] * 3
    assert "raw data folder not found" in err[0] and "must not be inside the raw data folder" in err[1]
    assert "no subject folders" in err[2]
    assert not (tmp_path / "out").exists() and not (raw / "pairs").exists()
