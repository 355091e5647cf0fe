"""Hostile and unusual inputs found by an adversarial review (issue 9): each is refused with one
clear line before any large allocation, and no output (not even a temporary file) is left behind."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
from phantoms import affine_for, head_phantom

from MRISynthesisLib import io as volume_io
from MRISynthesisLib.cli import main
from MRISynthesisLib.errors import InputError
from MRISynthesisLib.io import load_volume


def _write(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, affine if affine is not None else affine_for("LPS")), str(path))
    return path


def _header_only(path, shape, dtype=np.uint8):
    """A .nii.gz whose header declares ``shape`` but which holds no voxel data at all."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4), code=1)
    raw = header.binaryblock + b"\0\0\0\0"
    path.write_bytes(gzip.compress(raw))
    return path


def _one_error_line(capsys, argv, pattern, folder):
    before = sorted(os.listdir(folder))
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert pattern in lines[0], lines[0]
    assert sorted(os.listdir(folder)) == before
    return lines[0]


# -- item 3: memory bomb ------------------------------------------------------------------------

def test_tiny_file_declaring_a_huge_volume_is_refused_before_reading(tmp_path, monkeypatch):
    bomb = _header_only(tmp_path / "bomb.nii.gz", (600, 600, 600))
    assert bomb.stat().st_size < 200

    def never(*args, **kwargs):
        raise AssertionError("voxel data was read")

    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", never)
    with pytest.raises(InputError, match=r"declares 600 x 600 x 600 voxels .* but the file is only \d+ bytes"):
        load_volume(bomb)


def test_volume_beyond_the_voxel_limit_is_refused(tmp_path, monkeypatch):
    path = _write(tmp_path / "big.nii.gz", head_phantom((30, 34, 20)))
    monkeypatch.setattr(volume_io, "MAX_VOXELS", 10_000)
    with pytest.raises(InputError, match=r"declares 30 x 34 x 20 = 20,400 voxels, more than the 10,000"):
        load_volume(path)


def test_truncated_uncompressed_file_is_refused(tmp_path):
    path = _write(tmp_path / "cut.nii", head_phantom((30, 34, 20)))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(InputError, match="truncated or its header is wrong"):
        load_volume(path)


def test_memory_bomb_through_the_command_line(tmp_path, tiny_checkpoint, capsys):
    bomb = _header_only(tmp_path / "bomb.nii.gz", (1200, 1200, 1200))
    _one_error_line(capsys, ["synthesize", str(bomb), "-o", str(tmp_path / "o.nii.gz"), "--model",
                             str(tiny_checkpoint), "--quiet"], "more than the", tmp_path)
