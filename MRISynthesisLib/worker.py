"""The synthesis worker: one run of the core's pipeline (:func:`MRISynthesisLib.pipeline.run`, the
same as the command line's) for a front end that must not block (the Slicer module).

``python -m MRISynthesisLib.worker REQUEST.json`` reads a request, runs the core and writes one JSON
object per line on stdout, flushed as it goes, so the caller can follow the run line by line and kill
the process at any moment (nothing it needs is written before the ``result`` line)::

    {"event": "stage", "stage": "loading model" | "synthesis" | "scoring"}   (pipeline.STAGES)
    {"event": "progress", "stage": "brain extraction" | "synthesis", "done": 12, "total": 40}
    {"event": "warning", "message": "the input does not look like ..."}   (every warning of the pipeline)
    {"event": "note", "message": "brain mask: ..."}
    {"event": "result", "model_id": ..., "files": {"synthetic": "synthetic.npy", ...}, "metrics": {...}}
    {"event": "error", "message": "one line", "kind": "input" | "internal"}

Exit status 0 after ``result``, 2 after an input ``error`` (bad volume, model, mask), 1 otherwise.

The request (JSON) names ``.npy`` files, so voxels cross the process boundary exactly:

- ``input``: float32 ``[i, j, k]`` (``[k, j, i]``, Slicer's order, when ``order`` is ``"kji"``; the
  same for the mask and the reference); ``affine``: its 4x4 index-to-RAS matrix (world, mm);
- ``model`` (catalog id or checkpoint path, or null: the direction's default), ``direction``,
  ``device``, ``precision``, ``engine`` (default "auto"), ``batch_size``, ``uncertainty`` (bool);
- ``brain_mask``: ``"auto"``, ``"extract"``, ``"none"`` or an ``.npy`` (0/1, labels > 0 or
  probabilities > 0.5 = brain, as a mask file);
- ``reference``: an ``.npy`` on the input's grid (float32 ``[i, j, k]``) or null;
- ``output_dir``: where the result arrays go, in the same order as the input (``synthetic.npy``, and
  ``mask.npy`` when the brain was extracted, ``uncertainty.npy``, ``difference.npy`` when asked for).

:func:`run` is the same run in the caller's process, with arrays instead of files (used by the
Slicer module's tests with injected synthesizers, and by :func:`main`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .conventions import PERCENTILE_HIGH, PERCENTILE_LOW
from .volume import Volume

__all__ = ["WorkerResult", "difference_display_max", "display_range", "main", "run"]



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


def difference_display_max(difference: np.ndarray, mask: np.ndarray) -> float:
    """Symmetric display bound of a difference map: the 99.5th percentile of |difference| in the mask."""
    inside = np.abs(difference[mask])
    return float(np.percentile(inside, PERCENTILE_HIGH)) if inside.size else 1.0


def run(request: dict, emit, synthesizers=None) -> WorkerResult:
    """One run of the core's pipeline (:func:`MRISynthesisLib.pipeline.run`, the command line's):
    ``request`` as in the module docstring but with arrays: ``volume`` (a core ``Volume``, world
    affine), ``brain_mask`` ("auto", "extract", "none" or a boolean array), ``reference`` (an array on the
    volume's grid, or None). ``emit(event_dict)`` gets every event as it happens; a progress event's
    return value False cancels (:class:`~.errors.Cancelled`). ``synthesizers``: the pipeline's
    synthesizer factory (a cache or test fakes; default: a new synthesizer per run)."""
    from .pipeline import SynthesisRequest, create_synthesizer
    from .pipeline import run as run_pipeline

    volume = request["volume"]
    reference = request.get("reference")
    stop = []

    def progress(stage, done, total):
        event = {"event": "stage", "stage": stage} if done == 0 and total == 0 else \
            {"event": "progress", "stage": stage, "done": int(done), "total": int(total)}
        if emit(event) is False:
            stop.append(True)

    result = run_pipeline(SynthesisRequest(
        input=volume, model=request.get("model") or None, direction=request.get("direction"),
        device=request.get("device", "auto"), precision=request.get("precision", "auto"),
        engine=request.get("engine", "auto"),
        batch_size=int(request.get("batch_size", 8)), brain_mask=request.get("brain_mask", "auto"),
        uncertainty=bool(request.get("uncertainty")),
        reference=None if reference is None else Volume(np.asarray(reference, dtype=np.float32), volume.affine)),
        progress=progress, cancelled=lambda: bool(stop), synthesizers=synthesizers or create_synthesizer)

    synthetic = np.asarray(result.synthetic.array, dtype=np.float32)
    warnings = list(result.warnings)
    info = {"model_id": result.metadata.model_id, "title": result.metadata.title,
            "direction": result.metadata.direction, "checkpoint": str(result.model_path), "device": result.device,
            "batch_size": int(result.batch_size), "precision": result.precision, "engine": result.engine,
            "mask_source": result.brain_mask.source, "mask_description": result.brain_mask.describe(),
            "display_range": list(display_range(synthetic)), "metrics": None, "conventions_text": None,
            "difference_display_max": None}
    difference = None
    if result.score is not None:
        difference = result.score.difference()
        info["metrics"] = dict(result.score)
        info["conventions_text"] = result.score.conventions_text()  # shown as it is (no metrics import there)
        info["difference_display_max"] = difference_display_max(difference, result.score.mask)
        warnings += [w for w in result.score.warnings if w not in warnings]
    for warning in warnings:
        emit({"event": "warning", "message": warning})
    for note in result.notes:
        emit({"event": "note", "message": note})
    return WorkerResult(synthetic, info, mask=result.brain_mask.mask if result.brain_mask.source == "extracted" else None,
                        uncertainty=None if result.uncertainty is None else
                        np.asarray(result.uncertainty.array, dtype=np.float32),
                        difference=difference, warnings=warnings, notes=list(result.notes))


# --- the process ------------------------------------------------------------------------------------

def _print_event(event: dict):
    from .metrics import json_compatible

    sys.stdout.write(json.dumps(json_compatible(event)) + "\n")
    sys.stdout.flush()
    return True


def _request_from_file(path: Path) -> dict:
    request = json.loads(Path(path).read_text(encoding="utf-8"))
    folder = Path(path).parent

    def array(name):
        return np.load(folder / name, allow_pickle=False)

    def ijk(name):  # the files are [k, j, i] (Slicer's order) when the request says so
        values = array(name)
        return values.transpose(2, 1, 0) if request.get("order") == "kji" else values

    request["volume"] = Volume(ijk(request["input"]).astype(np.float32, copy=False),
                               np.asarray(request["affine"], dtype=np.float64))
    mask = request.get("brain_mask", "auto")
    if mask not in ("auto", "extract", "none"):
        request["brain_mask"] = ijk(mask)  # read like a mask file (brain_extraction.mask_from_values)
    if request.get("reference"):
        request["reference"] = ijk(request["reference"])
    return request


def _write_result(result: WorkerResult, output_dir: Path, order: str = "ijk") -> dict:
    """The result arrays as ``.npy`` files, in the request's ``order`` (``"kji"``: Slicer's, so the
    module copies them into its nodes without transposing on its main thread)."""
    files = {}
    for name in ("synthetic", "mask", "uncertainty", "difference"):
        array = getattr(result, name)
        if array is not None:
            array = np.asarray(array).transpose(2, 1, 0) if order == "kji" else np.asarray(array)
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
        files = _write_result(result, Path(request["output_dir"]), request.get("order", "ijk"))
    except (MRISynthesisError, ValueError) as error:
        _print_event({"event": "error", "message": str(error), "kind": "input"})
        return 2
    except Exception as error:  # noqa: BLE001 - reported to the caller, which shows it
        import traceback

        traceback.print_exc(file=sys.stderr)
        _print_event({"event": "error", "message": f"{type(error).__name__}: {error}", "kind": "internal"})
        return 1
    _print_event({"event": "result", **result.info, "files": files, "warnings": result.warnings,
                  "notes": result.notes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
