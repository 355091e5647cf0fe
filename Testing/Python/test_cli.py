"""The command line end to end, and every bad input giving one clear line, non-zero exit, no output."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
from phantoms import affine_for, head_phantom

from MRISynthesisLib.cli import main
from MRISynthesisLib.io import load_volume


def _write(path, array, affine=None, dtype=None):
    image = nib.Nifti1Image(array if dtype is None else array.astype(dtype), affine if affine is not None else affine_for("LPS"))
    nib.save(image, str(path))
    return path


@pytest.fixture
def t1(tmp_path):
    return _write(tmp_path / "t1.nii.gz", head_phantom((30, 34, 20)), affine_for("RAS", spacing=(0.9, 0.9, 5.5)))


def _fails(capsys, argv, pattern, tmp_path):
    before = sorted(os.listdir(tmp_path))
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert pattern in lines[0], lines[0]
    assert sorted(os.listdir(tmp_path)) == before  # nothing written
    return lines[0]


def test_synthesize_end_to_end_keeps_geometry(tmp_path, t1, tiny_checkpoint, capsys):
    out = tmp_path / "out" / "t2.nii.gz"
    out.parent.mkdir()
    before = t1.read_bytes()
    preview = tmp_path / "out" / "preview.png"
    code = main(["synthesize", str(t1), "-o", str(out), "--model", str(tiny_checkpoint), "--quiet",
                 "--preview", str(preview)])
    assert code == 0, capsys.readouterr().err
    assert t1.read_bytes() == before
    source, result = load_volume(t1), load_volume(out)
    assert result.shape == source.shape and np.array_equal(result.affine, source.affine)
    assert nib.load(str(out)).get_data_dtype() == np.float32
    from skimage.io import imread

    picture = imread(preview)
    half = picture.shape[1] // 2
    assert picture.ndim == 2 and picture[:, :half].max() > 0 and picture[:, half:].max() > 0
    assert "not for diagnosis" in capsys.readouterr().err


def test_evaluate_prints_table_and_json(tmp_path, capsys):
    ref = head_phantom((30, 34, 20))
    pred = ref * 0.9 + 3.0 * (ref > 0)
    ref_path, pred_path = _write(tmp_path / "ref.nii", ref), _write(tmp_path / "pred.nii", pred)
    code = main(["evaluate", "--pred", str(pred_path), "--ref", str(ref_path), "--json", str(tmp_path / "m.json")])
    out = capsys.readouterr().out
    assert code == 0
    for word in ("MAE", "PSNR", "SSIM", "percentile"):
        assert word.lower() in out.lower()
    data = json.loads((tmp_path / "m.json").read_text())
    assert 0 < data["ssim"] <= 1 and data["conventions"]["data_range"] == 1.0


def test_models_lists_catalog(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "t1-to-t2-resunet-v4" in text and "retired (naming one says what replaces it): t1-to-t2-resunet-v3" in text
    assert main(["models", "--direction", "t2-to-t1"]) == 0
    assert "retired" not in capsys.readouterr().out  # none of that direction was retired
    assert main(["models", "--json"]) == 0


def test_help_everywhere(capsys):
    for argv in (["--help"], ["synthesize", "--help"], ["evaluate", "--help"], ["models", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "usage: mrisynthesis" in text
        if argv[0] in ("--help", "synthesize"):
            assert "not for diagnosis" in text


def test_output_equal_to_input_is_refused(tmp_path, t1, tiny_checkpoint, capsys):
    before = t1.read_bytes()
    _fails(capsys, ["synthesize", str(t1), "-o", str(t1), "--model", str(tiny_checkpoint)], "is the input", tmp_path)
    assert t1.read_bytes() == before


def test_2d_image_is_refused(tmp_path, tiny_checkpoint, capsys):
    path = _write(tmp_path / "flat.nii", np.ones((20, 20), np.float32), np.eye(4))
    _fails(capsys, ["synthesize", str(path), "-o", str(tmp_path / "o.nii"), "--model", str(tiny_checkpoint)],
           "expected a 3D volume", tmp_path)


def test_multicomponent_4d_image_is_refused(tmp_path, tiny_checkpoint, capsys):
    path = _write(tmp_path / "4d.nii", np.ones((20, 20, 5, 3), np.float32), np.eye(4))
    _fails(capsys, ["synthesize", str(path), "-o", str(tmp_path / "o.nii"), "--model", str(tiny_checkpoint)],
           "several", tmp_path)


def test_4d_with_singleton_time_axis_is_a_3d_volume(tmp_path, tiny_checkpoint, capsys):
    path = _write(tmp_path / "s.nii.gz", head_phantom((30, 34, 6))[..., None])
    assert main(["synthesize", str(path), "-o", str(tmp_path / "o.nii.gz"), "--model", str(tiny_checkpoint),
                 "--quiet"]) == 0
    assert load_volume(tmp_path / "o.nii.gz").shape == (30, 34, 6)


@pytest.mark.parametrize("array,pattern", [
    (np.zeros((20, 20, 5), np.float32), "no foreground"),
    (np.full((20, 20, 5), 5.0, np.float32), "constant"),
    (np.where(head_phantom((20, 20, 5)) > 0, np.nan, 0).astype(np.float32), "NaN"),
    (np.full((20, 20, 5), np.inf, np.float32), "NaN or infinite"),
    (head_phantom((6, 6, 6)), "at least"),
])
def test_bad_voxel_values_are_refused(tmp_path, tiny_checkpoint, capsys, array, pattern):
    path = _write(tmp_path / "bad.nii", array)
    _fails(capsys, ["synthesize", str(path), "-o", str(tmp_path / "o.nii"), "--model", str(tiny_checkpoint)],
           pattern, tmp_path)


def test_integer_overflow_range_is_refused(tmp_path, tiny_checkpoint, capsys):
    array = np.full((20, 20, 5), 2 ** 62, dtype=np.int64)
    array[0, 0, 0] = -(2 ** 62)
    image = nib.Nifti1Image(array, np.eye(4), dtype=np.int64)
    image.header.set_slope_inter(1e30, 0)  # scaled beyond float32
    nib.save(image, str(tmp_path / "huge.nii"))
    _fails(capsys, ["synthesize", str(tmp_path / "huge.nii"), "-o", str(tmp_path / "o.nii"),
                    "--model", str(tiny_checkpoint)], "float32", tmp_path)


def test_wrong_file_type_and_unreadable_file_are_refused(tmp_path, tiny_checkpoint, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    _fails(capsys, ["synthesize", str(text), "-o", str(tmp_path / "o.nii"), "--model", str(tiny_checkpoint)],
           "unsupported file type", tmp_path)
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(b"not a nifti file at all")
    _fails(capsys, ["synthesize", str(fake), "-o", str(tmp_path / "o.nii"), "--model", str(tiny_checkpoint)],
           "cannot read", tmp_path)
    _fails(capsys, ["synthesize", str(tmp_path / "absent.nii"), "-o", str(tmp_path / "o.nii"),
                    "--model", str(tiny_checkpoint)], "not found", tmp_path)


def test_unwritable_output_is_refused(tmp_path, t1, tiny_checkpoint, capsys):
    _fails(capsys, ["synthesize", str(t1), "-o", str(tmp_path / "missing" / "o.nii"), "--model",
                    str(tiny_checkpoint)], "does not exist", tmp_path)
    _fails(capsys, ["synthesize", str(t1), "-o", str(tmp_path / "o.png"), "--model", str(tiny_checkpoint)],
           "must end in .nii", tmp_path)
    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _fails(capsys, ["synthesize", str(t1), "-o", str(locked / "o.nii"), "--model", str(tiny_checkpoint)],
               "not writable", tmp_path)


def test_wrong_direction_and_unknown_model_are_refused(tmp_path, t1, tiny_checkpoint, capsys):
    _fails(capsys, ["synthesize", str(t1), "-o", str(tmp_path / "o.nii"), "--model", str(tiny_checkpoint),
                    "--direction", "t2-to-t1"], "but t2-to-t1 was requested", tmp_path)
    _fails(capsys, ["synthesize", str(t1), "-o", str(tmp_path / "o.nii"), "--model", "no-such-model"],
           "unknown model", tmp_path)


def test_a_retired_model_is_refused_with_its_replacement_and_how_to_restore_it(tmp_path, t1, capsys):
    """The T1 -> T2 models retired on 2026-12-04: one line naming the replacement, the reason and the
    commit that still holds the file; nothing written. The shipped catalog's retired list is valid."""
    from MRISynthesisLib import catalog

    retired = catalog.retired_models()
    shipped = {entry.id: entry for entry in catalog.list_models()}
    assert {entry.id for entry in retired} == {"t1-to-t2-resunet-v3", "t1-to-t2-resunet-v2", "t1-to-t2-unet-l1-v1"}
    for entry in retired:
        assert entry.id not in shipped and entry.id.startswith(shipped[entry.replaced_by].direction)
        assert not (catalog.resources_dir() / "Models" / f"{entry.id}.safetensors").exists()
        assert len(entry.commit) >= 7 and entry.reason
    _fails(capsys, ["synthesize", str(t1), "-o", str(tmp_path / "o.nii"), "--model", "t1-to-t2-resunet-v3"],
           "model 't1-to-t2-resunet-v3' was retired on 2026-12-04", tmp_path)
    from MRISynthesisLib.errors import InputError

    with pytest.raises(InputError, match=r"use 't1-to-t2-resunet-v4'.*git show [0-9a-f]+:Resources/Models/"
                                         r"t1-to-t2-unet-l1-v1\.safetensors"):
        catalog.resolve_model("t1-to-t2-unet-l1-v1")


@pytest.mark.parametrize("retired,pattern", [
    ('{"a": 1}', "'retired' is not a list"),
    ('[{"id": "x"}]', "retired entry 1 needs the text fields"),
])
def test_a_malformed_retired_list_is_one_clear_error(tmp_path, monkeypatch, retired, pattern):
    from MRISynthesisLib import catalog
    from MRISynthesisLib.errors import CheckpointError

    (tmp_path / "Models.json").write_text('{"models": [], "retired": %s}' % retired)
    with pytest.raises(CheckpointError, match=pattern):
        catalog.resolve_model("x", resources=tmp_path)


def test_corrupt_checkpoint_is_refused(tmp_path, t1, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}garbage")
    _fails(capsys, ["synthesize", str(t1), "-o", str(tmp_path / "o.nii"), "--model", str(bad)], "", tmp_path)


def test_missing_preview_folder_is_refused_before_anything_is_written(tmp_path, t1, tiny_checkpoint, capsys):
    _fails(capsys, ["synthesize", str(t1), "-o", str(tmp_path / "o.nii.gz"), "--model", str(tiny_checkpoint),
                    "--preview", str(tmp_path / "nodir" / "p.png")], "does not exist", tmp_path)


def test_output_and_uncertainty_must_differ(tmp_path, t1, tiny_checkpoint, capsys):
    out = str(tmp_path / "o.nii.gz")
    _fails(capsys, ["synthesize", str(t1), "-o", out, "--model", str(tiny_checkpoint), "--uncertainty", out],
           "different files", tmp_path)


def test_evaluate_refuses_bad_json_path_and_other_grids(tmp_path, capsys):
    ref = head_phantom((30, 34, 20))
    ref_path, pred_path = _write(tmp_path / "ref.nii", ref), _write(tmp_path / "pred.nii", ref)
    (tmp_path / "adir.json").mkdir()
    _fails(capsys, ["evaluate", "--pred", str(pred_path), "--ref", str(ref_path), "--json", str(tmp_path / "adir.json")],
           "is a folder", tmp_path)
    shifted = affine_for("LPS")
    shifted[:3, 3] += 5.0
    other = _write(tmp_path / "other.nii", ref, shifted)
    _fails(capsys, ["evaluate", "--pred", str(other), "--ref", str(ref_path)], "voxel-to-world", tmp_path)


def test_usage_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["synthesize", "in.nii"])  # -o missing
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--output" in err[0]


def test_outputs_get_normal_file_permissions(tmp_path, t1, tiny_checkpoint):
    out = tmp_path / "o.nii.gz"
    assert main(["synthesize", str(t1), "-o", str(out), "--model", str(tiny_checkpoint), "--quiet"]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
