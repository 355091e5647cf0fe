"""Every error a user can cause gives one clear line on stderr and a non-zero exit status.

The image files here are generated noise (nothing from the real data)."""

import nibabel as nib
import numpy as np
import pytest

from Training.cli import main


def _nifti(path, shape=(24, 24, 12), affine=None):
    rng = np.random.default_rng(0)
    data = rng.uniform(1, 100, size=shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))


def _subject(root, name, t2_shape=(24, 24, 12)):
    folder = root / name
    folder.mkdir(parents=True)
    _nifti(folder / f"{name}_T1w.nii.gz")
    _nifti(folder / f"{name}_T2w.nii.gz", shape=t2_shape)
    return folder


def _run(capsys, tmp_path, *overrides):
    code = main([f"output_dir={tmp_path / 'runs'}", "device=cpu", "family=baseline", *overrides])
    return code, capsys.readouterr().err


def test_missing_data_folder(capsys, tmp_path):
    code, err = _run(capsys, tmp_path, f"data.root={tmp_path / 'nowhere'}", "name=first")
    assert code == 2 and "nowhere" in err and err.startswith("error:")
    # a run that could not start leaves no folder behind, so the same name works after the fix
    assert not (tmp_path / "runs" / "first").exists()


def test_failed_resume_leaves_the_run_config_unchanged(capsys, tmp_path):
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: old\nfamily: baseline\n")
    code, err = main(["--resume", str(run), "family=vae", f"data.root={tmp_path / 'nowhere'}"]), capsys.readouterr().err
    assert code == 2 and err.startswith("error:")
    assert (run / "config.yaml").read_text() == "name: old\nfamily: baseline\n"


def test_data_folder_that_is_a_file(capsys, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    code, err = _run(capsys, tmp_path, f"data.root={tmp_path / 'file.txt'}")
    assert code == 2 and "file.txt" in err


def test_no_pairs_found(capsys, tmp_path):
    (tmp_path / "data" / "empty-subject").mkdir(parents=True)
    code, err = _run(capsys, tmp_path, f"data.root={tmp_path / 'data'}")
    assert code == 2 and "no T1/T2 pairs" in err


def test_mismatched_grids(capsys, tmp_path):
    for name in ("sub-01", "sub-02", "sub-03"):
        _subject(tmp_path / "data", name, t2_shape=(24, 24, 10) if name == "sub-02" else (24, 24, 12))
    code, err = _run(capsys, tmp_path, f"data.root={tmp_path / 'data'}")
    assert code == 2 and "sub-02" in err and "shape" in err


def test_too_few_subjects_for_the_split(capsys, tmp_path):
    _subject(tmp_path / "data", "sub-01")
    code, err = _run(capsys, tmp_path, f"data.root={tmp_path / 'data'}")
    assert code == 2 and "too few" in err


def test_non_writable_output_folder(capsys, tmp_path):
    (tmp_path / "a-file").write_text("x")
    code = main([f"output_dir={tmp_path / 'a-file' / 'runs'}", "family=baseline"])
    err = capsys.readouterr().err
    assert code == 2 and "not writable" in err


def test_existing_run_folder_needs_resume_or_a_new_name(capsys, tmp_path):
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    code, err = _run(capsys, tmp_path, "name=taken")
    assert code == 2 and "already exists" in err and "--resume" in err


def test_unknown_family_and_config_file_errors(capsys, tmp_path):
    code, err = _run(capsys, tmp_path, "family=gan9000")
    assert code == 2 and "gan9000" in err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_fp16_on_cpu_is_refused(capsys, tmp_path):
    for name in ("sub-01", "sub-02"):
        _subject(tmp_path / "data", name)
    code, err = _run(capsys, tmp_path, f"data.root={tmp_path / 'data'}", "data.split=[0.5,0.5,0]",
                     "train.precision=fp16", "data.slice_size=16", "data.min_foreground=0.0")
    assert code == 2 and "fp16" in err
