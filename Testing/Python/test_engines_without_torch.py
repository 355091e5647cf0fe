"""ONNX Runtime without PyTorch (MRISynthesisLib.engines.torch_free_engine, extractor_graphs): once
the graphs are cached a run imports no PyTorch, prepares slices with numpy as PyTorch does (within
1e-6), and runs the brain extractor's coarse network on a graph derived from deepbet's weights,
rebuilt when corrupt or stale, with a one-line fallback to PyTorch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from MRISynthesisLib import engines, extractor_graphs
from MRISynthesisLib.brain_extraction import coarse_brain_share, skull_stripped_decision
from MRISynthesisLib.preprocessing import SliceGeometry
from MRISynthesisLib.volume import Volume
from phantoms import affine_for, head_phantom

TOLERANCE = 1e-5


# -- numpy slice geometry -----------------------------------------------------------------------------

@pytest.mark.parametrize("rows, cols, spacing, model_spacing", [
    (181, 217, (1.2, 0.9), 1.0),    # rows up, columns down (anti-aliased)
    (97, 313, (0.7, 1.3), 1.0),     # rows down, columns shrunk to fit
    (512, 512, (0.45, 0.45), 1.0),  # down on both axes
    (43, 61, (2.3, 2.9), 1.0),      # up on both axes (plain bilinear)
    (300, 77, (0.5, 3.1), 1.0),
    (123, 456, (1.0, 0.5), 1.0),    # one axis unchanged
    (401, 257, (1.0, 1.0), None),   # fitted into the grid only
])
def test_numpy_slice_geometry_equals_pytorchs_within_1e6(rows, cols, spacing, model_spacing):
    import torch

    geometry = SliceGeometry(rows, cols, spacing, 256, model_spacing)
    rng = np.random.default_rng(rows * cols)
    x = rng.random((2, 3, rows, cols), dtype=np.float32) * 2 - 1
    y = rng.random((2, 1, 256, 256), dtype=np.float32) * 2 - 1
    to_model = geometry.to_model(x)
    assert isinstance(to_model, np.ndarray) and to_model.dtype == np.float32
    assert np.abs(to_model - geometry.to_model(torch.from_numpy(x)).numpy()).max() <= 1e-6
    assert np.abs(geometry.from_model(y) - geometry.from_model(torch.from_numpy(y)).numpy()).max() <= 1e-6


# -- a run without PyTorch --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resunet_checkpoint(tmp_path_factory):
    """A small residual U-Net without batch normalisation (the default model's family), random weights."""
    import torch

    from MRISynthesisLib.checkpoint import ModelMetadata, save_checkpoint
    from MRISynthesisLib.models import build_model, default_config

    torch.manual_seed(0)
    config = dict(default_config("resunet"), ngf=4, levels=2, in_channels=3, norm="none")
    model = build_model("resunet", **config).eval()
    metadata = ModelMetadata(architecture="resunet", config=config, direction="t1-to-t2", model_id="test-resunet",
                             slice_size=32, pixel_spacing_mm=2.0, context_slices=1)
    return save_checkpoint(tmp_path_factory.mktemp("models") / "resunet.safetensors", model, metadata)


def _cli(arguments, report_torch=False):
    code = ("import sys; from MRISynthesisLib.cli import main; status = main(sys.argv[1:]); "
            + ("print('torch imported:', 'torch' in sys.modules); " if report_torch else "") + "sys.exit(status)")
    run = subprocess.run([sys.executable, "-c", code] + [str(a) for a in arguments], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    return run


def test_cached_graph_runs_the_whole_command_without_importing_pytorch(resunet_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import nibabel as nib

    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "cache"))  # the subprocesses' cache
    source = tmp_path / "t1.nii.gz"  # 1.5 mm slices on a 2 mm model grid: resampled both ways
    nib.save(nib.Nifti1Image(head_phantom((41, 47, 9)), affine_for("RAS", (1.5, 1.5, 3.0))), str(source))
    common = ["--model", resunet_checkpoint, "--device", "cpu", "--brain-mask", "none", "--quiet"]
    _cli(["synthesize", source, "-o", tmp_path / "torch.nii.gz", "--engine", "torch", "--precision", "fp32"] + common)
    built = _cli(["synthesize", source, "-o", tmp_path / "built.nii.gz", "--engine", "onnxruntime"] + common,
                 report_torch=True)
    assert "torch imported: True" in built.stdout  # the graph had to be exported from the network
    cached = _cli(["synthesize", source, "-o", tmp_path / "cached.nii.gz", "--engine", "onnxruntime"] + common,
                  report_torch=True)
    assert "torch imported: False" in cached.stdout
    assert cached.stderr.count("engine onnxruntime") == 1 and "warning: engine" not in cached.stderr

    def read(name):
        return np.asarray(nib.load(str(tmp_path / name)).dataobj)

    assert read("torch.nii.gz").max() > 0.1
    assert np.array_equal(read("cached.nii.gz"), read("built.nii.gz"))
    assert np.abs(read("cached.nii.gz") - read("torch.nii.gz")).max() <= TOLERANCE


def test_altered_weights_are_never_run_from_the_cached_graph(resunet_checkpoint, tmp_path, monkeypatch):
    """The graph is keyed by the metadata's weights hash; weights that no longer match it go to the
    PyTorch loader, which refuses them as before."""
    pytest.importorskip("onnxruntime")
    from MRISynthesisLib.errors import CheckpointError
    from MRISynthesisLib.synthesis import Synthesizer

    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "cache"))
    assert Synthesizer(resunet_checkpoint, device="cpu", precision="fp32", engine="onnxruntime").engine.name == \
        "onnxruntime"
    altered = tmp_path / "altered.safetensors"
    data = bytearray(resunet_checkpoint.read_bytes())
    data[-5] ^= 0xFF  # a weight byte (the tensors follow the header)
    altered.write_bytes(bytes(data))
    assert engines.torch_free_engine(altered, "onnxruntime", "cpu", "fp32", 8) is None
    with pytest.raises(CheckpointError, match="do not match the content hash"):
        Synthesizer(altered, device="cpu", precision="fp32", engine="onnxruntime")


@pytest.mark.parametrize("native_bf16", [True, False])
def test_onnxruntime_asked_for_with_auto_precision_runs_float32_on_it_on_every_cpu_kind(
        resunet_checkpoint, tmp_path, monkeypatch, native_bf16):
    """On a CPU with native bf16, 'auto' precision alone means bf16, which ONNX Runtime cannot run;
    an explicit --engine onnxruntime decides it (float32), so the engine asked for runs (cached graph
    and first build alike) instead of PyTorch taking its place. Both CPU kinds are simulated, so the
    test means the same on AVX2 and AVX-512 BF16 machines."""
    pytest.importorskip("onnxruntime")
    import torch

    from MRISynthesisLib import device as device_module
    from MRISynthesisLib.synthesis import Synthesizer

    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setattr(device_module, "native_bf16_without_torch", lambda: native_bf16)
    built = Synthesizer(resunet_checkpoint, device="cpu", engine="onnxruntime")  # exports and caches the graph
    assert (built.engine.name, built.precision.name, built.engine.notes) == ("onnxruntime", "fp32", [])
    found = engines.torch_free_engine(resunet_checkpoint, "onnxruntime", "cpu", "auto", 8)
    assert found is not None and found.precision.name == "fp32"
    # without an explicit engine, 'auto' precision still follows the CPU: bf16 on PyTorch where it is native
    plain = Synthesizer(resunet_checkpoint, device="cpu", engine="auto")
    assert plain.precision.name == ("bf16" if native_bf16 else "fp32")
    if native_bf16:
        assert plain.engine.name == "torch"
    assert device_module.resolve_precision("auto", torch.device("cpu"), "onnxruntime").name == "fp32"
    assert device_module.resolve_precision("bf16", torch.device("cpu"), "onnxruntime").name == "bf16"  # explicit wins


def test_torch_engine_and_gpus_never_take_the_torch_free_path(resunet_checkpoint):
    assert engines.torch_free_engine(resunet_checkpoint, "torch", "cpu", "fp32", 8) is None
    assert engines.torch_free_engine(resunet_checkpoint, "torch-channels-last", "cpu", "fp32", 8) is None
    assert engines.torch_free_engine(resunet_checkpoint, "onnxruntime", "cuda", "fp32", 8) is None
    assert engines.torch_free_engine(resunet_checkpoint, "onnxruntime", "cpu", "bf16", 8) is None


# -- the brain extractor's coarse network ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def head():
    """A brain-sized phantom (160 x 180 x 150 mm) above a zero background."""
    volume = Volume(head_phantom((64, 72, 60)), affine_for("RAS", (2.5, 2.5, 2.5)))
    return volume, volume.array > 0


def _graph_folders(cache):
    return [f for f in (cache / "onnx").iterdir() if not f.name.startswith(".")]


@pytest.mark.slow
def test_extractor_graph_is_rebuilt_when_corrupt_or_stale_never_used(head, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("deepbet")
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "cache"))
    volume, foreground = head
    reference = coarse_brain_share(volume, foreground, engine="torch")
    first = coarse_brain_share(volume, foreground, engine="onnxruntime")
    assert abs(first - reference) <= 0.01  # the same voxels but a few at the 0.5 threshold
    (folder,) = _graph_folders(tmp_path / "cache")
    good = (folder / "model.onnx").read_bytes()
    for damage, why in ((lambda: (folder / "model.onnx").write_bytes(good[:1000]), "corrupt"),
                        (lambda: (folder / "manifest.json").write_text(
                            (folder / "manifest.json").read_text().replace('"key": "', '"key": "0')), "stale")):
        damage()
        assert engines.read_cache_entry(folder, folder.name, extractor_graphs.GRAPH_FORMAT)[2].startswith(why)
        assert coarse_brain_share(volume, foreground, engine="onnxruntime") == first  # never the damaged graph
        graph, manifest, problem = engines.read_cache_entry(folder, folder.name, extractor_graphs.GRAPH_FORMAT)
        assert problem is None and graph is not None  # rebuilt: the cache holds a good graph again
        assert manifest["max_abs_difference_from_torch"] <= extractor_graphs.TOLERANCE
        assert len(_graph_folders(tmp_path / "cache")) == 1


def test_missing_onnxruntime_runs_the_coarse_network_on_pytorch_with_one_line(head, monkeypatch):
    pytest.importorskip("deepbet")
    volume, foreground = head
    reference = coarse_brain_share(volume, foreground, engine="torch")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.warns(UserWarning) as caught:
        share = coarse_brain_share(volume, foreground, engine="onnxruntime")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "onnxruntime is not available" in messages[0] and "PyTorch" in messages[0]
    assert share == reference


# -- real data ------------------------------------------------------------------------------------------

BRATS_T1 = ("paired", "BraTS-GLI-00001-000", "BraTS-GLI-00001-000-t1n.nii.gz")


@pytest.mark.realdata
def test_brain_mask_decision_on_onnxruntime_is_pytorchs(shared_data):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("deepbet")
    from MRISynthesisLib.io import load_volume

    volume = load_volume(shared_data.joinpath(*BRATS_T1))
    reference = skull_stripped_decision(volume, engine="torch")
    decision = skull_stripped_decision(volume, engine="onnxruntime")
    assert decision.skull_stripped and reference.skull_stripped
    assert decision.reason == reference.reason
    assert abs(decision.coarse_brain_share - reference.coarse_brain_share) <= 1e-6


@pytest.mark.realdata
@pytest.mark.slow
def test_default_model_pipeline_on_onnxruntime_gives_pytorchs_output_within_1e5(shared_data):
    """The whole pipeline with the shipped default model on central slices of a test subject."""
    pytest.importorskip("onnxruntime")
    from MRISynthesisLib.io import load_volume
    from MRISynthesisLib.orientation import find_axial_axis
    from MRISynthesisLib.pipeline import SynthesisRequest, run

    volume = load_volume(shared_data.joinpath(*BRATS_T1))
    axis = find_axial_axis(volume.affine)
    index = [slice(None)] * 3
    index[axis] = slice(volume.shape[axis] // 2 - 3, volume.shape[axis] // 2 + 3)
    slab = Volume(np.ascontiguousarray(volume.array[tuple(index)]), volume.affine)
    results = {engine: run(SynthesisRequest(slab, device="cpu", precision="fp32", engine=engine, brain_mask="none"))
               for engine in ("torch", "onnxruntime")}
    assert results["onnxruntime"].engine == "onnxruntime" and results["torch"].engine == "torch"
    expected = results["torch"].synthetic.array
    assert expected.max() > 0.1
    assert np.abs(results["onnxruntime"].synthetic.array - expected).max() <= TOLERANCE
