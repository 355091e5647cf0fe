"""Checkpoints describe themselves, load without pickle, and bad files are refused clearly."""

import json
import struct

import numpy as np
import pytest
import torch

from MRISynthesisLib import checkpoint as checkpoint_module
from MRISynthesisLib.checkpoint import (FORMAT_VERSION, ModelMetadata, load_checkpoint, metadata_hash, read_metadata,
                                        save_checkpoint, upgrade_checkpoint)
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


def _rewrite_metadata(path, target, change, rehash=True):
    """Copy ``path`` to ``target`` with its JSON metadata edited by ``change`` (header surgery).

    ``rehash``: recompute the metadata hash, as a deliberate forger would, so that the checks
    behind the hash are exercised; ``False`` is a plain edit, which the hash must catch.
    """
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    meta = json.loads(header["__metadata__"]["mrisynthesis"])
    change(meta)
    if rehash and isinstance(meta, dict):
        meta["metadata_sha256"] = metadata_hash(meta)
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


# -- format 2: the metadata hash (issue 9, item 1) ---------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("direction", "t1-to-t2"),          # a T2->T1 model relabelled: would synthesize the wrong contrast
    ("slice_size", 256),
    ("pixel_spacing_mm", 0.5),
    ("normalisation", {"method": "percentile", "low": 2.0, "high": 98.0, "mask": "foreground",
                       "model_range": [-1.0, 1.0]}),
    ("model_id", "someone-else"),
])
def test_edited_metadata_is_refused_by_the_metadata_hash(tmp_path, field, value):
    _, path = _unet(tmp_path)
    edited = _rewrite_metadata(path, tmp_path / "edited.safetensors", lambda m: m.update({field: value}),
                               rehash=False)
    for reader in (read_metadata, load_checkpoint):
        with pytest.raises(CheckpointError, match="metadata hash"):
            reader(edited)


def test_saved_checkpoint_is_format_2_with_both_hashes(tmp_path):
    _, path = _unet(tmp_path)
    metadata = read_metadata(path)
    assert FORMAT_VERSION == 2 and metadata.format_version == 2
    assert len(metadata.metadata_sha256) == 64 and metadata.metadata_sha256 != metadata.content_sha256


def _as_format_1(path, target):
    """A file as format 1 wrote it: same weights, no metadata hash."""
    def downgrade(meta):
        meta["format_version"] = 1
        del meta["metadata_sha256"]
    return _rewrite_metadata(path, target, downgrade, rehash=False)


def test_format_1_checkpoint_is_refused_with_the_upgrade_command(tmp_path):
    _, path = _unet(tmp_path)
    old = _as_format_1(path, tmp_path / "old.safetensors")
    with pytest.raises(CheckpointError, match=r"format version 1 does not protect.*--upgrade-to"):
        load_checkpoint(old)
    with pytest.raises(CheckpointError, match="format version 1"):
        read_metadata(old)


def test_upgrade_keeps_weights_and_outputs_bit_identical(tmp_path):
    model, path = _unet(tmp_path)
    old = _as_format_1(path, tmp_path / "old.safetensors")
    new = upgrade_checkpoint(old, tmp_path / "new.safetensors")
    loaded, metadata = load_checkpoint(new)
    assert metadata.format_version == FORMAT_VERSION and metadata.direction == "t2-to-t1"
    assert metadata.content_sha256 == read_metadata(path).content_sha256
    x = torch.rand(1, 1, 128, 128) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    with pytest.raises(CheckpointError, match="new file"):
        upgrade_checkpoint(old, old)


# -- crafted metadata refused before anything is allocated (issue 9, item 2) ---------------------

@pytest.mark.parametrize("change,pattern", [
    (lambda m: m["config"].update(ngf=10_000_000), "out of range"),
    (lambda m: m["config"].update(ngf=-4), "cannot build"),
    (lambda m: m["config"].update(ngf=4096), "network of .* values"),
    (lambda m: m["config"].update(ngf=8), "do not fit"),
    (lambda m: m["config"].update(ngf=[4] * 1000), "items"),
    (lambda m: m["config"].update(in_channels=3), "in_channels"),
    (lambda m: m.update(slice_size=60000), "slice_size must be an integer from 16 to 1024"),
    (lambda m: m.update(context_slices=10 ** 6), "context_slices"),
    (lambda m: m.update(format_version="two"), "format_version must be a positive integer"),
    (lambda m: m.update(format_version=None), "format_version must be a positive integer"),
    (lambda m: m.update(format_version=True), "format_version must be a positive integer"),
    (lambda m: m.update(format_version=99), "newer than this software"),
    (lambda m: m.update(architecture="patchgan", config={"in_channels": 1, "ndf": 4}), "discriminator"),
    (lambda m: m.update(title=["x"]), "'title' must be a string"),
    (lambda m: m.update(weights_dtype="int8"), "weights_dtype"),
    (lambda m: m.update(pixel_spacing_mm=float("inf")), "pixel_spacing_mm"),
])
def test_crafted_metadata_is_refused_before_allocation(tmp_path, monkeypatch, change, pattern):
    _, path = _unet(tmp_path)
    crafted = _rewrite_metadata(path, tmp_path / "crafted.safetensors", change)
    from MRISynthesisLib import models

    devices = []
    real_build = models.build_model

    def recording_build(*args, **kwargs):
        devices.append(torch.empty(()).device.type)  # the default device the network would be built on
        return real_build(*args, **kwargs)

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were read before the metadata was refused")

    monkeypatch.setattr(models, "build_model", recording_build)
    monkeypatch.setattr("safetensors.torch.load_file", no_weights)
    with pytest.raises(CheckpointError, match=pattern) as error:
        load_checkpoint(crafted)
    assert "\n" not in str(error.value) and "crafted.safetensors" in str(error.value)
    assert set(devices) <= {"meta"}, devices


def test_size_guard_is_generic_over_the_registry(tmp_path):
    from MRISynthesisLib.models import GENERATOR_NAMES, build_model, default_config

    # The guard needs no per-model list: every registered generator, saved and then described as
    # 64 times wider than it is, is refused from its header alone.
    for name in GENERATOR_NAMES:
        config = default_config(name)
        with torch.device("meta"):
            build_model(name, **config)  # constructible without memory, as the guard requires
        width = next((k for k in ("ngf", "nf") if k in config), None)
        if width is None:
            continue
        config[width] = 2
        model = build_model(name, **config)
        meta = ModelMetadata(architecture=name, config=dict(model.config), direction="t1-to-t2", slice_size=256)
        path = save_checkpoint(tmp_path / f"{name}.safetensors", model, meta)
        crafted = _rewrite_metadata(path, tmp_path / f"{name}-wide.safetensors",
                                    lambda m: m["config"].update({width: 128}))
        with pytest.raises(CheckpointError, match="do not fit"):
            load_checkpoint(crafted)


# -- crafted but hash-valid checkpoints: bounded before anything is built (issue 23) ---------------

_SYNTHESIZER = ("import sys, time\nimport torch, safetensors.torch\nfrom MRISynthesisLib.errors import MRISynthesisError\n"
                "from MRISynthesisLib.synthesis import Synthesizer\nstarted = time.perf_counter()\n"
                "try:\n    Synthesizer(sys.argv[1], device='cpu', batch_size=8)\n    print('accepted')\n"
                "except MRISynthesisError as error:\n    print('refused:', error)\n"
                "print('case seconds:', time.perf_counter() - started)\n")


def _wide_baseline(tmp_path):
    """A genuine checkpoint (weights fit, both hashes valid) whose 1x1 network is 4096 wide on
    1024 x 1024 slices at 0.25 mm: 32 GiB of intermediate results per slice, 256 GiB per batch of 8."""
    config = dict(default_config("baseline"), hidden_channels=[4096])
    metadata = ModelMetadata(architecture="baseline", config=config, direction="t1-to-t2", slice_size=1024,
                             pixel_spacing_mm=0.25)
    return save_checkpoint(tmp_path / "wide.safetensors", build_model("baseline", **config), metadata)


def _deep_resunet(tmp_path):
    """A resunet described (hash recomputed) with 4096 levels of 4096 blocks."""
    config = dict(default_config("resunet"), ngf=2, levels=1)
    metadata = ModelMetadata(architecture="resunet", config=config, direction="t1-to-t2", slice_size=64)
    path = save_checkpoint(tmp_path / "small.safetensors", build_model("resunet", **config), metadata)
    return _rewrite_metadata(path, tmp_path / "deep.safetensors", lambda m: m["config"].update(levels=4096, blocks=4096))


@pytest.mark.parametrize("make,pattern", [
    (_wide_baseline, r"needs 16\.0 GiB for the intermediate results of a single 1024 x 1024 slice"),
    (_deep_resunet, "a network of more than 1,000 layers"),
])
def test_crafted_checkpoint_is_refused_quickly_with_bounded_memory(tmp_path, make, pattern):
    """Measured in a child process: peak RSS of the whole child, time of the case itself (creating
    the Synthesizer; the child's start and its imports of torch are not the checkpoint's doing)."""
    import re

    from bounded import MAX_RSS_BYTES, MAX_SECONDS, run_bounded

    result = run_bounded(_SYNTHESIZER, make(tmp_path), timeout=60)
    assert result.returncode == 0, f"killed or crashed after {result.seconds:.1f} s: {result.output[-500:]}"
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refused: ") and re.search(pattern, lines[0]), result.output
    assert result.case_seconds < MAX_SECONDS, f"{result.case_seconds:.1f} s (child: {result.seconds:.1f} s)"
    assert result.peak_rss_bytes < MAX_RSS_BYTES, f"peak RSS {result.peak_rss_bytes / 2**20:.0f} MiB"


def test_batch_size_is_bounded_by_the_memory_of_one_batch(tmp_path):
    from MRISynthesisLib.checkpoint import MAX_BATCH_ACTIVATION_BYTES, activation_bytes, check_batch_memory

    _, path = _unet(tmp_path)
    metadata = read_metadata(path)
    per_slice = activation_bytes(metadata)
    assert 0 < per_slice < 64 << 20  # unet_128, ngf 4, 128 x 128
    fitting = MAX_BATCH_ACTIVATION_BYTES // per_slice
    check_batch_memory(metadata, fitting)
    with pytest.raises(CheckpointError, match=f"use a batch size of at most {fitting}$"):
        check_batch_memory(metadata, fitting + 1)


def test_activation_sizing_matches_pytorchs_meta_kernels():
    """The shape rules that spare PyTorch's slow meta kernels give the same sizes as those kernels."""
    from MRISynthesisLib.models import GENERATOR_NAMES
    from MRISynthesisLib.network_sizing import PeakMemory, build_on_meta, peak_activation_bytes

    for name in GENERATOR_NAMES:
        network = build_on_meta(lambda: build_model(name, **default_config(name)), 1000, 10 ** 9).eval()
        channels = default_config(name).get("in_channels", 1)
        ruled = peak_activation_bytes(network, (2, channels, 256, 256))
        mode = PeakMemory()
        with torch.no_grad(), torch.device("meta"):
            reference = network(torch.zeros(2, channels, 256, 256))
        with torch.no_grad(), mode:
            ruled_output = network(torch.zeros(2, channels, 256, 256, device="meta"))
        outputs = [(reference, ruled_output)] if not isinstance(reference, tuple) else zip(reference, ruled_output)
        for a, b in outputs:
            assert a.shape == b.shape, name
        assert ruled >= reference.numel() * 4 if not isinstance(reference, tuple) else ruled > 0


def test_metadata_nested_100000_deep_is_refused_in_one_line(tmp_path):
    import hashlib

    _, path = _unet(tmp_path)
    nested = "[" * 100_000 + "]" * 100_000
    marker = '"@@nested@@"'

    def change(meta):  # what a forger computes: the canonical JSON with the nesting spliced in
        meta["training_data"] = {"deep": "@@nested@@"}
        canonical = json.dumps({k: v for k, v in meta.items() if k != "metadata_sha256"}, sort_keys=True,
                               separators=(",", ":"), ensure_ascii=True, allow_nan=True).replace(marker, nested)
        meta["metadata_sha256"] = hashlib.sha256(canonical.encode("ascii")).hexdigest()

    crafted = _rewrite_metadata(path, tmp_path / "deep.safetensors", change, rehash=False)
    data = crafted.read_bytes().replace(marker.replace('"', '\\"').encode(), nested.encode())
    (length,) = struct.unpack("<Q", data[:8])
    data = struct.pack("<Q", length + len(nested) - len(marker.replace('"', '\\"'))) + data[8:]
    crafted.write_bytes(data)
    with pytest.raises(CheckpointError, match="nests 100002 levels deep") as error:
        read_metadata(crafted)
    assert "\n" not in str(error.value)


def test_degenerate_normalisation_is_the_checkpoints_fault_not_the_inputs(tmp_path):
    import numpy as np

    from MRISynthesisLib.errors import InputError
    from MRISynthesisLib.preprocessing import normalisation_range

    _, path = _unet(tmp_path)
    crafted = _rewrite_metadata(path, tmp_path / "narrow.safetensors",
                                lambda m: m["normalisation"].update(low=0, high=1e-9))
    with pytest.raises(CheckpointError, match="normalisation percentiles must satisfy 0 <= low <= 25 and 75 <= high"):
        load_checkpoint(crafted)
    # And where such percentiles meet a volume, the message names them, not a constant volume.
    values = np.maximum(np.arange(1000, dtype=np.float32), 100).reshape(10, 10, 10)  # integer-like MRI: many at 100
    with pytest.raises(InputError, match=r"the 0th and 1e-09th percentiles of the foreground are equal") as error:
        normalisation_range(values, values > 0, 0, 1e-9)
    assert "constant" not in str(error.value)
    with pytest.raises(InputError, match="foreground is constant"):
        normalisation_range(np.full((4, 4, 4), 7.0, np.float32), np.ones((4, 4, 4), bool))
