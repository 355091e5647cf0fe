"""Shared fixtures of the training tests: two phantom subjects (made here), a tiny real-data subset,
and small-model configurations.

Real data is read from ``../shared/data/paired`` (the ``shared_data`` fixture; never copied into the
repository); the tests that need it skip with the reason when it is absent, and the ``training_data``
fixture runs a test on the phantoms always and on the real subset where it exists.
"""

import csv
from pathlib import Path

import pytest

#: Two small subjects (256x256x46) of one source: one trains, one validates.
SUBJECTS = ("CBICA-301D00252", "CBICA-301D00262")


@pytest.fixture(scope="session")
def manifest(tmp_path_factory, shared_data):
    """CSV manifest of two real subjects (paths into ../shared/data, nothing copied)."""
    from Training.data import discover_subjects

    paired = shared_data / "paired"
    found = {s.id: s for s in discover_subjects(paired).subjects}
    missing = [s for s in SUBJECTS if s not in found]
    if missing:
        pytest.skip(f"subjects {missing} not found in {paired}")
    path = tmp_path_factory.mktemp("manifest") / "subjects.csv"
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["subject", "t1", "t2", "mask"])
        for subject_id in SUBJECTS:
            s = found[subject_id]
            writer.writerow([s.id, s.t1, s.t2, s.mask or ""])
    return path


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("slice-cache")


@pytest.fixture
def tiny_overrides():
    """The function :func:`_tiny_overrides`."""
    return _tiny_overrides


def _tiny_overrides(manifest, cache_root, output_dir, family, name="run", slice_size=64, **extra):
    """Overrides for a few-step CPU run of ``family`` on the two-subject manifest."""
    overrides = {
        "name": name, "output_dir": str(output_dir), "family": family, "device": "cpu", "seed": 1,
        "data.manifest": str(manifest), "data.split": "[0.5,0.5,0.0]", "data.slice_size": slice_size,
        "data.max_slices_per_subject": 6, "data.batch_size": 2, "data.augment": "false",
        "data.cache_dir": str(cache_root / f"{Path(manifest).parent.name}-s{slice_size}"),
        "train.epochs": 2, "train.steps_per_epoch": 4, "train.log_every": 1, "train.checkpoint_every": 0,
        "optim.lr": 1e-3, "optim.lr_policy": "constant", "validation.batch_size": 16,
        "model.discriminator_options": "{ndf: 8, n_layers: 2}",
    }
    overrides.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in overrides.items()]


@pytest.fixture(scope="session")
def phantom_manifest(tmp_path_factory):
    """CSV manifest of two phantom subjects made here (:func:`phantoms.paired_phantom`): what the
    training tests run on when ../shared is absent (a fresh clone)."""
    import nibabel as nib
    from phantoms import affine_for, paired_phantom

    folder = tmp_path_factory.mktemp("phantom-subjects")
    path = folder / "subjects.csv"
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["subject", "t1", "t2"])
        for seed, subject_id in enumerate(("phantom-01", "phantom-02")):
            t1, t2 = paired_phantom(seed=seed)
            paths = [folder / f"{subject_id}_{contrast}.nii.gz" for contrast in ("T1w", "T2w")]
            for array, image_path in zip((t1, t2), paths):
                nib.save(nib.Nifti1Image(array, affine_for("RAS", spacing=(1.5, 1.5, 3.0))), str(image_path))
            writer.writerow([subject_id, *paths])
    return path


@pytest.fixture(params=["phantom", pytest.param("real", marks=[pytest.mark.realdata, pytest.mark.slow])])
def training_data(request):
    """The manifest of two subjects: phantoms (always) and the real subset (when ../shared exists)."""
    return request.getfixturevalue("phantom_manifest" if request.param == "phantom" else "manifest")
