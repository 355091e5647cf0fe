"""Inference engines: what runs the network on a batch of model-range slices.

``torch`` is the reference: exactly the PyTorch path of every device and precision (float32 eager,
or bfloat16/float16 autocast). The others run float32 on the CPU and are chosen because they were
measured faster there (``benchmarks/bench_inference.py``), never because they are assumed to be:

* ``torch-channels-last``: the same PyTorch network in the channels-last memory format (oneDNN's
  faster convolution layout on x86 CPUs), within 1e-5 of ``torch``;
* ``onnxruntime``: ONNX Runtime (CPU provider) on an ONNX graph exported from the checkpoint's
  network, within 1e-5 of ``torch``.

The ONNX graph is derived from the ``.safetensors`` checkpoint, never a second source of truth: it
is exported on first use, checked against the PyTorch network on a test batch, and cached in the
user's cache folder (:func:`cache_folder`) under a key of the checkpoint's content and metadata
hashes and the exporter and runtime versions. A cached graph whose manifest or bytes do not match
(corrupt, truncated, left by another version) is rebuilt, never used; writes are atomic (a folder
renamed into place). An engine that is missing or fails falls back to PyTorch with one sentence in
``Engine.notes``.

When the cached graph exists, ONNX Runtime runs without PyTorch (:func:`torch_free_engine`): the
checkpoint's metadata and weights are verified from its bytes (metadata hash, weights hash), the
graph's manifest holds what the network would otherwise be built for (its family, whether it can
sample, the memory of its intermediate results), and synthesis prepares the slices with numpy.
PyTorch is imported only to build a missing or stale graph (seconds saved on every run, and the
memory of PyTorch and of the network's weights).

``auto`` (:func:`choose_engine`) picks, for float32 on an x86 CPU, the engine that measured fastest
within 1e-5 for the network (:data:`MEASURED_FASTEST`); everything else (GPUs, Apple MPS,
bfloat16/float16, architectures or CPUs not measured) runs on ``torch`` as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = ["CACHE_ENV", "ENGINE_CHOICES", "GRAPH_TOLERANCE", "MEASURED_FASTEST", "ONNX_OPSET", "EngineUnavailable",
           "OnnxRuntimeEngine", "TorchEngine", "TorchFreeEngine", "cache_folder", "choose_engine", "cpu_kind",
           "create_engine", "export_onnx_graph", "network_family", "onnxruntime_session", "read_cache_entry",
           "torch_free_engine", "torch_version", "write_cached_graph"]

ENGINE_CHOICES = ("auto", "torch", "torch-channels-last", "onnxruntime")

#: Fastest float32 engine within 1e-5 of ``torch``, per (CPU kind, network family; see
#: :func:`network_family`), measured against PyTorch eager float32 on batches of 8 real slices of
#: 256 x 256 with 2 threads (``benchmarks/bench_inference.py``; README "Inference engines"). Only what
#: was measured is listed: other CPUs and networks keep ``torch``. Batch normalisation stays its own
#: operation in the graph (:func:`export_onnx_graph`): folded into the convolutions it moved v2's
#: output by up to 1.4e-5 on real slices, over the 1e-5 tolerance.
MEASURED_FASTEST = {
    # 2-core AMD EPYC, AVX2 only, 2026-12-03 (loaded machine; per-round min-max; max abs difference):
    # resunet v4 ONNX Runtime 3.85x (2.5-4.7; 4.5e-6), channels-last 1.87x (1.4-2.3);
    # batch norm unfolded in the graph (load 4.5): resunet v2 ONNX Runtime 2.58x (2.43-2.94; 2.6e-6),
    # channels-last 1.41x (1.34-1.50); unet_256 v1 ONNX Runtime 2.50x (2.37-2.59; 7.7e-7), channels-last
    # 1.45x. (Folded, ONNX Runtime was 3.09x on v2 but 1.4e-5 away: over the tolerance.)
    ("x86-avx2", "resunet"): "onnxruntime",
    ("x86-avx2", "resunet+batchnorm"): "onnxruntime",
    ("x86-avx2", "unet_256+batchnorm"): "onnxruntime",
    # 2-core EPYC with AVX-512 BF16 (issue 26): resunet v4 ONNX Runtime 2.9x, channels-last 2.2x.
    ("x86-bf16", "resunet"): "onnxruntime",
}
#: What ``auto`` runs when the measured engine is not installed or fails, per (CPU kind, family).
MEASURED_TORCH_FALLBACK = {
    ("x86-avx2", "resunet"): "torch-channels-last",
    ("x86-avx2", "resunet+batchnorm"): "torch-channels-last",
    ("x86-avx2", "unet_256+batchnorm"): "torch-channels-last",
    ("x86-bf16", "resunet"): "torch-channels-last",
}

#: Largest difference from ``torch`` (float32) accepted when a new ONNX graph is checked.
GRAPH_TOLERANCE = 1e-5
#: ONNX operator set of the exported graphs (ONNX Runtime >= 1.14 runs it).
ONNX_OPSET = 17
#: Bumped when the export or the manifest changes, so older cached graphs are rebuilt
#: (2: batch normalisation no longer folded into the convolutions; 3: the manifest holds what a run
#: without PyTorch needs, see :func:`torch_free_engine`).
GRAPH_FORMAT = 3
#: ONNX Runtime graph optimisations left out: folding batch normalisation into convolutions changes
#: the arithmetic (see :data:`MEASURED_FASTEST`).
UNFOLDED_OPTIMIZERS = frozenset({"ConvBNFusion"})
#: Environment variable that overrides the cache folder (tests, shared installations).
CACHE_ENV = "MRISYNTHESIS_CACHE_DIR"


def network_family(metadata) -> str:
    """The architecture, with '+batchnorm' when the network has batch normalisation layers (the
    engines' results differ there): e.g. 'resunet', 'resunet+batchnorm', 'unet_256+batchnorm'."""
    from .models import default_config

    try:
        norm = dict(default_config(metadata.architecture), **metadata.config).get("norm")
    except Exception:  # noqa: BLE001 - an unknown architecture is simply not in the table
        norm = metadata.config.get("norm")
    return metadata.architecture + ("+batchnorm" if norm == "batch" else "")


def cpu_kind(native_bf16: bool | None = None) -> str:
    """'x86-bf16' (x86 with native bfloat16: AVX-512 BF16 or AMX), 'x86-avx2', or the machine name
    (e.g. 'arm64') for other CPUs. Engine speeds were measured per kind. ``native_bf16``: already
    known (else :func:`MRISynthesisLib.device.cpu_has_native_bf16` asks PyTorch)."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        if native_bf16 is None:
            from .device import cpu_has_native_bf16

            native_bf16 = cpu_has_native_bf16()
        return "x86-bf16" if native_bf16 else "x86-avx2"
    return machine or "unknown"


def torch_version() -> str:
    """The installed PyTorch's version (from its package metadata: PyTorch is not imported)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = sys.modules.get("torch")
        return str(getattr(torch, "__version__", "none"))


def cache_folder() -> Path:
    """Where derived graphs are cached: ``$MRISYNTHESIS_CACHE_DIR``, else the platform's user cache
    folder (``%LOCALAPPDATA%\\mrisynthesis\\Cache``, ``~/Library/Caches/mrisynthesis``,
    ``$XDG_CACHE_HOME/mrisynthesis`` or ``~/.cache/mrisynthesis``). Never inside the repository."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "mrisynthesis" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "mrisynthesis"
    return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "mrisynthesis"


# -- the engines ---------------------------------------------------------------------------------

class TorchEngine:
    """The PyTorch network itself; ``channels_last`` converts the model and each batch to that
    memory format. Autocast follows ``precision`` (a :class:`MRISynthesisLib.device.Precision`)."""

    def __init__(self, model, precision, device, channels_last: bool = False, name: str = "torch"):
        import torch

        self.name, self.precision, self.device = name, precision, device
        self.channels_last = bool(channels_last or precision.channels_last)
        if channels_last and not precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.notes: list[str] = []

    def __call__(self, x):
        import torch

        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.precision.dtype
        context = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with context:
            return self.model(x).float()


class OnnxRuntimeEngine:
    """ONNX Runtime's CPU provider on the checkpoint's ONNX graph; float32 in and out: a numpy
    array gives a numpy array (``takes_numpy``: synthesis then prepares slices with numpy), a
    PyTorch tensor a tensor."""

    name = "onnxruntime"
    takes_numpy = True

    def __init__(self, session, notes):
        self.session, self.notes = session, list(notes)
        self.input_name = session.get_inputs()[0].name

    def __call__(self, x):
        import numpy as np

        if isinstance(x, np.ndarray):
            return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        import torch

        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


# -- choosing and creating an engine ------------------------------------------------------------------

def choose_engine(requested: str, family: str, precision, device) -> tuple[str, str | None]:
    """``(engine name, reason)`` for ``requested`` ('auto' or an engine name) and a network
    ``family`` (:func:`network_family`). ``reason`` is a sentence when an explicit request cannot be
    honoured here (then 'torch' is returned)."""
    name = str(requested or "auto").lower()
    if name not in ENGINE_CHOICES:
        from .errors import InputError

        raise InputError(f"unknown engine '{requested}'; expected one of {', '.join(ENGINE_CHOICES)}")
    on_cpu_fp32 = device.type == "cpu" and precision.name == "fp32"
    if name == "auto":
        return (MEASURED_FASTEST.get((cpu_kind(), family), "torch") if on_cpu_fp32 else "torch"), None
    if name == "onnxruntime" and not on_cpu_fp32:
        return "torch", (f"engine onnxruntime runs float32 on the CPU only; running PyTorch "
                         f"({precision.name} on {device.type})")
    if name == "torch-channels-last" and device.type != "cpu":
        return "torch", f"engine torch-channels-last is for CPUs; running PyTorch on {device.type}"
    return name, None


def create_engine(requested, model, metadata, precision, device, checkpoint_path=None):
    """The engine for ``requested`` ('auto', 'torch', 'torch-channels-last' or 'onnxruntime').

    ``model`` is the PyTorch network (eval mode, on ``device``): the reference, the source of the
    ONNX graph and the fallback. An engine that cannot be used (not installed, export or loading
    failed, result differs from PyTorch) gives the PyTorch engine with one sentence in ``notes``."""
    requested = str(requested or "auto").lower()
    family = network_family(metadata)
    name, reason = choose_engine(requested, family, precision, device)
    fallback = MEASURED_TORCH_FALLBACK.get((cpu_kind(), family), "torch") if requested == "auto" else "torch"
    notes = [reason] if reason else []
    if name == "onnxruntime":
        try:
            return OnnxRuntimeEngine(*_onnxruntime_session(model, metadata))
        except EngineUnavailable as error:
            name = fallback
            notes.append(f"{error}; running PyTorch instead")
    engine = TorchEngine(model, precision, device, channels_last=name == "torch-channels-last", name=name)
    engine.notes = notes
    return engine


@dataclass
class TorchFreeEngine:
    """What :func:`torch_free_engine` found: the engine, the checkpoint's metadata, the precision
    and device (the CPU, float32) and whether the network can sample (VAE)."""

    engine: OnnxRuntimeEngine
    metadata: object
    precision: object
    device: object
    supports_uncertainty: bool


def torch_free_engine(checkpoint, requested, device, precision, batch_size) -> TorchFreeEngine | None:
    """The ONNX Runtime engine of ``checkpoint`` from its cached graph, without importing PyTorch;
    None when PyTorch is needed: another engine is asked for or measured faster, the device or
    the precision may not be the CPU's float32 (or cannot be told without PyTorch), ONNX Runtime is
    missing, no valid graph is cached, or the checkpoint's weights do not match their hash (the
    caller then loads the checkpoint as usual, which builds the graph or gives the error).

    The metadata hash is verified on reading, the weights' hash from the file's bytes; the graph is
    keyed by both, so it was derived from exactly this checkpoint (which passed every check of
    :func:`MRISynthesisLib.checkpoint.load_checkpoint` then). Raises ``CheckpointError`` for bad
    metadata and for a batch whose intermediate results would not fit (as loading does)."""
    from .checkpoint import check_batch_bytes, read_metadata, weights_match_content_hash
    from .device import CpuDevice, Precision, auto_precision_follows_engine, native_bf16_without_torch, surely_cpu

    requested = str(requested or "auto").lower()
    if requested not in ("auto", "onnxruntime") or not surely_cpu(device):
        return None
    name = str(precision or "auto").lower()
    if name == "auto" and auto_precision_follows_engine(requested, "cpu"):  # surely the CPU here
        name = "fp32"
    native_bf16 = native_bf16_without_torch()
    if native_bf16 is None and (name == "auto" or requested == "auto"):
        return None
    if (("bf16" if native_bf16 else "fp32") if name == "auto" else name) != "fp32":
        return None
    try:
        import onnxruntime
    except Exception:  # noqa: BLE001 - missing or broken: the PyTorch path says so
        return None
    metadata = read_metadata(checkpoint, check_architecture=False)
    key = graph_key(metadata, onnxruntime.__version__)
    graph, manifest, _ = read_cache_entry(cache_folder() / "onnx" / key, key)
    if graph is None:
        return None
    try:
        family = str(manifest["network_family"])
        per_slice = int(manifest["slice_activation_bytes"])
        can_sample = bool(manifest["supports_uncertainty"])
    except (KeyError, TypeError, ValueError):
        return None
    if requested == "auto" and MEASURED_FASTEST.get((cpu_kind(native_bf16), family)) != "onnxruntime":
        return None
    if not weights_match_content_hash(checkpoint, metadata):
        return None
    check_batch_bytes(metadata, batch_size, per_slice)
    with contextlib.suppress(Exception):
        onnxruntime.disable_telemetry_events()
    try:
        session = _session(onnxruntime, graph)
    except Exception:  # noqa: BLE001 - the PyTorch path rebuilds a graph ONNX Runtime cannot load
        return None
    return TorchFreeEngine(OnnxRuntimeEngine(session, []), metadata, Precision("fp32"), CpuDevice(), can_sample)


class EngineUnavailable(Exception):
    """An engine cannot be used here (the sentence says why)."""


def _onnxruntime_session(model, metadata):
    """``(session, notes)``: an ONNX Runtime session of the checkpoint's cached (or newly exported
    and checked) ONNX graph."""
    try:
        import onnxruntime
    except Exception as error:  # noqa: BLE001 - ImportError, or a broken installation
        raise EngineUnavailable(f"engine onnxruntime is not available ({_first_line(error)})") from None
    with contextlib.suppress(Exception):
        onnxruntime.disable_telemetry_events()  # Windows builds log usage events unless told not to
    key = graph_key(metadata, onnxruntime.__version__)
    folder = cache_folder() / "onnx" / key
    notes = []
    graph, problem = read_cached_graph(folder, key)
    if graph is not None:
        try:
            return _session(onnxruntime, graph), notes
        except Exception as error:  # noqa: BLE001 - a graph ONNX Runtime cannot load is rebuilt
            problem = f"ONNX Runtime could not load it ({_first_line(error)})"
    if problem:
        notes.append(f"the cached ONNX graph of {metadata.model_id} was {problem}; rebuilt it")
    graph, difference = export_onnx_graph(model, metadata, onnxruntime)
    manifest = manifest_for(metadata, onnxruntime.__version__, graph, difference)
    from .checkpoint import activation_bytes

    # What a run without PyTorch needs to know of the network (torch_free_engine).
    manifest.update(network_family=network_family(metadata), supports_uncertainty=hasattr(model, "sample"),
                    slice_activation_bytes=activation_bytes(metadata))
    written = write_cached_graph(folder, key, graph, manifest)
    if not written:
        notes.append(f"could not cache the ONNX graph in {folder.parent} (not writable); it is rebuilt next time")
    try:
        return _session(onnxruntime, graph), notes
    except Exception as error:  # noqa: BLE001
        raise EngineUnavailable(f"engine onnxruntime could not load the graph ({_first_line(error)})") from None


def onnxruntime_session(onnxruntime, graph: bytes):
    """An ONNX Runtime CPU session of ``graph`` with this project's settings (threads as PyTorch's)."""
    return _session(onnxruntime, graph)


def _threads() -> int:
    """The threads PyTorch computes with: its own setting when it is loaded, else ``OMP_NUM_THREADS``
    (as PyTorch reads it), else 0: ONNX Runtime's default, the physical cores, as PyTorch's."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return max(1, torch.get_num_threads())
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


def _session(onnxruntime, graph: bytes):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = _threads()  # the same threads as PyTorch
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep instead of spinning: as fast on a quiet CPU, kinder to a busy one (Slicer).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    # The arena keeps the intermediate results' memory between batches: without it every batch
    # page-faults it in anew (3.7 s of system time in a whole BraTS run, 1 in 6 CPU-seconds). The
    # memory pattern (one block planned for all of them) is off: with the arena it held more
    # (peak RSS, 512 x 512 x 300 volume: arena 1.10 GB, no arena 1.04 GB, arena without the
    # pattern 0.97 GB; whole BraTS run 0.58 GB without the arena, 0.50 GB with it and no pattern).
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = False
    # ONNX Runtime would fold batch normalisation into the convolutions itself: measured on the v2
    # networks' real slices, that moves the output by up to 1.4e-5 (in output units), unfolded 6.6e-6.
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"],
                                        disabled_optimizers=UNFOLDED_OPTIMIZERS)


def export_onnx_graph(model, metadata, onnxruntime) -> tuple[bytes, float]:
    """The ONNX graph of ``model`` (dynamic batch size, the model's slice size) and its largest
    difference from PyTorch on a random batch; :class:`EngineUnavailable` when it cannot be
    exported or differs by more than :data:`GRAPH_TOLERANCE`."""
    import warnings

    import numpy as np
    import torch

    channels, size = 2 * int(metadata.context_slices) + 1, int(metadata.slice_size)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, channels, size, size, generator=generator) * 2 - 1
    model = model.cpu()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings: the check below decides
            # PRESERVE: batch normalisation is exported as BatchNormalization (running statistics),
            # not folded into the convolutions' weights, so the graph computes what PyTorch computes.
            torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["slices"], output_names=["synthetic"],
                              dynamic_axes={"slices": {0: "batch"}, "synthetic": {0: "batch"}},
                              opset_version=ONNX_OPSET, training=torch.onnx.TrainingMode.PRESERVE)
            expected = model(x).numpy()
    except Exception as error:  # noqa: BLE001 - onnx missing, an operator without ONNX form, ...
        raise EngineUnavailable(f"engine onnxruntime: the network could not be exported to ONNX "
                                f"({_first_line(error)})") from None
    graph = buffer.getvalue()
    try:
        got = _session(onnxruntime, graph).run(None, {"slices": x.numpy()})[0]
    except Exception as error:  # noqa: BLE001
        raise EngineUnavailable(f"engine onnxruntime could not run the exported graph ({_first_line(error)})") from None
    difference = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if not difference <= GRAPH_TOLERANCE:
        raise EngineUnavailable(f"engine onnxruntime differs from PyTorch by {difference:.2g} (more than "
                                f"{GRAPH_TOLERANCE:g})")
    return graph, difference


# -- the cache ----------------------------------------------------------------------------------------

def graph_key(metadata, runtime_version: str) -> str:
    """Cache key of a derived graph: the checkpoint's weights and metadata hashes, the exporter
    (torch) and runtime versions and :data:`GRAPH_FORMAT`."""
    text = "|".join([metadata.content_sha256, metadata.metadata_sha256, f"torch {torch_version()}",
                     f"onnxruntime {runtime_version}", f"opset {ONNX_OPSET}", f"format {GRAPH_FORMAT}"])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def manifest_for(metadata, runtime_version: str, graph: bytes, difference: float) -> dict:
    return {"format": GRAPH_FORMAT, "key": graph_key(metadata, runtime_version), "model_id": metadata.model_id,
            "checkpoint_content_sha256": metadata.content_sha256, "checkpoint_metadata_sha256": metadata.metadata_sha256,
            "torch": torch_version(), "onnxruntime": runtime_version, "opset": ONNX_OPSET,
            "graph_sha256": hashlib.sha256(graph).hexdigest(), "max_abs_difference_from_torch": difference}


def read_cached_graph(folder: Path, key: str) -> tuple[bytes | None, str | None]:
    """``(graph bytes, None)`` when ``folder`` holds a complete graph for ``key``; ``(None, why)``
    when it holds a corrupt or stale one; ``(None, None)`` when there is none."""
    graph, _, problem = read_cache_entry(folder, key)
    return graph, problem


def read_cache_entry(folder: Path, key: str, graph_format: int = GRAPH_FORMAT):
    """``(graph bytes, manifest, None)`` for a complete graph for ``key`` in ``folder``, else
    ``(None, None, why)`` (corrupt or stale) or ``(None, None, None)`` (none cached)."""
    manifest_path, graph_path = folder / "manifest.json", folder / "model.onnx"
    if not folder.exists():
        return None, None, None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        graph = graph_path.read_bytes()
    except (OSError, ValueError) as error:
        return None, None, f"unreadable ({_first_line(error)})"
    if not isinstance(manifest, dict) or manifest.get("format") != graph_format or manifest.get("key") != key:
        return None, None, "stale (made for another checkpoint or version)"
    if hashlib.sha256(graph).hexdigest() != manifest.get("graph_sha256"):
        return None, None, "corrupt (its bytes do not match its manifest)"
    return graph, manifest, None


def write_cached_graph(folder: Path, key: str, graph: bytes, manifest: dict) -> bool:
    """Write the graph and its manifest to a new folder beside ``folder`` and rename it into place
    (a reader never sees half a graph); a corrupt or stale ``folder`` is replaced. False when the
    cache cannot be written (the caller uses the graph from memory)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".mrisynthesis-tmp", dir=folder.parent))
    except OSError:
        return False
    try:
        (staging / "model.onnx").write_bytes(graph)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        if folder.exists():  # corrupt or stale: move it aside first (a folder cannot be replaced in one rename)
            old = folder.parent / f".{key}.{uuid.uuid4().hex[:8]}.old.mrisynthesis-tmp"
            with contextlib.suppress(OSError):
                os.replace(folder, old)
                shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(staging, folder)
        except OSError:
            # Another process renamed its (identical) graph into place first: use that one.
            return read_cached_graph(folder, key)[0] is not None
        return True
    except OSError:
        return False
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
