"""Inference: synthesise the missing contrast of a whole volume, slice by slice.

volume -> canonical axial stack -> foreground mask and percentile normalisation ->
batches of slices resampled to the model grid -> model -> back to the input grid ->
volume with the input's geometry.

Memory: besides the input and the output, only a bit-packed mask and one batch of slices exist.
The canonical stack is a strided view of the input (no copy), kept in its stored type when that
is an integer type float32 holds exactly (int16 from a scanner: half the memory of float32); each
batch is converted and normalised when it is gathered; on the CPU the network sees at most
:data:`CPU_SLICES_PER_CALL` slices at a time (its intermediate results are the largest transient)
and the memory it freed is handed back to the system after each batch; results are written
straight into the preallocated output array (through the same view), only inside the mask, so
output pages that hold no brain are never touched. A 512 x 512 x 300 volume thus needs about
input + output + the libraries (``benchmarks/bench_inference.py --large``).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import ModelMetadata, check_batch_memory, load_checkpoint, read_metadata
from .device import resolve_precision, select_device
from .engines import TorchEngine, create_engine, torch_free_engine
from .errors import Cancelled, InputError
from .input_check import check_stack
from .orientation import to_canonical_slices
from .preprocessing import (SliceGeometry, brain_mask, contiguous_copy, fill_slice_holes, foreground_slices,
                            gather_context, normalisation_range, scale_to_unit, slabs, to_model_range)
from .volume import Volume

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = [
    "MIN_INPLANE_VOXELS", "UNCERTAINTY_SAMPLES", "SynthesisRun", "Synthesizer", "check_model_request",
    "device_name", "is_out_of_memory", "require_large_enough_slices", "require_positive_intensities", "synthesize_with_fallback"]

#: Smallest in-plane size (voxels) that is synthesised; smaller inputs are refused.
MIN_INPLANE_VOXELS = 16
#: Stochastic passes for an uncertainty (standard deviation) map.
UNCERTAINTY_SAMPLES = 8
#: Most slices each CPU engine runs through the network in one call, whatever the batch size: the
#: same result (each slice is computed on its own), a quarter or half of the intermediate results
#: (resunet, 256 x 256: about 50 MB for 2 slices instead of 190 MB for 8; issue 26). Measured with
#: 2 threads against calls of 8 (per-round medians, loaded 2-core AVX2 CPU): onnxruntime 0.96x at 2,
#: torch 1.16x at 2, torch-channels-last 0.92x at 4 and 0.86x at 2 (hence 4; also for PyTorch's
#: bfloat16 + channels-last path, not measured: this CPU has no native bfloat16).
CPU_SLICES_PER_CALL = {"onnxruntime": 2, "torch": 2, "torch-channels-last": 4}
#: Input types kept as they are (converted to float32 batch by batch): float32 holds their values exactly.
EXACT_IN_FLOAT32 = (np.dtype(np.float32), np.dtype(np.int16), np.dtype(np.uint16), np.dtype(np.int8),
                    np.dtype(np.uint8))


class Synthesizer:
    """A loaded model ready to synthesise volumes.

    ``checkpoint``: path of a ``.safetensors`` checkpoint (see :mod:`MRISynthesisLib.checkpoint`).
    ``device``: 'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda' or 'mps'.
    ``batch_size``: slices per forward pass; memory use grows linearly with it.
    ``precision``: 'auto', 'fp32', 'bf16' or 'fp16' (see :func:`MRISynthesisLib.device.resolve_precision`):
    'auto' is bfloat16 autocast + channels_last on CPUs with native bfloat16, bfloat16 (else
    float16) autocast on CUDA, float32 elsewhere. ``self.precision`` is the resolved choice.
    ``mixed_precision``: ``False`` forces float32 whatever ``precision`` says (training validation
    and the study use it, so their numbers do not depend on the machine).
    ``flip_tta``: average the prediction with that of the left-right mirrored slice.
    ``engine``: 'auto', 'torch', 'torch-channels-last' or 'onnxruntime' (see
    :mod:`MRISynthesisLib.engines`): what runs the network; ``self.engine.name`` is the one used
    and ``self.engine.notes`` says why another was not (one sentence each).

    Every input is checked for resemblance to brain MRI (:mod:`MRISynthesisLib.input_check`);
    ``input_check`` holds the check of the last input, and each result carries it in
    ``meta['input_check']`` and ``meta['provenance']``.
    """

    def __init__(self, checkpoint, device="auto", batch_size: int = 8, mixed_precision: bool = True,
                 flip_tta: bool = False, precision: str = "auto", engine: str = "auto"):
        if int(batch_size) < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        self.checkpoint_path = Path(checkpoint) if checkpoint is not None else None
        self._model, self._can_sample = None, False
        # ONNX Runtime on a cached graph needs no PyTorch: the network is loaded only if asked for.
        found = None if checkpoint is None else torch_free_engine(
            checkpoint, engine, device, precision if mixed_precision else "fp32", int(batch_size))
        if found is not None:
            self.device, self.precision, self.metadata = found.device, found.precision, found.metadata
            self.engine, self._can_sample = found.engine, found.supports_uncertainty
        else:
            self.device = select_device(device)
            self.precision = resolve_precision(precision if mixed_precision else "fp32", self.device, engine)
        if checkpoint is not None and found is None:
            # The network's intermediate results for one batch, sized on the meta device first.
            check_batch_memory(read_metadata(checkpoint), int(batch_size))
            model, self.metadata = load_checkpoint(checkpoint, device=self.device)
            self.model = self._prepare_model(model)
            self.engine = create_engine(engine, self.model, self.metadata, self.precision, self.device)
        self.batch_size = int(batch_size)
        self.mixed_precision = self.precision.dtype is not None
        self.flip_tta = bool(flip_tta)
        self.input_check = None

    @classmethod
    def from_model(cls, model, metadata: ModelMetadata, device="auto", **options) -> "Synthesizer":
        """Wrap an in-memory model (e.g. during training validation) with the same inference path.

        The model is switched to eval mode (and to channels_last when the precision asks for it);
        the caller switches it back to training mode. It runs on the ``torch`` engine (a model in
        training changes between calls; nothing is exported)."""
        synthesizer = cls(None, device=device, **options)
        metadata.validate()
        synthesizer.model = synthesizer._prepare_model(model.to(synthesizer.device).eval())
        synthesizer.metadata = metadata
        return synthesizer

    @property
    def model(self):
        """The PyTorch network: the reference, and what the ``torch`` engines run (loaded when first
        asked for where the engine runs without it)."""
        if self._model is None and self.checkpoint_path is not None:
            model, _ = load_checkpoint(self.checkpoint_path, device=self.device.type)
            self._model = self._prepare_model(model)
        return self._model

    @model.setter
    def model(self, model):
        # A network set from outside (training validation, tests) runs on PyTorch as it is.
        self._model = model
        self.engine = TorchEngine(model, self.precision, self.device)

    def _prepare_model(self, model):
        if self.precision.channels_last:
            import torch

            model = model.to(memory_format=torch.channels_last)
        return model

    @property
    def supports_uncertainty(self) -> bool:
        if self._model is None and self.checkpoint_path is not None:
            return self._can_sample  # as recorded with the cached graph
        return hasattr(self.model, "sample")

    def synthesize(self, volume: Volume, progress=None, mask=None) -> Volume:
        """Synthetic target-contrast volume with exactly ``volume``'s shape and affine.

        ``progress(done, total)`` is called after each batch; returning ``False`` cancels
        (raises :class:`Cancelled`). ``mask``: optional foreground mask ``[i, j, k]``; by default
        it is computed with :func:`preprocessing.brain_mask`. Output values are in normalised
        units (0 background, 1 = 99.5th percentile of the target contrast), float32.
        """
        mean, _ = self._run(volume, progress, mask, samples=0)
        return mean

    def synthesize_with_uncertainty(self, volume: Volume, samples: int = UNCERTAINTY_SAMPLES, progress=None,
                                    mask=None):
        """``(mean, std)`` volumes from ``samples`` stochastic passes (VAE-type models only)."""
        check_model_request(self.metadata, uncertainty=True, can_sample=self.supports_uncertainty)
        if int(samples) < 2:
            raise InputError(f"uncertainty needs at least 2 samples, got {samples}")
        return self._run(volume, progress, mask, samples=int(samples))

    # -- internals ---------------------------------------------------------------------------

    def _prepare(self, volume: Volume, mask):
        """Canonical view of the input, its foreground mask (bit-packed), normalisation range, geometry."""
        _return_freed_memory()  # e.g. what brain extraction freed: before the mask and the output are made
        array = np.asarray(volume.array)
        if array.dtype not in EXACT_IN_FLOAT32:
            array = array.astype(np.float32)
        if not _all_finite(array):
            raise InputError("the input volume contains NaN or infinite values")
        stack, transform = to_canonical_slices(array, volume.affine, copy=False)
        _, rows, cols = stack.shape
        _require_slice_size(rows, cols)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != array.shape:
                raise InputError(f"mask shape {mask.shape} does not match the volume's shape {array.shape}")
            mask_stack, _ = to_canonical_slices(mask if mask.dtype == bool else mask.astype(bool), volume.affine,
                                                copy=False)
            if not mask_stack.any():
                raise InputError("the given mask is empty (no voxel inside); give a mask of the brain or none")
        else:
            mask_stack = brain_mask(stack)
        require_positive_intensities(stack)
        lo_hi = normalisation_range(stack, mask_stack, *self.metadata.percentiles)
        # Not refused, but the result says so: is this like the brain MRI the model saw?
        self.input_check = check_stack(stack, mask_stack, transform.canonical_spacing,
                                       _NormalisedSlices(stack, mask_stack, *lo_hi))
        indices = foreground_slices(mask_stack)
        packed = np.empty(mask_stack.shape[:2] + ((cols + 7) // 8,), dtype=np.uint8)  # 1 bit per voxel
        for part in slabs(mask_stack.shape[0], mask_stack.shape, 1_000_000):
            packed[part] = np.packbits(contiguous_copy(mask_stack[part], bool), axis=-1)
        geometry = SliceGeometry(rows, cols, transform.canonical_spacing[1:], int(self.metadata.slice_size),
                                 self.metadata.pixel_spacing_mm)
        return stack, packed, indices, lo_hi, transform, geometry

    def _autocast(self):
        import torch

        dtype = self.precision.dtype
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def _forward(self, x):
        step = self._slices_per_call()
        if step and len(x) > step:
            parts = [self._forward(x[start:start + step]) for start in range(0, len(x), step)]
            if isinstance(x, np.ndarray):
                return np.concatenate(parts)
            import torch

            return torch.cat(parts)
        y = self.engine(x)
        if self.flip_tta and isinstance(x, np.ndarray):
            y = 0.5 * (y + np.flip(self.engine(np.ascontiguousarray(np.flip(x, axis=3))), axis=3))
        elif self.flip_tta:
            import torch

            y = 0.5 * (y + torch.flip(self.engine(torch.flip(x, dims=[3])), dims=[3]))
        return y

    def _slices_per_call(self) -> int | None:
        """:data:`CPU_SLICES_PER_CALL` of the engine (channels-last as 'torch-channels-last', also
        PyTorch's bfloat16 path); None (the whole batch) on GPUs and for other engines."""
        if self.device.type != "cpu":
            return None
        channels_last = getattr(self.engine, "channels_last", False)
        return CPU_SLICES_PER_CALL.get("torch-channels-last" if channels_last else getattr(self.engine, "name", None))

    def _run(self, volume: Volume, progress, mask, samples: int):
        # An engine that takes numpy arrays (ONNX Runtime) gets slices prepared with numpy: no PyTorch.
        numpy_only = getattr(self.engine, "takes_numpy", False) and not samples
        if not numpy_only:
            import torch
        stack, packed, indices, (lo, hi), transform, geometry = self._prepare(volume, mask)
        cols = stack.shape[2]
        # An automatic mask of a skull-stripped input misses the zeros inside the brain (dark CSF):
        # the output covers each slice's filled mask. A given mask is used as it is.
        fill_holes, spacing = mask is None, transform.canonical_spacing[1:]
        # Outputs on the input's grid, filled through canonical views (their pages cost no memory
        # until written, and only voxels inside the mask are written).
        mean = _zeros_taken_when_written(transform.original_shape)
        mean_stack = to_canonical_slices(mean, volume.affine, copy=False)[0]
        std = _zeros_taken_when_written(transform.original_shape) if samples else None
        std_stack = to_canonical_slices(std, volume.affine, copy=False)[0] if samples else None
        context = int(self.metadata.context_slices)
        total = len(indices)
        generator = None if numpy_only else torch.Generator(device="cpu").manual_seed(0)
        with contextlib.nullcontext() if numpy_only else torch.inference_mode():
            for start in range(0, total, self.batch_size):
                batch = indices[start:start + self.batch_size]
                masks = np.unpackbits(gather_context(packed, batch, context), axis=-1, count=cols).view(bool)
                x = gather_context(stack, batch, context).astype(np.float32, copy=False)  # a new array
                x = to_model_range(scale_to_unit(x, masks, lo, hi, in_place=True))
                x = geometry.to_model(x if numpy_only else torch.from_numpy(x).to(self.device))
                if self.precision.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                inside = fill_slice_holes(masks[:, context], spacing) if fill_holes else masks[:, context]
                if samples:
                    with self._autocast():
                        draws = self.model.sample(x, samples, generator=generator).float()
                    y_mean, y_std = draws.mean(dim=0), draws.std(dim=0)
                    _write_inside(std_stack, batch, geometry.from_model(y_std * 0.5)[:, 0].cpu().numpy(), inside)
                else:
                    y_mean = self._forward(x)
                y = geometry.from_model(y_mean)[:, 0]
                if numpy_only:  # the same float32 operations as PyTorch's below
                    y += 1.0
                    y *= 0.5
                    y = np.clip(y, 0.0, 1.0, out=y)
                else:
                    y = y.add_(1.0).mul_(0.5).clamp_(0.0, 1.0).cpu().numpy()  # in place: one batch
                _write_inside(mean_stack, batch, y, inside)
                del x, y, y_mean
                _return_freed_memory()
                if progress is not None and progress(min(start + len(batch), total), total) is False:
                    raise Cancelled("synthesis cancelled; nothing was written")
        if total == 0 and progress is not None:
            progress(0, 0)
        out_meta = {k: v for k, v in volume.meta.items() if k == "header"}
        out_meta.update(model_id=self.metadata.model_id, direction=self.metadata.direction,
                        input_check=self.input_check.as_dict(), provenance=self._provenance())
        result = Volume(mean, volume.affine.copy(), out_meta)
        if not samples:
            return result, None
        return result, Volume(std, volume.affine.copy(), dict(out_meta))


    def _provenance(self) -> dict:
        """What made this output (stored in the NIfTI header by :func:`MRISynthesisLib.io.nifti_image`)."""
        from . import __version__

        return {"software": f"MRISynthesis {__version__}", "model_id": self.metadata.model_id,
                "model_architecture": self.metadata.architecture, "direction": self.metadata.direction,
                "model_content_sha256": self.metadata.content_sha256, "flip_tta": self.flip_tta,
                "input_check": self.input_check.as_dict(), "units": self.metadata.output_units,
                "note": "synthetic image, not for diagnosis"}

class _NormalisedSlices:
    """The model-range values of whole slices of ``stack``, computed when indexed (the input check
    reads a sample of slices; no normalised copy of the volume is kept)."""

    def __init__(self, stack, mask_stack, lo, hi):
        self.stack, self.mask_stack, self.lo, self.hi = stack, mask_stack, lo, hi

    def __getitem__(self, index):
        return to_model_range(scale_to_unit(np.array(self.stack[index], dtype=np.float32), self.mask_stack[index],
                                            self.lo, self.hi, in_place=True))


def _all_finite(array: np.ndarray, voxels_per_chunk: int = 4_000_000) -> bool:
    """``np.isfinite(array).all()`` without a full-size temporary."""
    if array.ndim == 0 or array.shape[0] == 0:
        return bool(np.all(np.isfinite(array)))
    step = max(1, array.shape[0] * voxels_per_chunk // max(1, array.size))
    return all(bool(np.isfinite(array[i:i + step]).all()) for i in range(0, array.shape[0], step))


def _zeros_taken_when_written(shape) -> np.ndarray:
    """A float32 array of zeros whose memory is taken 4 KiB page by page as it is written: an
    anonymous memory map without transparent huge pages. (numpy asks Linux for 2 MiB pages for
    large arrays, so a single voxel written makes 2 MiB resident: the output of a 512 x 512 x 300
    volume took about 180 MB instead of 110 MB; issue 26.)"""
    import mmap

    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(np.float32).itemsize
    if size == 0:
        return np.zeros(shape, dtype=np.float32)
    # Private: reading a page never written (the file writer reads them all) takes no memory either.
    private = {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS} if hasattr(mmap, "MAP_PRIVATE") else {}
    pages = mmap.mmap(-1, size, **private)  # zero-filled by the system
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        with contextlib.suppress(OSError):
            pages.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(pages, dtype=np.float32).reshape(shape)


def _return_freed_memory() -> None:
    """Hand the memory freed by a batch back to the system (glibc's ``malloc_trim``; nothing
    elsewhere). Without it the freed intermediate results of the network stay in the process's heap,
    fragmented: about 150 MB more peak memory at 512 x 512 x 300 (issue 26). Takes milliseconds."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim  # glibc; musl has none (AttributeError)
    except (OSError, AttributeError):
        return None


def _write_inside(out_stack: np.ndarray, batch: np.ndarray, values: np.ndarray, inside: np.ndarray) -> None:
    """``out_stack[batch] = values * inside`` for a zero-initialised output, writing only inside the mask."""
    for index, slice_values, slice_inside in zip(batch, values, inside):
        np.copyto(out_stack[index], slice_values, where=slice_inside)



def require_large_enough_slices(volume: Volume) -> None:
    """InputError when the axial slices (in the canonical orientation) are smaller than
    :data:`MIN_INPLANE_VOXELS`; checked before any work (brain extraction included)."""
    stack, _ = to_canonical_slices(np.asarray(volume.array), volume.affine, copy=False)
    _require_slice_size(*stack.shape[1:])


def _require_slice_size(rows: int, cols: int) -> None:
    if rows < MIN_INPLANE_VOXELS or cols < MIN_INPLANE_VOXELS:
        raise InputError(f"the axial slices are only {rows} x {cols} voxels; at least "
                         f"{MIN_INPLANE_VOXELS} x {MIN_INPLANE_VOXELS} are needed")


def require_positive_intensities(array: np.ndarray) -> None:
    """InputError for a volume with negative values and no positive one (not an MRI magnitude
    image), named as such rather than as an empty volume."""
    if float(array.max()) <= 0 and float(array.min()) < 0:
        raise InputError(f"the volume has no positive voxels (values {float(array.min()):g} to "
                         f"{float(array.max()):g}); MRI magnitude images are positive")


def check_model_request(metadata: ModelMetadata, direction: str | None = None, uncertainty: bool = False,
                        can_sample: bool = False) -> None:
    """:class:`InputError` when the model does not synthesise ``direction`` (None: any) or cannot make
    the uncertainty map asked for. The one check of a model against a request, used by the command
    line, the BIDS App and the Slicer module."""
    if direction is not None and metadata.direction != direction:
        raise InputError(f"model '{metadata.model_id}' synthesizes {metadata.direction}, but {direction} was "
                         "requested; choose a model for that direction")
    if uncertainty and not can_sample:
        raise InputError(f"model '{metadata.model_id}' ({metadata.architecture}) cannot produce an uncertainty map: "
                         "that needs a model that can sample, a VAE (no shipped model is one; train one with "
                         "configs/vae.yaml)")


# -- GPU out-of-memory fallback -----------------------------------------------------------------------

def is_out_of_memory(error: BaseException) -> bool:
    """True for a GPU (CUDA or MPS) out-of-memory error, which PyTorch raises as a ``RuntimeError``
    (``torch.cuda.OutOfMemoryError`` is one); a CPU ``MemoryError`` is not a GPU error."""
    torch = sys.modules.get("torch")
    cuda_out_of_memory = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if cuda_out_of_memory is not None and isinstance(error, cuda_out_of_memory):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def device_name(synthesizer) -> str:
    """'cuda', 'mps' or 'cpu': the device a synthesizer (a ``torch.device`` in ``.device``) runs on."""
    return synthesizer.device.type


def _release_gpu_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class SynthesisRun:
    """What :func:`synthesize_with_fallback` made: the synthetic volume, the uncertainty volume (or
    None), the synthesizer that succeeded (its device and batch size) and a sentence per fallback."""

    synthetic: Volume
    uncertainty: Volume | None
    synthesizer: object
    notes: list = field(default_factory=list)


def synthesize_with_fallback(create, volume: Volume, device="auto", batch_size: int = 8, *, first=None,
                             progress=None, mask=None, uncertainty_samples: int = 0) -> SynthesisRun:
    """Synthesize ``volume``; a GPU that runs out of memory is retried once with batch size 1 on the
    same device, then on the CPU with ``batch_size``, and each fallback is told in ``notes`` (and
    logged), so the user knows why it was slower. The command line and the Slicer module both run
    synthesis through here.

    ``create(device, batch_size)`` makes a :class:`Synthesizer` (tests inject fakes that run out of
    memory); ``first``, when given, is the synthesizer of the first attempt (already loaded by the
    caller, who checked its model), else ``create(device, batch_size)`` makes it.
    ``uncertainty_samples`` > 1 asks for a mean and a standard-deviation volume (models that can
    sample only). :class:`Cancelled`, a CPU ``MemoryError`` and every other error propagate.
    """
    synthesizer = first if first is not None else create(device, batch_size)
    notes = []
    while True:
        try:
            if uncertainty_samples:
                synthetic, uncertainty = synthesizer.synthesize_with_uncertainty(
                    volume, samples=uncertainty_samples, progress=progress, mask=mask)
            else:
                synthetic, uncertainty = synthesizer.synthesize(volume, progress=progress, mask=mask), None
            return SynthesisRun(synthetic, uncertainty, synthesizer, notes)
        except Exception as error:  # noqa: BLE001 - only GPU memory errors are retried
            used_device, used_batch = device_name(synthesizer), int(synthesizer.batch_size)
            if not is_out_of_memory(error) or used_device == "cpu":
                raise
            if used_batch > 1:
                retry = (used_device, 1)
                note = (f"The GPU ({used_device}) ran out of memory with batch size {used_batch}; "
                        "retrying with batch size 1.")
            else:
                retry = ("cpu", batch_size)
                note = (f"The GPU ({used_device}) ran out of memory even with batch size 1; retrying on the CPU "
                        "(slower).")
            logging.getLogger(__name__).warning(note)
            notes.append(note)
            del error
            synthesizer = first = None  # the failed model's GPU memory is released before the next one loads
            _release_gpu_memory()
            synthesizer = create(*retry)
