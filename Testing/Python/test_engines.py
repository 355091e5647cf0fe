"""Inference engines (MRISynthesisLib.engines): the same result as PyTorch within 1e-5, a cached
graph derived from the checkpoint and rebuilt when corrupt or stale, and a one-line fallback to
PyTorch when an engine is missing or fails."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from MRISynthesisLib import engines
from MRISynthesisLib.device import Precision
from MRISynthesisLib.engines import EngineUnavailable, choose_engine
from MRISynthesisLib.synthesis import Synthesizer
from MRISynthesisLib.volume import Volume
from phantoms import affine_for, head_phantom

TOLERANCE = 1e-5


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(engines.CACHE_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def resunet_checkpoint(tmp_path_factory):
    """A small residual U-Net (batch norm, 2.5D input), random weights: the shipped family."""
    import torch

    from MRISynthesisLib.checkpoint import ModelMetadata, save_checkpoint
    from MRISynthesisLib.models import build_model, default_config

    torch.manual_seed(0)
    config = dict(default_config("resunet"), ngf=4, levels=2, in_channels=3)
    model = build_model("resunet", **config).eval()
    metadata = ModelMetadata(architecture="resunet", config=config, direction="t1-to-t2", model_id="test-resunet",
                             slice_size=32, pixel_spacing_mm=2.0, context_slices=1)
    return save_checkpoint(tmp_path_factory.mktemp("models") / "resunet.safetensors", model, metadata)


@pytest.fixture(scope="module")
def volume():
    return Volume(head_phantom((40, 44, 12)), affine_for("RAS", (2.0, 2.0, 2.0)))


def synthesize(checkpoint, volume, engine, **options):
    synthesizer = Synthesizer(checkpoint, device="cpu", precision="fp32", engine=engine, **options)
    return synthesizer, synthesizer.synthesize(volume).array


def graph_folder(cache):
    folders = [f for f in (cache / "onnx").iterdir() if not f.name.startswith(".")]
    assert len(folders) == 1, folders
    return folders[0]


# -- same result as PyTorch -------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["torch-channels-last", "onnxruntime"])
def test_every_fp32_engine_gives_the_pytorch_result_within_1e5(resunet_checkpoint, volume, cache, engine):
    if engine == "onnxruntime":
        pytest.importorskip("onnxruntime")
    _, reference = synthesize(resunet_checkpoint, volume, "torch")
    synthesizer, result = synthesize(resunet_checkpoint, volume, engine)
    assert synthesizer.engine.name == engine and synthesizer.engine.notes == []
    assert reference.max() > 0.1
    assert np.abs(result - reference).max() <= TOLERANCE


def test_flip_tta_runs_through_the_engine(resunet_checkpoint, volume, cache):
    pytest.importorskip("onnxruntime")
    _, reference = synthesize(resunet_checkpoint, volume, "torch", flip_tta=True)
    _, result = synthesize(resunet_checkpoint, volume, "onnxruntime", flip_tta=True)
    assert np.abs(result - reference).max() <= TOLERANCE


# -- the cached graph -----------------------------------------------------------------------------------

def test_graph_is_cached_once_keyed_by_the_checkpoint_and_reused(resunet_checkpoint, tiny_unet_checkpoint, cache):
    pytest.importorskip("onnxruntime")
    first, _ = Synthesizer(resunet_checkpoint, device="cpu", precision="fp32", engine="onnxruntime"), None
    folder = graph_folder(cache)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["checkpoint_content_sha256"] == first.metadata.content_sha256
    assert manifest["max_abs_difference_from_torch"] <= TOLERANCE
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    again = Synthesizer(resunet_checkpoint, device="cpu", precision="fp32", engine="onnxruntime")
    assert again.engine.notes == [] and (folder / "model.onnx").stat().st_mtime_ns == stamp  # reused
    Synthesizer(tiny_unet_checkpoint, device="cpu", precision="fp32", engine="onnxruntime")
    assert len([f for f in (cache / "onnx").iterdir() if not f.name.startswith(".")]) == 2  # one per checkpoint
    assert not [f for f in (cache / "onnx").iterdir() if f.name.startswith(".")]  # no staging left over


@pytest.mark.parametrize("damage, why", [
    (lambda folder: (folder / "model.onnx").write_bytes((folder / "model.onnx").read_bytes()[:1000]), "corrupt"),
    (lambda folder: (folder / "manifest.json").write_text(
        (folder / "manifest.json").read_text().replace('"key": "', '"key": "0')), "stale"),
    (lambda folder: (folder / "manifest.json").write_text("{not json"), "unreadable"),
    (lambda folder: (folder / "model.onnx").unlink(), "unreadable"),
])
def test_corrupt_or_stale_cached_graph_is_rebuilt_never_used(resunet_checkpoint, volume, cache, damage, why):
    pytest.importorskip("onnxruntime")
    _, reference = synthesize(resunet_checkpoint, volume, "onnxruntime")
    folder = graph_folder(cache)
    good = (folder / "model.onnx").read_bytes()
    damage(folder)
    synthesizer, result = synthesize(resunet_checkpoint, volume, "onnxruntime")
    assert synthesizer.engine.name == "onnxruntime"
    assert len(synthesizer.engine.notes) == 1 and why in synthesizer.engine.notes[0]
    assert "rebuilt" in synthesizer.engine.notes[0]
    assert np.array_equal(result, reference)
    assert (folder / "model.onnx").read_bytes() == good  # the cache holds a good graph again
    assert synthesize(resunet_checkpoint, volume, "onnxruntime")[0].engine.notes == []


def test_a_graph_onnxruntime_cannot_load_is_rebuilt(resunet_checkpoint, volume, cache):
    """A graph whose bytes match its manifest but that ONNX Runtime refuses (e.g. written by a
    broken exporter) is rebuilt too."""
    pytest.importorskip("onnxruntime")
    import hashlib

    _, reference = synthesize(resunet_checkpoint, volume, "onnxruntime")
    folder = graph_folder(cache)
    garbage = b"not an onnx graph"
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["graph_sha256"] = hashlib.sha256(garbage).hexdigest()
    (folder / "model.onnx").write_bytes(garbage)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    synthesizer, result = synthesize(resunet_checkpoint, volume, "onnxruntime")
    assert synthesizer.engine.name == "onnxruntime" and "could not load it" in synthesizer.engine.notes[0]
    assert np.array_equal(result, reference)


def test_unwritable_cache_still_runs_the_engine(resunet_checkpoint, volume, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(engines.CACHE_ENV, str(blocker / "cache"))
    synthesizer, _ = synthesize(resunet_checkpoint, volume, "onnxruntime")
    assert synthesizer.engine.name == "onnxruntime"
    assert len(synthesizer.engine.notes) == 1 and "could not cache" in synthesizer.engine.notes[0]


# -- falling back to PyTorch ----------------------------------------------------------------------------

def test_missing_onnxruntime_falls_back_to_pytorch_with_one_line(resunet_checkpoint, volume, cache, monkeypatch):
    _, reference = synthesize(resunet_checkpoint, volume, "torch")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    synthesizer, result = synthesize(resunet_checkpoint, volume, "onnxruntime")
    assert synthesizer.engine.name == "torch"
    assert len(synthesizer.engine.notes) == 1
    assert "onnxruntime is not available" in synthesizer.engine.notes[0] and "PyTorch" in synthesizer.engine.notes[0]
    assert np.array_equal(result, reference)
    assert not (cache / "onnx").exists()


def test_engine_that_fails_to_build_falls_back_to_pytorch_with_one_line(resunet_checkpoint, volume, cache,
                                                                          monkeypatch):
    pytest.importorskip("onnxruntime")

    def failing_export(*args):
        raise EngineUnavailable("engine onnxruntime: the network could not be exported to ONNX (test)")

    monkeypatch.setattr(engines, "export_onnx_graph", failing_export)
    monkeypatch.setattr(engines, "cpu_kind", lambda *_: "x86-avx2")
    monkeypatch.setitem(engines.MEASURED_FASTEST, ("x86-avx2", "resunet+batchnorm"), "onnxruntime")
    monkeypatch.setitem(engines.MEASURED_TORCH_FALLBACK, ("x86-avx2", "resunet+batchnorm"), "torch-channels-last")
    synthesizer, _ = synthesize(resunet_checkpoint, volume, "auto")
    assert synthesizer.engine.name == "torch-channels-last"  # auto's measured PyTorch fallback
    assert synthesizer.engine.notes == ["engine onnxruntime: the network could not be exported to ONNX (test); "
                                        "running PyTorch instead"]


def test_cli_prints_one_line_for_a_missing_engine(tiny_checkpoint, tmp_path):
    from phantoms import affine_for as affine
    import nibabel as nib

    source = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(head_phantom(), affine("RAS", (4.0, 4.0, 4.0))), str(source))
    code = ("import sys; sys.modules['onnxruntime'] = None; from MRISynthesisLib.cli import main; "
            f"sys.exit(main(['synthesize', {str(source)!r}, '-o', {str(tmp_path / 'out.nii.gz')!r}, '--model', "
            f"{str(tiny_checkpoint)!r}, '--engine', 'onnxruntime', '--precision', 'fp32', '--device', 'cpu', "
            "'--quiet']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert [line for line in lines if "onnxruntime" in line] == [
        next(line for line in lines if line.startswith("warning: engine onnxruntime is not available"))]
    assert next(line for line in lines if line.startswith("model: ")).endswith("engine torch")


# -- what auto picks -------------------------------------------------------------------------------------

class _Device:
    def __init__(self, kind):
        self.type = kind


@pytest.mark.parametrize("kind, family, precision, device, expected", [
    ("x86-avx2", "resunet", "fp32", "cpu", "onnxruntime"),
    ("x86-avx2", "resunet+batchnorm", "fp32", "cpu", "onnxruntime"),       # batch norm unfolded: within 1e-5
    ("x86-avx2", "unet_256+batchnorm", "fp32", "cpu", "onnxruntime"),      # measured within 1e-5
    ("x86-bf16", "resunet", "fp32", "cpu", "onnxruntime"),
    ("x86-bf16", "resunet", "bf16", "cpu", "torch"),        # bfloat16 stays on PyTorch's path
    ("x86-avx2", "resunet", "fp32", "cuda", "torch"),
    ("x86-avx2", "baseline", "fp32", "cpu", "torch"),      # not measured: the reference
    ("arm64", "resunet", "fp32", "cpu", "torch"),          # not measured
])
def test_auto_picks_the_engine_measured_fastest(monkeypatch, kind, family, precision, device, expected):
    monkeypatch.setattr(engines, "cpu_kind", lambda *_: kind)
    assert choose_engine("auto", family, Precision(precision), _Device(device)) == (expected, None)


def test_network_family_tells_batch_norm_apart():
    from MRISynthesisLib import catalog
    from MRISynthesisLib.checkpoint import read_metadata

    families = {entry.id: engines.network_family(read_metadata(entry.path())) for entry in catalog.list_models()}
    assert families["t1-to-t2-resunet-v4"] == "resunet"
    assert families["t2-to-t1-resunet-v2"] == "resunet+batchnorm"
    assert families["t2-to-t1-unet-l1-v1"] == "unet_256+batchnorm"


def test_explicit_engine_that_cannot_run_here_says_why():
    name, reason = choose_engine("onnxruntime", "resunet", Precision("bf16"), _Device("cpu"))
    assert name == "torch" and "float32 on the CPU only" in reason
    assert choose_engine("torch-channels-last", "resunet", Precision("fp32"), _Device("cuda"))[0] == "torch"


def test_unknown_engine_is_refused():
    from MRISynthesisLib.errors import InputError

    with pytest.raises(InputError, match="unknown engine 'tensorrt'"):
        choose_engine("tensorrt", "resunet", Precision("fp32"), _Device("cpu"))


def test_training_validation_runs_on_pytorch(resunet_checkpoint):
    from MRISynthesisLib.checkpoint import load_checkpoint

    model, metadata = load_checkpoint(resunet_checkpoint)
    synthesizer = Synthesizer.from_model(model, metadata, device="cpu", mixed_precision=False)
    assert synthesizer.engine.name == "torch"


def test_cache_folder_is_the_users_and_never_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv(engines.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = engines.cache_folder()
    if sys.platform.startswith("linux"):
        assert folder == tmp_path / "mrisynthesis"
    assert "MRISynthesisLib" not in str(folder)


# -- the shipped models on the test subjects ---------------------------------------------------------------

TEST_SUBJECTS = {  # the held-out test subjects of the model cards: (T1, T2) files
    "BraTS-GLI-00001-000": ("BraTS-GLI-00001-000-t1n.nii.gz", "BraTS-GLI-00001-000-t2w.nii.gz"),
    "CBICA-302D10226": ("302D10226-20040128.T1.byte_nii.coreg.smooth.brain.correct.match.nii.gz",
                        "302D10226-20040128.T2.byte_nii.coreg.smooth.brain.correct.match.nii.gz"),
    "MSLUB-patient19": ("T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
                        "T2_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"),
    "TCGA-DU-7294": ("TCGA-DU-7294_t1_bet.nii.gz", "TCGA-DU-7294_t2_bet.nii.gz"),
}
SLICES_PER_SUBJECT = 2


@pytest.mark.realdata
@pytest.mark.slow
def test_shipped_models_give_todays_fp32_output_on_every_fp32_engine(shared_data):
    """Every shipped model, every fp32 engine, central slices of each test subject: within 1e-5 of
    the PyTorch float32 path (today's ``--precision fp32`` output)."""
    from MRISynthesisLib import catalog
    from MRISynthesisLib.io import load_volume
    from MRISynthesisLib.orientation import find_axial_axis
    from MRISynthesisLib.preprocessing import brain_mask

    volumes = {}
    for subject, files in TEST_SUBJECTS.items():
        for contrast, name in zip(("t1", "t2"), files):
            volume = load_volume(shared_data / "paired" / subject / name)
            mask = brain_mask(volume.array)
            axis = find_axial_axis(volume.affine)
            per_slice = np.moveaxis(mask, axis, 0).reshape(mask.shape[axis], -1).sum(axis=1)
            centre = int(np.argmax(per_slice))
            keep = np.zeros(mask.shape[axis], dtype=bool)
            keep[centre - SLICES_PER_SUBJECT // 2:centre + SLICES_PER_SUBJECT // 2] = True
            volumes[subject, contrast] = (volume, mask & np.expand_dims(keep, [a for a in range(3) if a != axis]))
    worst = {}
    for entry in catalog.list_models():
        path = entry.path()
        source = entry.direction.split("-to-")[0]
        reference = Synthesizer(path, device="cpu", precision="fp32", engine="torch")
        # every float32 engine (issue 26: the shipped models within 1e-5 on every fp32 engine)
        fp32_engines = {"torch-channels-last", "onnxruntime"}
        if not _installed("onnxruntime"):
            fp32_engines.discard("onnxruntime")
        others = {name: Synthesizer(path, device="cpu", precision="fp32", engine=name) for name in sorted(fp32_engines)}
        for subject in TEST_SUBJECTS:
            volume, mask = volumes[subject, source]
            expected = reference.synthesize(volume, mask=mask).array
            assert expected.max() > 0.1
            for name, synthesizer in others.items():
                assert synthesizer.engine.name == name, synthesizer.engine.notes
                difference = float(np.abs(synthesizer.synthesize(volume, mask=mask).array - expected).max())
                worst[entry.id, name] = max(worst.get((entry.id, name), 0.0), difference)
    assert worst and max(worst.values()) <= TOLERANCE, worst


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
