"""Shared fixtures of the training tests: a tiny real-data subset and small-model configurations.

Real data is read from ``<repo>/../shared/data/paired`` (never copied into the repository); the
tests that need it skip with the reason when it is absent.
"""

import csv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PAIRED = REPO.parent / "shared" / "data" / "paired"
#: Two small subjects (256x256x46) of one source: one trains, one validates.
SUBJECTS = ("CBICA-301D00252", "CBICA-301D00262")


@pytest.fixture(scope="session")
def manifest(tmp_path_factory):
    """CSV manifest of two real subjects (paths into ../shared/data, nothing copied)."""
    if not PAIRED.is_dir():
        pytest.skip(f"real data not found at {PAIRED} (the shared data folder is absent)")
    from Training.data import discover_subjects

    found = {s.id: s for s in discover_subjects(PAIRED).subjects}
    missing = [s for s in SUBJECTS if s not in found]
    if missing:
        pytest.skip(f"subjects {missing} not found in {PAIRED}")
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
        "data.cache_dir": str(cache_root / f"s{slice_size}"),
        "train.epochs": 2, "train.steps_per_epoch": 4, "train.log_every": 1, "train.checkpoint_every": 0,
        "optim.lr": 1e-3, "optim.lr_policy": "constant", "validation.batch_size": 16,
        "model.discriminator_options": "{ndf: 8, n_layers: 2}",
    }
    overrides.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in overrides.items()]
