"""The synthesis worker: one run of the core for a front end that must not block (the Slicer module).

``python -m MRISynthesisLib.worker REQUEST.json`` reads a request, runs the core and writes one JSON
object per line on stdout, flushed as it goes, so the caller can follow the run line by line and kill
the process at any moment (nothing it needs is written before the ``result`` line)::

    {"event": "stage", "stage": "loading the model" | "brain extraction" | "synthesis" | "comparison"}
    {"event": "progress", "stage": "synthesis", "done": 12, "total": 40}
    {"event": "warning", "message": "the input does not look like ..."}
    {"event": "note", "message": "The GPU (cuda) ran out of memory ...; retrying with batch size 1."}
    {"event": "result", "model_id": ..., "files": {"synthetic": "synthetic.npy", ...}, "metrics": {...}}
    {"event": "error", "message": "one line", "kind": "input" | "internal"}

Exit status 0 after ``result``, 2 after an input ``error`` (bad volume, model, mask), 1 otherwise.

The request (JSON) names ``.npy`` files, so voxels cross the process boundary exactly:

- ``input``: float32 ``[i, j, k]``; ``affine``: its 4x4 index-to-RAS matrix (world, mm);
- ``model`` (catalog id or checkpoint path, or null: the direction's default), ``direction``,
  ``device``, ``precision``, ``batch_size``, ``uncertainty`` (bool);
- ``brain_mask``: ``"auto"``, ``"none"`` or an ``.npy`` (``[i, j, k]``, non-zero = brain);
- ``reference``: an ``.npy`` on the input's grid (float32 ``[i, j, k]``) or null;
- ``output_dir``: where the result arrays go (``synthetic.npy``, and ``mask.npy`` when the brain
  was extracted, ``uncertainty.npy``, ``difference.npy`` when asked for).

:func:`run` is the same run in the caller's process, with arrays instead of files (used by the
Slicer module's tests with injected synthesizers, and by :func:`main`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .conventions import PERCENTILE_HIGH, PERCENTILE_LOW

STAGES = ("loading the model", "brain extraction", "synthesis", "comparison")


@dataclass
class WorkerResult:
    """What :func:`run` made; arrays ``[i, j, k]`` on the input's grid."""

    synthetic: np.ndarray
    info: dict  # the ``result`` event without its ``files``
    mask: np.ndarray | None = None  # the extracted brain mask (bool), None unless extracted
    uncertainty: np.ndarray | None = None
    difference: np.ndarray | None = None
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def display_range(array: np.ndarray, low: float = PERCENTILE_LOW, high: float = PERCENTILE_HIGH) -> tuple:
    """(min, max) window for showing a synthetic volume: percentiles of its non-zero voxels (the
    background is 0), the low end at most 0 so the background stays black."""
    values = np.asarray(array)[np.asarray(array) != 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    lo = min(lo, 0.0)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def compare_with_reference(synthetic: np.ndarray, reference: np.ndarray, mask: np.ndarray | None,
                           affine: np.ndarray) -> tuple[dict, np.ndarray, float]:
    """Metrics of ``synthetic`` against ``reference`` (same grid) in the command line's convention
    (``evaluate --normalisation model-units``: the synthetic as it is, the reference
    percentile-normalised in the mask), the difference map (synthetic - reference in those units, 0
    outside the mask) and its symmetric display bound. ``mask`` None: the reference's brain mask.
    SSIM runs on the slices that are axial for ``affine``."""
    from .errors import InputError
    from .metrics import evaluate
    from .orientation import find_axial_axis
    from .preprocessing import brain_mask, percentile_normalise

    if mask is None:
        mask = brain_mask(reference)
    if not np.any(mask):
        raise InputError("the reference volume has no brain voxels where the synthetic volume is; do the two "
                         "volumes overlap in space (same patient, registered)?")
    metrics = evaluate(synthetic, reference, mask, normalisation="model-units", slice_axis=find_axial_axis(affine))
    reference_units, _ = percentile_normalise(reference, mask)
    difference = np.where(mask, synthetic - reference_units, 0.0).astype(np.float32)
    inside = np.abs(difference[mask])
    display_max = float(np.percentile(inside, PERCENTILE_HIGH)) if inside.size else 1.0
    return metrics, difference, display_max


def default_synthesizer_factory(checkpoint, device, batch_size, precision="auto"):
    from .synthesis import Synthesizer

    return Synthesizer(checkpoint, device=device, batch_size=batch_size, precision=precision)


def run(request: dict, emit, create_synthesizer=default_synthesizer_factory, first=None) -> WorkerResult:
    """One run: resolve the model, load it, choose the brain mask, synthesize (with the GPU
    out-of-memory fallback), compare with the reference. ``request`` as in the module docstring but
    with arrays: ``volume`` (a core ``Volume``, world affine), ``brain_mask`` ("auto", "none" or a
    boolean array), ``reference`` (array or None). ``emit(event_dict)`` gets every event as it
    happens; a progress event's return value False cancels (:class:`~.errors.Cancelled`).
    ``create_synthesizer(checkpoint, device, batch_size, precision)`` makes the synthesizers
    (injected by tests); ``first`` is an already loaded synthesizer of the same checkpoint."""
    from . import catalog
    from .brain_extraction import choose_brain_mask
    from .errors import Cancelled
    from .synthesis import (UNCERTAINTY_SAMPLES, check_model_request, device_name, require_positive_intensities,
                            synthesize_with_fallback)

    started = time.time()
    volume, direction = request["volume"], request["direction"]
    device, batch_size, precision = request.get("device", "auto"), int(request.get("batch_size", 8)), \
        request.get("precision", "auto")

    def reporter(stage):
        def report(done, total):
            if emit({"event": "progress", "stage": stage, "done": int(done), "total": int(total)}) is False:
                raise Cancelled("cancelled")
            return True
        return report

    emit({"event": "stage", "stage": "loading the model"})
    checkpoint = catalog.resolve_model(request.get("model") or None, direction=direction)
    require_positive_intensities(volume.array)
    synthesizer = first if first is not None else create_synthesizer(checkpoint, device, batch_size, precision)
    synthesizer.batch_size = batch_size
    check_model_request(synthesizer.metadata, direction, bool(request.get("uncertainty")),
                        synthesizer.supports_uncertainty)

    choice = request.get("brain_mask", "auto")
    if isinstance(choice, str) and choice == "auto":
        from .preprocessing import looks_skull_stripped

        if not looks_skull_stripped(volume.array):
            emit({"event": "stage", "stage": "brain extraction"})
    chosen = choose_brain_mask(volume, choice, device=getattr(synthesizer, "device", "cpu"),
                               progress=reporter("brain extraction"))

    emit({"event": "stage", "stage": "synthesis"})
    created = []

    def create_after_out_of_memory(retry_device, retry_batch_size):
        created.append(retry_device)
        return create_synthesizer(checkpoint, retry_device, retry_batch_size, precision)

    synthesis = synthesize_with_fallback(create_after_out_of_memory, volume, device, batch_size, first=synthesizer,
                                         progress=reporter("synthesis"), mask=chosen.mask,
                                         uncertainty_samples=UNCERTAINTY_SAMPLES if request.get("uncertainty") else 0)
    warnings = [f"the input does not look like the brain MRI the model was trained on: {warning}"
                for warning in (synthesis.synthetic.meta or {}).get("input_check", {}).get("warnings", [])]
    warnings += list(getattr(chosen, "warnings", ()) or ())  # mask sanity warnings, where the core gives them
    for warning in warnings:
        emit({"event": "warning", "message": warning})
    for note in synthesis.notes:
        emit({"event": "note", "message": note})

    metadata = synthesis.synthesizer.metadata
    resolved = getattr(synthesis.synthesizer, "precision", None)
    info = {"model_id": metadata.model_id, "title": metadata.title, "direction": metadata.direction,
            "checkpoint": str(checkpoint), "device": device_name(synthesis.synthesizer),
            "batch_size": int(synthesis.synthesizer.batch_size),
            "precision": resolved.describe() if hasattr(resolved, "describe") else str(resolved or ""),
            "mask_source": chosen.source, "mask_description": chosen.describe(),
            "display_range": list(display_range(synthesis.synthetic.array)), "metrics": None,
            "difference_display_max": None}
    result = WorkerResult(np.asarray(synthesis.synthetic.array, dtype=np.float32), info,
                          mask=chosen.mask if chosen.source == "extracted" else None,
                          uncertainty=None if synthesis.uncertainty is None else
                          np.asarray(synthesis.uncertainty.array, dtype=np.float32),
                          warnings=warnings, notes=list(synthesis.notes))
    if request.get("reference") is not None:
        emit({"event": "stage", "stage": "comparison"})
        metrics, result.difference, info["difference_display_max"] = compare_with_reference(
            result.synthetic, np.asarray(request["reference"], dtype=np.float32), chosen.mask, volume.affine)
        info["metrics"] = metrics
        for warning in metrics.get("warnings", []):
            result.warnings.append(warning)
            emit({"event": "warning", "message": warning})
    info["seconds"] = time.time() - started
    return result


# --- the process ------------------------------------------------------------------------------------

def _print_event(event: dict):
    from .metrics import json_compatible

    sys.stdout.write(json.dumps(json_compatible(event)) + "\n")
    sys.stdout.flush()
    return True


def _request_from_file(path: Path) -> dict:
    from .volume import Volume

    request = json.loads(Path(path).read_text(encoding="utf-8"))
    folder = Path(path).parent

    def array(name):
        return np.load(folder / name, allow_pickle=False)

    request["volume"] = Volume(array(request["input"]).astype(np.float32, copy=False),
                               np.asarray(request["affine"], dtype=np.float64))
    mask = request.get("brain_mask", "auto")
    if mask not in ("auto", "none"):
        request["brain_mask"] = array(mask) != 0
    if request.get("reference"):
        request["reference"] = array(request["reference"])
    return request


def _write_result(result: WorkerResult, output_dir: Path) -> dict:
    files = {}
    for name in ("synthetic", "mask", "uncertainty", "difference"):
        array = getattr(result, name)
        if array is not None:
            np.save(output_dir / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
            files[name] = f"{name}.npy"
    return files


def main(argv=None) -> int:
    from .errors import MRISynthesisError

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m MRISynthesisLib.worker REQUEST.json\n")
        return 2
    try:
        request = _request_from_file(Path(argv[0]))
        result = run(request, _print_event)
        files = _write_result(result, Path(request["output_dir"]))
    except (MRISynthesisError, ValueError) as error:
        _print_event({"event": "error", "message": str(error), "kind": "input"})
        return 2
    except Exception as error:  # noqa: BLE001 - reported to the caller, which shows it
        import traceback

        traceback.print_exc(file=sys.stderr)
        _print_event({"event": "error", "message": f"{type(error).__name__}: {error}", "kind": "internal"})
        return 1
    _print_event(dict(result.info, event="result", files=files, warnings=result.warnings, notes=result.notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
