"""Adding a trained checkpoint to the catalog: shipped copy, SHA-256, default flag, resolvable."""

import json

import numpy as np
import torch
from phantoms import affine_for, head_phantom

from MRISynthesisLib.catalog import list_models, resolve_model
from MRISynthesisLib.checkpoint import ModelMetadata, read_metadata, save_checkpoint
from MRISynthesisLib.models import build_model, default_config
from MRISynthesisLib.synthesis import Synthesizer
from MRISynthesisLib.volume import Volume
from Training.export import export


def _checkpoint(tmp_path, direction="t1-to-t2"):
    torch.manual_seed(0)
    config = dict(default_config("unet_128"), ngf=4, dropout=False)
    model = build_model("unet_128", **config)
    return save_checkpoint(tmp_path / f"run-{direction}.safetensors", model, ModelMetadata(
        architecture="unet_128", config=config, direction=direction, slice_size=128, pixel_spacing_mm=2.0))


def test_export_writes_catalog_entry_and_half_weights(tmp_path):
    resources = tmp_path / "Resources"
    resources.mkdir()
    run = _checkpoint(tmp_path)
    entry = export(run, "test-t1t2", "Test T1->T2", half=True, default=True, card="Models/test-t1t2.md",
                   resources=resources)
    shipped = resources / "Models" / "test-t1t2.safetensors"
    assert entry["file"] == "Models/test-t1t2.safetensors" and shipped.is_file()
    assert shipped.stat().st_size < run.stat().st_size * 0.6
    metadata = read_metadata(shipped)
    assert metadata.model_id == "test-t1t2" and metadata.weights_dtype == "float16"
    assert resolve_model(None, "t1-to-t2", resources) == shipped  # sha256 verified on the way
    volume = Volume(head_phantom((30, 34, 10)), affine_for("LPS", spacing=(2, 2, 2)))
    full = Synthesizer(run, device="cpu").synthesize(volume).array
    half = Synthesizer(shipped, device="cpu").synthesize(volume).array
    assert np.abs(full - half).max() < 0.02

    # A second model of the same direction made default takes the flag over; the first stays listed.
    export(_checkpoint(tmp_path / "b" if (tmp_path / "b").mkdir() is None else tmp_path), "test-two", "Two",
           default=True, resources=resources)
    entries = {e.id: e for e in list_models("t1-to-t2", resources)}
    assert entries["test-two"].default and not entries["test-t1t2"].default
    assert json.loads((resources / "Models.json").read_text())["models"][0]["id"] == "test-two"


def test_export_accepts_a_trusted_format_1_run_and_writes_the_current_format(tmp_path):
    from test_checkpoint import _as_format_1

    from MRISynthesisLib.checkpoint import FORMAT_VERSION
    from Training.export import main

    run = _as_format_1(_checkpoint(tmp_path), tmp_path / "old-run.safetensors")
    upgraded = tmp_path / "upgraded.safetensors"
    assert main([str(run), "--upgrade-to", str(upgraded)]) == 0
    assert read_metadata(upgraded).format_version == FORMAT_VERSION
    resources = tmp_path / "Resources"
    resources.mkdir()
    export(run, "legacy", "Legacy", resources=resources)
    assert read_metadata(resources / "Models" / "legacy.safetensors").format_version == FORMAT_VERSION


def _digests(folder):
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_export_synthesize_with_a_catalog_of_ones_own(tmp_path, monkeypatch, capsys):
    """``python -m Training.export CKPT --id X --half`` puts the model in the user's own catalog (never
    the checkout's Resources), and ``synthesize --model X`` and ``models`` find it there."""
    import nibabel as nib

    from MRISynthesisLib.catalog import resources_dir, user_models_dir
    from MRISynthesisLib.cli import main as cli_main
    from Training.export import main

    user = tmp_path / "my-models"
    monkeypatch.setenv("MRISYNTHESIS_USER_MODELS", str(user))
    assert user_models_dir() == user
    shipped_before = _digests(resources_dir())
    run = _checkpoint(tmp_path)
    assert main([str(run), "--id", "my-t1t2", "--half"]) == 0
    assert "my-t1t2" in capsys.readouterr().out
    assert _digests(resources_dir()) == shipped_before  # our catalog and weights untouched
    assert (user / "Models" / "my-t1t2.safetensors").is_file()
    entry = {e.id: e for e in list_models("t1-to-t2")}["my-t1t2"]
    assert entry.title == "my-t1t2" and not entry.default
    assert resolve_model("my-t1t2") == user / "Models" / "my-t1t2.safetensors"
    assert resolve_model(None, "t1-to-t2") != entry.path()  # the shipped default stays the default

    assert cli_main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "my-t1t2" in listing and "t1-to-t2-resunet-v4" in listing and str(user) in listing
    volume = Volume(head_phantom((30, 34, 10)), affine_for("LPS", spacing=(2, 2, 2)))
    nib.save(nib.Nifti1Image(volume.array, volume.affine), str(tmp_path / "t1.nii.gz"))
    assert cli_main(["synthesize", str(tmp_path / "t1.nii.gz"), "-o", str(tmp_path / "t2.nii.gz"),
                     "--model", "my-t1t2", "--brain-mask", "none"]) == 0
    assert read_metadata(resolve_model("my-t1t2")).model_id == "my-t1t2"
    assert nib.load(str(tmp_path / "t2.nii.gz")).shape == (30, 34, 10)


def test_export_refuses_the_id_of_a_shipped_model(tmp_path, monkeypatch, capsys):
    from Training.export import main

    monkeypatch.setenv("MRISYNTHESIS_USER_MODELS", str(tmp_path / "user"))
    assert main([str(_checkpoint(tmp_path)), "--id", "t1-to-t2-resunet-v4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "t1-to-t2-resunet-v4" in err[0] and "shipped" in err[0], err
    assert not (tmp_path / "user").exists()
