"""NRRD (3D Slicer's native format) in and out: same voxels and the same RAS geometry as NIfTI."""

import os

import nibabel as nib
import numpy as np
import pytest
from phantoms import affine_for, head_phantom

from MRISynthesisLib.cli import main
from MRISynthesisLib.io import load_volume, save_volume
from MRISynthesisLib.volume import Volume

nrrd = pytest.importorskip("nrrd")


def _oblique_affine():
    """An anisotropic, oblique, LPS-ish matrix with many significant digits."""
    angle = np.deg2rad(17.3)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1, -1, 1]) @ rotation @ np.diag([0.9375, 0.9375, 3.3])
    affine[:3, 3] = [117.123456789, -98.7654321, 44.4444]
    return affine


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr"])
def test_nrrd_round_trip_matches_the_nifti_path(tmp_path, suffix):
    volume = Volume(head_phantom((20, 24, 12)), _oblique_affine())
    save_volume(volume, tmp_path / "v.nii.gz")
    save_volume(volume, tmp_path / f"v{suffix}")
    from_nifti, from_nrrd = load_volume(tmp_path / "v.nii.gz"), load_volume(tmp_path / f"v{suffix}")
    assert np.array_equal(from_nrrd.array, from_nifti.array)
    assert np.array_equal(from_nrrd.array, volume.array)
    # NIfTI stores the matrix as float32; NRRD keeps the full float64 text.
    np.testing.assert_allclose(from_nrrd.affine, volume.affine, rtol=0, atol=1e-12)
    np.testing.assert_allclose(from_nrrd.affine, from_nifti.affine, rtol=0, atol=1e-4)
    if suffix == ".nhdr":
        assert sorted(os.listdir(tmp_path)) == ["v.nhdr", "v.nii.gz", "v.raw.gz"]  # no temporary left


def test_written_nrrd_is_lps_as_slicer_writes_it(tmp_path):
    affine = affine_for("RAS", spacing=(0.9, 0.8, 5.5), origin=(10.0, -20.0, 30.0))
    save_volume(Volume(head_phantom((20, 24, 12)), affine), tmp_path / "v.nrrd")
    header = nrrd.read_header(str(tmp_path / "v.nrrd"))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_array_equal(header["space directions"], np.diag([-0.9, -0.8, 5.5]))
    np.testing.assert_array_equal(header["space origin"], [-10.0, 20.0, 30.0])


@pytest.mark.parametrize("space, signs", [("left-posterior-superior", (-1, -1, 1)), ("RAS", (1, 1, 1)),
                                          ("left-anterior-superior", (-1, 1, 1))])
def test_handwritten_header_in_any_patient_space_gives_the_ras_affine(tmp_path, space, signs):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6, order="F")
    header = ["NRRD0004", "type: short", "dimension: 3", f"space: {space}", "sizes: 4 5 6",
              "space directions: (0.9,0,0) (0,0,1.5) (0,2.5,0)", "kinds: domain domain domain",
              "endian: little", "encoding: raw", "space origin: (10,20,30)", "", ""]
    path = tmp_path / "hand.nrrd"
    path.write_bytes("\n".join(header).encode() + data.tobytes(order="F"))
    volume = load_volume(path)
    expected = np.eye(4)
    expected[:3, :3] = np.diag(signs) @ np.array([[0.9, 0, 0], [0, 0, 2.5], [0, 1.5, 0]])
    expected[:3, 3] = np.multiply(signs, [10, 20, 30])
    np.testing.assert_array_equal(volume.affine, expected)
    assert volume.array[1, 2, 3] == data[1, 2, 3] and volume.shape == (4, 5, 6)


def test_cli_synthesizes_nrrd_exactly_like_nifti(tmp_path, tiny_checkpoint, capsys):
    image = nib.Nifti1Image(head_phantom((30, 34, 20)), affine_for("LPS", spacing=(0.9, 0.9, 2.0)))
    nib.save(image, str(tmp_path / "t1.nii.gz"))
    save_volume(load_volume(tmp_path / "t1.nii.gz"), tmp_path / "t1.nrrd")
    model = ["--model", str(tiny_checkpoint), "--quiet"]
    assert main(["synthesize", str(tmp_path / "t1.nii.gz"), "-o", str(tmp_path / "a.nii.gz")] + model) == 0
    assert main(["synthesize", str(tmp_path / "t1.nrrd"), "-o", str(tmp_path / "b.nrrd")] + model) == 0
    assert main(["synthesize", str(tmp_path / "t1.nrrd"), "-o", str(tmp_path / "c.nhdr")] + model) == 0
    a, b, c = (load_volume(tmp_path / name) for name in ("a.nii.gz", "b.nrrd", "c.nhdr"))
    assert a.array.max() > 0
    assert np.array_equal(a.array, b.array) and np.array_equal(a.array, c.array)
    np.testing.assert_allclose(b.affine, a.affine, rtol=0, atol=1e-5)
    np.testing.assert_allclose(c.affine, a.affine, rtol=0, atol=1e-5)


def _one_line_error(capsys, argv, pattern, folder):
    before = sorted(os.listdir(folder))
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], lines
    assert sorted(os.listdir(folder)) == before


def test_nrrd_without_patient_space_or_with_vectors_is_refused(tmp_path, tiny_checkpoint, capsys):
    nrrd.write(str(tmp_path / "nospace.nrrd"), head_phantom((20, 20, 8)))
    nrrd.write(str(tmp_path / "vector.nrrd"), np.zeros((3, 20, 20, 8), np.float32),
               {"kinds": ["vector", "domain", "domain", "domain"], "space": "left-posterior-superior",
                "space directions": [[np.nan] * 3, [1, 0, 0], [0, 1, 0], [0, 0, 1]]})
    (tmp_path / "broken.nrrd").write_bytes(b"NRRD0004\ntype: float\n")
    (tmp_path / "huge.nrrd").write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4000 4000 4000\n"
                                         b"space: LPS\nencoding: raw\n\n")
    argv = ["-o", str(tmp_path / "o.nrrd"), "--model", str(tiny_checkpoint)]
    _one_line_error(capsys, ["synthesize", str(tmp_path / "nospace.nrrd")] + argv, "not a patient space", tmp_path)
    _one_line_error(capsys, ["synthesize", str(tmp_path / "vector.nrrd")] + argv, "multi-component", tmp_path)
    _one_line_error(capsys, ["synthesize", str(tmp_path / "broken.nrrd")] + argv, "cannot read", tmp_path)
    _one_line_error(capsys, ["synthesize", str(tmp_path / "huge.nrrd")] + argv, "more than the", tmp_path)
