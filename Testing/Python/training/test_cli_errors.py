"""Every error a user can cause gives one clear line on stderr and a non-zero exit status.

The image files here are generated noise (nothing from the real data)."""

import nibabel as nib
import numpy as np
import pytest

from Training.cli import main


def _nifti(path, shape=(24, 24, 12), affine=None, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.uniform(1, 100, size=shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))


def _subject(root, name, t2_shape=(24, 24, 12)):
    folder = root / name
    folder.mkdir(parents=True)
    _nifti(folder / f"{name}_T1w.nii.gz")
    _nifti(folder / f"{name}_T2w.nii.gz", shape=t2_shape, seed=1)
    return folder


def _run(capsys, tmp_path, *overrides):
    code = main([f"output_dir={tmp_path / 'runs'}", "device=cpu", "family=baseline", *overrides])
    return code, capsys.readouterr().err


def test_no_data_folder_given_says_how_to_give_one(capsys, tmp_path):
    """There is no default data folder (a product default must not point into a developer's folder)."""
    code, err = _run(capsys, tmp_path, "name=first")
    assert code == 2 and err.startswith("error: data folder not found: (empty)") and "--data DIR" in err
    assert err.count("\n") == 1 and not (tmp_path / "runs").exists()


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
    code = main([f"output_dir={tmp_path / 'a-file' / 'runs'}", "family=baseline", f"data.root={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "not writable" in err


def test_existing_run_folder_needs_resume_or_a_new_name(capsys, tmp_path):
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    code, err = _run(capsys, tmp_path, "name=taken", f"data.root={tmp_path}")
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


def _options(tmp_path):
    return [f"data.root={tmp_path / 'data'}", "data.split=[0.5,0.5,0]", "data.slice_size=16",
            "data.min_foreground=0.0", "train.epochs=1", "train.steps_per_epoch=2", "data.batch_size=2"]


def _two_subjects(tmp_path):
    for name in ("sub-01", "sub-02"):
        _subject(tmp_path / "data", name)
    return _options(tmp_path)


@pytest.mark.parametrize("overrides,pattern", [
    (["seed=-1"], "seed must be"),
    (["data.split_seed=-3"], "data.split_seed must be"),
    (["family=supervised", "model.generator=unet_256", "data.slice_size=64"], "unet_256 expects"),
])
def test_a_run_that_fails_at_its_first_step_leaves_no_folder(capsys, tmp_path, overrides, pattern):
    """Neither a new run ('already exists') nor --resume ('no resumable state') could use such a folder."""
    code, err = _run(capsys, tmp_path, *_two_subjects(tmp_path), "name=first", *overrides)
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # after the progress bars
    assert code == 2 and len(errors) == 1 and pattern in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()
    code, err = _run(capsys, tmp_path, *_options(tmp_path), "name=first")
    assert code == 0, err  # the same name works at once


def test_a_failed_resume_adds_nothing_to_the_run_folder(capsys, tmp_path):
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: old\nfamily: baseline\n")
    before = sorted(p.name for p in run.iterdir())
    for name in ("sub-01", "sub-02"):
        _subject(tmp_path / "data", name)
    code = main(["--resume", str(run), f"data.root={tmp_path / 'data'}", "data.split=[0.5,0.5,0]",
                 "data.slice_size=16", "data.min_foreground=0.0"])
    err = capsys.readouterr().err
    assert code == 2 and "no resumable state" in err, err
    assert sorted(p.name for p in run.iterdir()) == before  # no cache/, split.json, tensorboard/


def test_interrupted_run_names_its_folder(capsys, tmp_path, monkeypatch):
    import Training.cli as cli

    def interrupt(config, resume_dir=None):  # a run interrupted after it saved its state
        (tmp_path / "runs" / "mine").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupt)
    assert main([f"output_dir={tmp_path / 'runs'}", "name=mine", "family=baseline"]) == 130
    err = capsys.readouterr().err
    assert f"--resume {tmp_path / 'runs' / 'mine'}" in err and "<run folder>" not in err


@pytest.mark.parametrize("how", ["same path", "symlink", "copy"])
def test_manifest_whose_t1_and_t2_are_the_same_image_is_refused(capsys, tmp_path, how):
    import shutil

    rows = ["subject,t1,t2"]
    for name in ("sub-01", "sub-02"):
        folder = _subject(tmp_path / "data", name)
        t1, t2 = folder / f"{name}_T1w.nii.gz", folder / f"{name}_T2w.nii.gz"
        if name == "sub-02":
            t2.unlink()
            if how == "symlink":
                t2.symlink_to(t1)
            elif how == "copy":
                shutil.copyfile(t1, t2)
            else:
                t2 = t1
        rows.append(f"{name},{t1},{t2}")
    (tmp_path / "subjects.csv").write_text("\n".join(rows) + "\n")
    code, err = _run(capsys, tmp_path, f"data.manifest={tmp_path / 'subjects.csv'}", *_options(tmp_path)[1:])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "sub-02" in errors[0] and "the same image" in errors[0], err
    assert not (tmp_path / "runs").exists()
