"""The brain extractor's networks on ONNX Runtime: graphs derived from deepbet's installed weights.

When synthesis runs on ONNX Runtime (:mod:`MRISynthesisLib.engines`), the brain-mask decision runs
deepbet's coarse network there too (:func:`coarse_probability`), without PyTorch once its graph is
cached: about 1 CPU-second instead of PyTorch's 3, and no PyTorch import or TorchScript loading.
The ``torch`` engine keeps deepbet's own PyTorch networks (the reference).

The graph is derived from deepbet's TorchScript file, never a second source of truth: it is
exported on first use, checked against the PyTorch network on the input at hand, and cached beside
the models' graphs (:func:`MRISynthesisLib.engines.cache_folder`) under a key of the weight file's
SHA-256 (which must be the validated one, :data:`MRISynthesisLib.brain_extraction.DEEPBET_WEIGHTS`)
and the exporter and runtime versions; a corrupt or stale entry is rebuilt, never used.

Instance normalisation is exported with its statistics in float64: ONNX Runtime's float32
``InstanceNormalization`` (and a float32 mean over 2 million voxels) moved deepbet's probabilities
by 6e-3 on real scans, enough to flip voxels at the 0.5 threshold. With float64 statistics the
graph is within 3e-5 of PyTorch float32, which is itself 2e-5 from a float64 PyTorch run of the
same network: the network amplifies float32 rounding, so :data:`TOLERANCE` is 1e-4 (the masks and
decisions measured were identical).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import warnings
from pathlib import Path

import numpy as np

from .checkpoint import file_sha256
from .engines import (ONNX_OPSET, EngineUnavailable, cache_folder, onnxruntime_session, read_cache_entry, torch_version,
                      write_cached_graph)
from .errors import InputError, first_line

#: Largest difference of a derived graph's probabilities from deepbet's PyTorch network (float32).
TOLERANCE = 1e-4
#: Bumped when the export or the manifest changes, so older cached graphs are rebuilt.
GRAPH_FORMAT = 1


def weights_folder() -> Path:
    """deepbet's ``data/models`` folder, found without importing deepbet (which imports PyTorch)."""
    spec = importlib.util.find_spec("deepbet")
    if spec is None or spec.origin is None:
        raise InputError("automatic brain extraction needs the 'deepbet' package; install it with "
                         "'pip install deepbet==1.0.2', or give a brain mask, or choose no extraction")
    return Path(spec.origin).resolve().parents[1] / "data" / "models"


def checked_weights(name: str, expected: str) -> Path:
    """The path of deepbet's weight file ``name``; :class:`InputError` when it is missing or its
    SHA-256 is not ``expected`` (also the check of :func:`MRISynthesisLib.brain_extraction._deepbet`)."""
    path = weights_folder() / name
    if not path.is_file():
        raise InputError(f"deepbet's weight file {path} is missing; reinstall deepbet==1.0.2")
    if file_sha256(path) != expected:
        raise InputError(f"deepbet's weight file {path} is not the validated version (SHA-256 differs); "
                         "install deepbet==1.0.2")
    return path


def coarse_probability(x: np.ndarray, weights_sha256: str, torch_network=None) -> np.ndarray:
    """Brain probability ``(128, 128, 128)`` of deepbet's coarse network for its normalised input
    ``x`` (same shape, float32), on ONNX Runtime. ``torch_network()`` gives deepbet's PyTorch
    network (called only to build a missing graph). :class:`EngineUnavailable` when ONNX Runtime is
    missing or the graph cannot be made within :data:`TOLERANCE`."""
    onnxruntime = _onnxruntime()
    session = _cached_session(onnxruntime, "bbox_model.pt", weights_sha256, x, torch_network)
    batch = np.ascontiguousarray(x, dtype=np.float32)[None, None]
    return session.run(None, {session.get_inputs()[0].name: batch})[0][0, 1]


def graph_key(name: str, weights_sha256: str, runtime_version: str) -> str:
    text = "|".join([f"deepbet {name} {weights_sha256}", f"torch {torch_version()}", f"onnxruntime {runtime_version}",
                     f"opset {ONNX_OPSET}", f"format {GRAPH_FORMAT}"])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _onnxruntime():
    try:
        import onnxruntime
    except Exception as error:  # noqa: BLE001 - ImportError, or a broken installation
        raise EngineUnavailable(f"engine onnxruntime is not available ({first_line(error)})") from None
    with contextlib.suppress(Exception):
        onnxruntime.disable_telemetry_events()
    return onnxruntime


def _cached_session(onnxruntime, name: str, weights_sha256: str, x: np.ndarray, torch_network):
    key = graph_key(name, weights_sha256, onnxruntime.__version__)
    folder = cache_folder() / "onnx" / key
    graph, _, _ = read_cache_entry(folder, key, GRAPH_FORMAT)
    if graph is not None:
        try:
            return onnxruntime_session(onnxruntime, graph)
        except Exception:  # noqa: BLE001 - a graph ONNX Runtime cannot load is rebuilt
            pass
    if torch_network is None:
        raise EngineUnavailable(f"no graph of deepbet's {name} is cached")
    graph, difference = export_graph(torch_network(), x, onnxruntime)
    write_cached_graph(folder, key, graph, {
        "format": GRAPH_FORMAT, "key": key, "network": f"deepbet {name}", "weights_sha256": weights_sha256,
        "torch": torch_version(), "onnxruntime": onnxruntime.__version__, "opset": ONNX_OPSET,
        "graph_sha256": hashlib.sha256(graph).hexdigest(), "max_abs_difference_from_torch": difference})
    return onnxruntime_session(onnxruntime, graph)


def export_graph(network, x: np.ndarray, onnxruntime) -> tuple[bytes, float]:
    """The ONNX graph of deepbet's TorchScript ``network`` (on the CPU; instance normalisation with float64
    statistics) and its largest difference from PyTorch on ``x``; :class:`EngineUnavailable` when it
    cannot be exported or differs by more than :data:`TOLERANCE`."""
    import torch

    batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings: the check below decides
            torch.onnx.export(network, (batch,), buffer, dynamo=False, input_names=["x"], output_names=["probability"],
                              opset_version=ONNX_OPSET)
            expected = network(batch)[0, 1].numpy()
        graph = _float64_instance_norm(buffer.getvalue())
    except Exception as error:  # noqa: BLE001 - onnx missing, an operator without ONNX form, ...
        raise EngineUnavailable(f"engine onnxruntime: deepbet's network could not be exported to ONNX "
                                f"({first_line(error)})") from None
    try:
        got = onnxruntime_session(onnxruntime, graph).run(None, {"x": batch.numpy()})[0][0, 1]
    except Exception as error:  # noqa: BLE001
        raise EngineUnavailable(f"engine onnxruntime could not run deepbet's graph ({first_line(error)})") from None
    difference = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if not difference <= TOLERANCE:
        raise EngineUnavailable(f"engine onnxruntime: deepbet's graph differs from PyTorch by {difference:.2g} "
                                f"(more than {TOLERANCE:g})")
    return graph, difference


def _float64_instance_norm(graph: bytes) -> bytes:
    """``graph`` with each ``InstanceNormalization`` replaced by the same formula whose mean and
    variance are computed in float64 (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(graph)
    rank = len(model.graph.input[0].type.tensor_type.shape.dim)
    axes = list(range(2, rank))
    nodes = []
    for number, node in enumerate(model.graph.node):
        if node.op_type != "InstanceNormalization":
            nodes.append(node)
            continue
        epsilon = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-5)
        x, scale, bias = node.input
        p = f"instance_norm_{number}_"
        nodes += [
            helper.make_node("Cast", [x], [p + "x"], to=TensorProto.DOUBLE),
            helper.make_node("ReduceMean", [p + "x"], [p + "mean"], axes=axes, keepdims=1),
            helper.make_node("Sub", [p + "x", p + "mean"], [p + "centred"]),
            helper.make_node("Mul", [p + "centred", p + "centred"], [p + "squared"]),
            helper.make_node("ReduceMean", [p + "squared"], [p + "variance"], axes=axes, keepdims=1),
            helper.make_node("Constant", [], [p + "epsilon"], value=numpy_helper.from_array(np.array(epsilon))),
            helper.make_node("Add", [p + "variance", p + "epsilon"], [p + "variance_epsilon"]),
            helper.make_node("Sqrt", [p + "variance_epsilon"], [p + "deviation"]),
            helper.make_node("Div", [p + "centred", p + "deviation"], [p + "normalised"]),
            helper.make_node("Cast", [p + "normalised"], [p + "normalised_float"], to=TensorProto.FLOAT),
            helper.make_node("Constant", [], [p + "shape"],
                             value=numpy_helper.from_array(np.array([1, -1] + [1] * len(axes), dtype=np.int64))),
            helper.make_node("Reshape", [scale, p + "shape"], [p + "scale"]),
            helper.make_node("Reshape", [bias, p + "shape"], [p + "bias"]),
            helper.make_node("Mul", [p + "normalised_float", p + "scale"], [p + "scaled"]),
            helper.make_node("Add", [p + "scaled", p + "bias"], list(node.output)),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model.SerializeToString()
