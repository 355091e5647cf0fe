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
