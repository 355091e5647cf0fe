"""Checkpoints describe themselves, load without pickle, and bad files are refused clearly."""

import json
import struct

import numpy as np
import pytest
import torch

from MRISynthesisLib.checkpoint import ModelMetadata, load_checkpoint, read_metadata, save_checkpoint
from MRISynthesisLib.errors import CheckpointError
from MRISynthesisLib.models import build_model, default_config


def _unet(tmp_path, **metadata):
    torch.manual_seed(3)
    config = dict(default_config("unet_128"), ngf=4)
    model = build_model("unet_128", **config).eval()
    meta = ModelMetadata(architecture="unet_128", config=config, direction="t2-to-t1", model_id="u",
                         slice_size=128, **metadata)
    return model, save_checkpoint(tmp_path / "u.safetensors", model, meta)


def test_save_load_gives_identical_outputs(tmp_path):
    model, path = _unet(tmp_path, validation_metrics={"psnr": 25.0})
    loaded, metadata = load_checkpoint(path)
    x = torch.rand(2, 1, 128, 128) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    assert metadata.direction == "t2-to-t1" and metadata.validation_metrics == {"psnr": 25.0}
    assert len(metadata.content_sha256) == 64 and metadata.software_version


def test_metadata_is_readable_without_weights(tmp_path):
    _, path = _unet(tmp_path)
    metadata = read_metadata(path)
    assert metadata.architecture == "unet_128" and metadata.config["ngf"] == 4
    assert "inferior->superior" in metadata.orientation


def test_half_precision_weights_load_as_float32_and_match_closely(tmp_path):
    torch.manual_seed(0)
    config = dict(default_config("unet_128"), ngf=4)
    model = build_model("unet_128", **config).eval()
    meta = ModelMetadata(architecture="unet_128", config=config, direction="t1-to-t2", slice_size=128)
    path = save_checkpoint(tmp_path / "h.safetensors", model, meta, half=True)
    loaded, metadata = load_checkpoint(path)
    assert metadata.weights_dtype == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 1, 128, 128) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=2e-2)


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    _, path = _unet(tmp_path)
    data = path.read_bytes()
    broken = tmp_path / "truncated.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        load_checkpoint(broken)


def test_altered_weights_are_refused_by_the_content_hash(tmp_path):
    _, path = _unet(tmp_path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="content hash"):
        load_checkpoint(path)


def test_garbage_and_missing_files_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.safetensors")


def _rewrite_metadata(path, target, change):
    """Copy ``path`` to ``target`` with its JSON metadata edited by ``change`` (header surgery)."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    meta = json.loads(header["__metadata__"]["mrisynthesis"])
    change(meta)
    header["__metadata__"]["mrisynthesis"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    target.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])
    return target


def test_mismatched_architecture_is_refused(tmp_path):
    _, path = _unet(tmp_path)
    wrong = _rewrite_metadata(path, tmp_path / "wrong.safetensors", lambda m: m["config"].update(ngf=8))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(wrong)


def test_unknown_architecture_and_direction_are_refused(tmp_path):
    _, path = _unet(tmp_path)
    unknown = _rewrite_metadata(path, tmp_path / "unknown.safetensors", lambda m: m.update(architecture="transformer9"))
    with pytest.raises(CheckpointError, match="transformer9"):
        load_checkpoint(unknown)
    bad_dir = _rewrite_metadata(path, tmp_path / "dir.safetensors", lambda m: m.update(direction="t1-to-flair"))
    with pytest.raises(CheckpointError, match="direction"):
        read_metadata(bad_dir)


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="not one of our checkpoints"):
        load_checkpoint(path)


def test_pickle_files_are_not_loaded(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"w": np.zeros(2)}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize("field,value,pattern", [
    ("slice_size", "abc", "slice_size"),
    ("pixel_spacing_mm", -1, "pixel_spacing_mm"),
    ("context_slices", 1.5, "context_slices"),
    ("normalisation", {"low": 99, "high": 1}, "percentiles"),
])
def test_metadata_with_wrong_types_is_refused(tmp_path, field, value, pattern):
    _, path = _unet(tmp_path)
    bad = _rewrite_metadata(path, tmp_path / "bad.safetensors", lambda m: m.update({field: value}))
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(bad)


def test_checkpoint_without_content_hash_is_refused(tmp_path):
    _, path = _unet(tmp_path)
    bad = _rewrite_metadata(path, tmp_path / "nohash.safetensors", lambda m: m.update(content_sha256=""))
    with pytest.raises(CheckpointError, match="no content hash"):
        load_checkpoint(bad)
