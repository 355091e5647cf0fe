"""One synthesis run, the same for every front end: :class:`SynthesisRequest` in, :class:`SynthesisResult` out.

The command line (``mrisynthesis synthesize``), the BIDS App and the Slicer module's worker process
all describe what they want as a :class:`SynthesisRequest` and call :func:`run`, which does, in
this order::

    resolve the model -> check the request -> load the input -> choose the brain mask
    -> synthesise (a GPU that runs out of memory is retried with batch size 1, then on the CPU)
    -> score against the reference (when one is given)

and returns a :class:`SynthesisResult`: the synthetic volume (and the uncertainty map), the mask
used, the model, the device and precision that ran, every warning the user must see (input check,
out-of-memory fallbacks, brain mask, reference problems, Python warnings raised on the way) and
informational notes. Front ends only turn their own inputs into a request, show the progress,
and write or display the result; they add no synthesis logic of their own.

Nothing is written to disk here: writing outputs (atomically, all or none) is the front end's job
(:func:`MRISynthesisLib.io.write_outputs`). The synthetic volume's ``meta['provenance']`` records
what made it (model and its content hash, device, precision, brain-mask source, the input's content
hash, warnings); :func:`MRISynthesisLib.io.nifti_image` stores it in the file.

Example (no Slicer, no files)::

    from MRISynthesisLib.pipeline import SynthesisRequest, run
    result = run(SynthesisRequest(volume, direction="t1-to-t2", device="cpu", precision="fp32"))
    result.synthetic, result.warnings

Progress and cancelling: ``progress(stage, done, total)`` is called with ``stage`` one of
:data:`STAGES` ("brain extraction" reports 3 steps, "synthesis" one step per batch of slices;
``done = total = 0`` announces that a stage starts); ``cancelled()`` is polled between stages and
after every step, and returning True raises :class:`~MRISynthesisLib.errors.Cancelled`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from .brain_extraction import BrainMaskChoice
from .checkpoint import ModelMetadata
from .errors import Cancelled, InputError, MRISynthesisError
from .metrics import Score
from .volume import Volume

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = [
    "INPUT_CHECK_WARNING", "STAGES", "SynthesisRequest", "SynthesisResult", "SynthesizerCache",
    "SynthesizerFactory", "SynthesizerLike", "create_synthesizer", "load_brain_mask_file",
    "require_same_grid", "resolve_request_model", "run", "volume_sha256"]

#: The stages :func:`run` reports through ``progress(stage, done, total)``, in order.
STAGES = ("loading model", "brain extraction", "synthesis", "scoring")
#: Prefix of the input check's warnings, as every front end shows them.
INPUT_CHECK_WARNING = "the input does not look like the brain MRI the model was trained on: "
#: What :func:`volume_sha256` hashes (recorded beside the hash in the provenance).
INPUT_HASH_CONVENTION = "sha256 of the float32 voxels [i, j, k] in C order, then the float64 4x4 affine"


@dataclass
class SynthesisRequest:
    """What to synthesise and how; every field has the command line's default.

    - ``input``: a :class:`Volume` or the path of a NIfTI/NRRD file.
    - ``model``: catalog id or ``.safetensors`` path; None = the default model of ``direction``.
    - ``direction``: 't1-to-t2' or 't2-to-t1' (aliases accepted); None = the model's own (or the
      default direction when no model is named). A model of the other direction is refused.
    - ``device``: 'auto', 'cpu', 'cuda' or 'mps'; ``precision``: 'auto', 'fp32', 'bf16' or 'fp16'
      (:func:`MRISynthesisLib.device.resolve_precision`); ``batch_size``: slices per forward pass;
      ``engine``: what runs the network, 'auto', 'torch', 'torch-channels-last' or 'onnxruntime'
      (:mod:`MRISynthesisLib.engines`; what 'auto' picks gives the PyTorch float32 result within 1e-5).
    - ``brain_mask``: 'auto' (skull-stripped inputs as they are, whole-head scans brain-extracted),
      'extract' (always extract), 'none', the path of a mask file on the input's grid, or a mask
      array ``[i, j, k]`` (non-zero = brain).
    - ``uncertainty``: also a standard-deviation map (models that can sample only);
      ``flip_tta``: average with the left-right mirrored prediction.
    - ``reference``: a real target-contrast :class:`Volume` or file on the input's grid; the result
      is then scored (:func:`MRISynthesisLib.metrics.score`, model-units conventions) inside the
      brain mask used for synthesis when it was extracted or given, else inside the reference's
      automatic brain mask. A reference on another grid or unreadable gives a warning, not an error.

    The fields are plain values (picklable), so a request can be sent to a worker process.
    """

    input: Volume | str | os.PathLike
    model: str | os.PathLike | None = None
    direction: str | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    brain_mask: str | os.PathLike | np.ndarray = "auto"
    uncertainty: bool = False
    flip_tta: bool = False
    reference: Volume | str | os.PathLike | None = None
    engine: str = "auto"


@dataclass
class SynthesisResult:
    """What :func:`run` made, and every message about it.

    ``synthetic`` (and ``uncertainty``, or None): volumes on exactly the input's grid, in normalised
    units; ``input``: the input volume as read; ``brain_mask``: the mask choice (its ``mask`` is
    None when the synthesizer used its own foreground mask, see :meth:`mask_used`);
    ``metadata`` and ``model_path``: the model; ``device`` ('cpu', 'cuda', ...), ``precision``
    (e.g. 'fp32', 'bf16 + channels_last'), ``batch_size`` and ``engine`` (e.g. 'onnxruntime'): what
    finally ran (after any out-of-memory or engine fallback); ``warnings``: sentences every front end
    shows as warnings (input check, fallbacks, brain mask, reference); ``notes``: informational sentences (model, device,
    brain mask); ``score``: the comparison with the reference, or None.
    """

    synthetic: Volume
    uncertainty: Volume | None
    input: Volume
    brain_mask: BrainMaskChoice
    metadata: ModelMetadata
    model_path: Path
    device: str
    precision: str
    batch_size: int
    engine: str = "torch"
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    score: Score | None = None

    def mask_used(self) -> np.ndarray:
        """The boolean ``[i, j, k]`` mask synthesis worked in (for saving or showing it)."""
        from .brain_extraction import mask_used

        return mask_used(self.input, self.brain_mask)


class SynthesizerLike(Protocol):
    """What :func:`run` needs of a synthesizer (:class:`MRISynthesisLib.synthesis.Synthesizer` is
    one; tests may pass others through a :class:`SynthesizerFactory`)."""

    device: object          # torch.device
    precision: object       # MRISynthesisLib.device.Precision
    batch_size: int
    metadata: ModelMetadata

    @property
    def supports_uncertainty(self) -> bool: ...

    def synthesize(self, volume: Volume, progress=None, mask=None) -> Volume:
        """The synthetic volume; its ``meta['input_check']`` holds the input check
        (:meth:`MRISynthesisLib.input_check.InputCheck.as_dict`: at least ``warnings``)."""

    def synthesize_with_uncertainty(self, volume: Volume, samples: int = 8, progress=None, mask=None): ...


class SynthesizerFactory(Protocol):
    """``factory(model_path, device, batch_size, precision, flip_tta, engine='auto')`` -> a
    :class:`SynthesizerLike`; ``engine`` is passed (as a keyword) only when the request names one."""

    def __call__(self, model_path: Path, device: str, batch_size: int, precision: str,
                 flip_tta: bool, engine: str = "auto") -> SynthesizerLike: ...


def create_synthesizer(model_path, device, batch_size, precision, flip_tta, engine="auto") -> SynthesizerLike:
    """The default :class:`SynthesizerFactory`: a new :class:`~MRISynthesisLib.synthesis.Synthesizer`."""
    from . import synthesis

    return synthesis.Synthesizer(model_path, device=device, batch_size=batch_size, precision=precision,
                                 flip_tta=flip_tta, engine=engine)


class SynthesizerCache:
    """A :class:`SynthesizerFactory` that keeps the last synthesizer and returns it again while the
    checkpoint file (path, modification time, size), device, precision, ``flip_tta`` and engine are the
    same (loading and hashing a checkpoint takes seconds; the BIDS App runs one model on many
    inputs). One entry only: a second model on the GPU would double its memory. The batch size is
    set on the returned synthesizer."""

    def __init__(self, create: SynthesizerFactory = create_synthesizer):
        self.create = create
        self.key, self.synthesizer = None, None

    def __call__(self, model_path, device, batch_size, precision, flip_tta=False, engine="auto") -> SynthesizerLike:
        path = Path(model_path).resolve()
        stat = os.stat(path)
        key = (str(path), stat.st_mtime_ns, stat.st_size, str(device), str(precision), bool(flip_tta), str(engine))
        if key != self.key:
            self.clear()  # the old model's memory is released before the new one loads
            named = {} if str(engine).lower() == "auto" else {"engine": engine}  # factories may predate it
            self.synthesizer = self.create(model_path, device, batch_size, precision, flip_tta, **named)
            self.key = key
        self.synthesizer.batch_size = int(batch_size)
        return self.synthesizer

    def clear(self) -> None:
        self.key, self.synthesizer = None, None


def run(request: SynthesisRequest, *, progress: Callable | None = None, cancelled: Callable | None = None,
        synthesizers: SynthesizerFactory = create_synthesizer) -> SynthesisResult:
    """Carry out ``request``; see the module docstring for the steps, progress and cancelling.

    ``synthesizers`` makes the synthesizer of each attempt (:class:`SynthesizerCache` keeps a
    loaded model between runs). Raises :class:`~MRISynthesisLib.errors.MRISynthesisError`
    subclasses with one-line messages for bad requests and inputs (before any synthesis where
    possible), :class:`~MRISynthesisLib.errors.Cancelled` when cancelled, ``MemoryError`` when the
    CPU runs out of memory. Nothing is written to disk; the input is never modified.
    """
    from .synthesis import UNCERTAINTY_SAMPLES, check_model_request, require_large_enough_slices, \
        require_positive_intensities, synthesize_with_fallback

    stage = _StageReporter(progress, cancelled)
    batch_size = _check_batch_size(request.batch_size)
    model_path, metadata = resolve_request_model(request)  # before the volume is read
    # An integer file (int16 as scanners store it) stays integer: half the memory of float32.
    volume = request.input if isinstance(request.input, Volume) else _load(request.input, keep_integers=True)
    mask_choice = _mask_choice(request.brain_mask, volume)
    require_positive_intensities(volume.array)  # before brain extraction, which would blame the mask
    require_large_enough_slices(volume)  # before brain extraction, which would run for nothing

    def create(device, size):  # also the out-of-memory fallbacks' synthesizers
        engine = {} if str(request.engine).lower() == "auto" else {"engine": request.engine}  # factories may predate it
        return synthesizers(model_path, device, size, request.precision, request.flip_tta, **engine)

    stage.start("loading model")
    synthesizer = create(request.device, batch_size)
    check_model_request(metadata, uncertainty=bool(request.uncertainty), can_sample=synthesizer.supports_uncertainty)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from .brain_extraction import choose_brain_mask, release_extractor

        chosen = choose_brain_mask(volume, mask_choice, device=synthesizer.device,
                                   progress=stage.reporter("brain extraction"),
                                   engine=getattr(getattr(synthesizer, "engine", None), "name", "torch"))
        release_extractor()  # its memory is not needed for synthesis (a 512 x 512 x 300 volume: < 1 GB)
        stage.start("synthesis")
        fallback = synthesize_with_fallback(create, volume, request.device, batch_size, first=synthesizer,
                                            progress=stage.reporter("synthesis"), mask=chosen.mask,
                                            uncertainty_samples=UNCERTAINTY_SAMPLES if request.uncertainty else 0)
        caught_warnings = [str(w.message) for w in caught]
    stage.check()
    used = fallback.synthesizer
    result = SynthesisResult(
        synthetic=fallback.synthetic, uncertainty=fallback.uncertainty, input=volume, brain_mask=chosen,
        metadata=metadata, model_path=Path(model_path), device=used.device.type,
        precision=used.precision.describe(), batch_size=int(used.batch_size),
        engine=getattr(getattr(used, "engine", None), "name", "torch"))
    check = result.synthetic.meta["input_check"]
    engine_notes = list(getattr(getattr(used, "engine", None), "notes", []))  # e.g. an engine fallen back to PyTorch
    result.warnings = _unique(engine_notes + list(fallback.notes) + list(chosen.warnings)
                              + [INPUT_CHECK_WARNING + w for w in check["warnings"]] + caught_warnings)
    if request.reference is not None:
        stage.start("scoring")
        result.score = _score_reference(request.reference, result, result.warnings)
        if result.score is not None:  # e.g. a reference whose mask reaches far beyond the synthetic brain
            result.warnings += [w for w in result.score.warnings if w not in result.warnings]
    result.notes = [f"model: {metadata.model_id} ({metadata.architecture}, {metadata.source_contrast} -> "
                    f"{metadata.target_contrast}) on {result.device}, {result.precision}, engine {result.engine}",
                    f"brain mask: {chosen.describe()}"]
    _record_provenance(result)
    return result


# -- the steps ------------------------------------------------------------------------------------

def resolve_request_model(request: SynthesisRequest) -> tuple[Path, ModelMetadata]:
    """The checkpoint path and metadata ``request`` asks for, checked against its direction
    (before any volume is read; a front end may call it early to refuse a bad request at once)."""
    from . import catalog
    from .checkpoint import read_metadata
    from .conventions import DEFAULT_DIRECTION, DIRECTION_ALIASES
    from .synthesis import check_model_request

    direction = None
    if request.direction is not None:
        direction = DIRECTION_ALIASES.get(str(request.direction).lower())
        if direction is None:
            raise InputError(f"unknown direction '{request.direction}'; expected one of "
                             f"{', '.join(sorted(DIRECTION_ALIASES))}")
    model = None if request.model is None else str(request.model)
    model_path = catalog.resolve_model(model, direction or (DEFAULT_DIRECTION if model is None else None))
    # The architecture is checked when the network is built, or was when a cached graph was derived
    # from this very checkpoint (MRISynthesisLib.engines): checking it here would import PyTorch.
    metadata = read_metadata(model_path, check_architecture=False)
    check_model_request(metadata, direction)
    return Path(model_path), metadata


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    return int(batch_size)


def _load(path, keep_integers: bool = False) -> Volume:
    from .io import load_volume

    return load_volume(path, keep_integers=keep_integers)


def require_same_grid(volume: Volume, other: Volume, name: str, other_name: str) -> None:
    """:class:`InputError` unless the volumes share one voxel grid (shape, and the voxel-to-world
    matrices within 1e-3 mm)."""
    if volume.shape != other.shape:
        raise InputError(f"{name} has shape {volume.shape} but {other_name} has {other.shape}; they must share one grid")
    if not volume.same_geometry(other, atol=1e-3):
        raise InputError(f"{name} and {other_name} have the same shape but different voxel-to-world matrices; "
                         "resample one onto the other's grid first")


def load_brain_mask_file(path, volume: Volume, option: str = "--brain-mask", other_name: str = "the input"
                         ) -> np.ndarray:
    """The brain mask stored in ``path`` (NIfTI or NRRD on ``volume``'s grid) as a boolean
    ``[i, j, k]`` array, read by :func:`~MRISynthesisLib.brain_extraction.mask_from_values` (binary,
    labels or probabilities). Other values, an empty mask or another grid are refused (messages
    name ``option`` and ``other_name``)."""
    from .brain_extraction import mask_from_values

    mask_volume = _load(path)
    require_same_grid(mask_volume, volume, option, other_name)
    return mask_from_values(mask_volume.array, f"{option} {Path(path).name}")


def _mask_choice(choice, volume: Volume):
    """'auto' / 'extract' / 'none' (any case) as they are; a path is read; an array is passed on."""
    from .brain_extraction import CHOICES

    if isinstance(choice, np.ndarray):
        return choice
    if isinstance(choice, str) and choice.lower() in CHOICES:
        return choice.lower()
    return load_brain_mask_file(choice, volume)


def _score_reference(reference, result: SynthesisResult, warnings_out: list) -> Score | None:
    """Score ``result.synthetic`` against ``reference``; a reference that cannot be used adds a
    warning and gives None."""
    from .conventions import TARGET_CONTRAST
    from .metrics import score

    target = TARGET_CONTRAST[result.metadata.direction]
    try:
        reference = reference if isinstance(reference, Volume) else _load(reference)
        if not reference.same_geometry(result.input, atol=1e-3):
            warnings_out.append(f"the real {target} image is on another voxel grid than the input "
                                "(not co-registered): no metrics")
            return None
        mask = result.brain_mask.mask
        return score(result.synthetic, reference, mask, percentiles=result.metadata.percentiles,
                     mask_description=(f"the brain mask used for synthesis ({result.brain_mask.source})"
                                       if mask is not None else None))
    except MRISynthesisError as error:
        warnings_out.append(f"real {target} image not usable for metrics: {error}")
        return None


def _record_provenance(result: SynthesisResult) -> None:
    """Add what only the pipeline knows to the output's provenance (stored in the file)."""
    provenance = result.synthetic.meta.setdefault("provenance", {})
    provenance.update(
        device=result.device, precision=result.precision, batch_size=result.batch_size, engine=result.engine,
        brain_mask=result.brain_mask.source, brain_mask_description=result.brain_mask.describe(),
        brain_mask_details=result.brain_mask.provenance(),
        input_sha256=volume_sha256(result.input), input_sha256_of=INPUT_HASH_CONVENTION,
        warnings=list(result.warnings))
    if result.uncertainty is not None:
        result.uncertainty.meta["provenance"] = dict(provenance, role="uncertainty (standard deviation)")


def volume_sha256(volume: Volume, voxels_per_chunk: int = 4_000_000) -> str:
    """Content hash of a volume (see :data:`INPUT_HASH_CONVENTION`): equal for equal voxels and
    geometry whatever file or front end they came from. Hashed in slabs (no full-size copy)."""
    digest = hashlib.sha256()
    array = volume.array
    step = max(1, array.shape[0] * voxels_per_chunk // max(1, array.size))
    for start in range(0, array.shape[0], step):
        digest.update(np.ascontiguousarray(array[start:start + step], dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(volume.affine, dtype=np.float64).tobytes())
    return digest.hexdigest()


def _unique(items: list) -> list:
    """``items`` without repeats (a warning raised once per batch is reported once), in order."""
    return list(dict.fromkeys(str(item) for item in items))


class _StageReporter:
    """Turns the front end's ``progress(stage, done, total)`` and ``cancelled()`` into the
    ``progress(done, total) -> bool`` callbacks of the core's steps."""

    def __init__(self, progress, cancelled):
        self.progress, self.cancelled = progress, cancelled

    def check(self) -> None:
        if self.cancelled is not None and self.cancelled():
            raise Cancelled("synthesis cancelled; nothing was written")

    def start(self, stage: str) -> None:
        self.check()
        if self.progress is not None:
            self.progress(stage, 0, 0)

    def reporter(self, stage: str):
        def report(done, total):
            if self.progress is not None:
                self.progress(stage, done, total)
            return not (self.cancelled is not None and self.cancelled())

        return report
