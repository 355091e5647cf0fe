"""Every model family trains on two phantom subjects (always) and on a tiny real-data subset (when
../shared exists): its loss goes down over 8 optimisation steps, and its exported checkpoints load in
the core Synthesizer and synthesise a whole volume of the input's shape."""

import json

import numpy as np
import pytest

from MRISynthesisLib.checkpoint import read_metadata
from MRISynthesisLib.io import load_volume
from MRISynthesisLib.synthesis import Synthesizer
from Training.config import load_config
from Training.train import train

# family -> (extra overrides, slice size, the loss that must go down)
FAMILIES = {
    "supervised": ({"model__generator": "resnet_6blocks", "model__generator_options": "{ngf: 8}"}, 64, "loss_l1"),
    "baseline": ({"optim__lr": 0.02}, 64, "loss_l1"),
    "pix2pix": ({"model__generator": "unet_128", "model__generator_options": "{ngf: 8}"}, 128, "g_l1"),
    "cyclegan": ({"model__generator": "resnet_6blocks", "model__generator_options": "{ngf: 8}",
                  "loss__supervised": "true", "model__spectral_norm": "true"}, 64, "g_cycle"),
    "vae": ({"model__generator_options": "{nf: 8, latent_dim: 32}"}, 64, "g_mse"),
    "unit": ({"model__generator_options": "{ngf: 8, n_res: 1}", "loss__unit_preset": "munit-master"}, 64,
             "g_recon"),
}


def _records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_trains_and_exports_a_usable_checkpoint(family, training_data, cache_root, tmp_path, tiny_overrides):
    manifest = training_data
    extra, size, loss_name = FAMILIES[family]
    config = load_config(None, tiny_overrides(manifest, cache_root, tmp_path, family, name=family,
                                              slice_size=size, **extra))
    summary = train(config, log=lambda *a: None)
    run_dir = tmp_path / family

    losses = [r[loss_name] for r in _records(run_dir, "train")]
    assert len(losses) == 8
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses

    val = _records(run_dir, "val")
    assert [r["epoch"] for r in val] == [1, 2]
    assert all(0 <= r["mae"] <= 1 and -1 <= r["ssim"] <= 1 for r in val), val  # SSIM may be < 0 early
    for name in ("config.yaml", "split.json", "train_state.pt", "metrics.csv", "report.md", "curves.png",
                 "images/epoch_002.png"):
        assert (run_dir / name).is_file(), name

    best = run_dir / "checkpoints" / "best-t1-to-t2.safetensors"
    assert (run_dir / "checkpoints" / "last-t1-to-t2.safetensors").is_file()
    metadata = read_metadata(best)
    assert metadata.training_data["train_subjects"] == 1 and metadata.training_data["train_slices"] > 0
    assert metadata.validation_metrics["mae"] == pytest.approx(summary["best"]["mae"])
    assert "conventions" in metadata.validation_metrics

    volume = load_volume(config_subject_t1(manifest))
    synthetic = Synthesizer(best, device="cpu").synthesize(volume)
    assert synthetic.shape == volume.shape and np.array_equal(synthetic.affine, volume.affine)
    assert np.isfinite(synthetic.array).all() and synthetic.array.max() > 0

    if family in ("cyclegan", "unit"):  # both directions are exported
        reverse = Synthesizer(run_dir / "checkpoints" / "last-t2-to-t1.safetensors", device="cpu")
        assert reverse.metadata.direction == "t2-to-t1"
        assert reverse.synthesize(volume).shape == volume.shape


def config_subject_t1(manifest):
    import csv

    with open(manifest) as stream:
        return next(csv.DictReader(stream))["t1"]


def test_cyclegan_trains_unpaired_from_two_independent_folders(training_data, tmp_path, tiny_overrides):
    """Unpaired mode: T1 volumes of one subject and T2 volumes of another, in two folders."""
    manifest = training_data
    import csv

    with open(manifest) as stream:
        rows = list(csv.DictReader(stream))
    t1_dir, t2_dir = tmp_path / "t1", tmp_path / "t2"
    t1_dir.mkdir()
    t2_dir.mkdir()
    (t1_dir / "a.nii.gz").symlink_to(rows[0]["t1"])  # subject A's T1 only ...
    (t2_dir / "b.nii.gz").symlink_to(rows[1]["t2"])  # ... and subject B's T2 only: nothing paired
    extra, size, _ = FAMILIES["cyclegan"]
    extra = {k: v for k, v in extra.items() if k != "loss__supervised"}  # supervised needs pairs
    overrides = tiny_overrides(manifest, tmp_path / "cache", tmp_path, "cyclegan", name="unpaired",
                               slice_size=size, **extra)
    overrides += ["data.mode=unpaired", f"data.t1_dir={t1_dir}", f"data.t2_dir={t2_dir}",
                  "data.manifest=''", "data.root=''"]
    config = load_config(None, overrides)
    train(config, log=lambda *a: None)
    run_dir = tmp_path / "unpaired"
    split = json.loads((run_dir / "split.json").read_text())
    assert sorted(split["train"]) == ["a.nii.gz", "b.nii.gz"] and split["val"] == []
    losses = [r["g_cycle"] for r in _records(run_dir, "train")]
    assert len(losses) == 8 and all(np.isfinite(losses))
    volume = load_volume(rows[0]["t1"])
    for direction in ("t1-to-t2", "t2-to-t1"):
        synthetic = Synthesizer(run_dir / "checkpoints" / f"last-{direction}.safetensors", device="cpu")
        assert synthetic.synthesize(volume).shape == volume.shape
