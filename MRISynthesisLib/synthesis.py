"""Inference: synthesise the missing contrast of a whole volume, slice by slice.

volume -> canonical axial stack -> foreground mask and percentile normalisation ->
batches of slices resampled to the model grid -> model -> back to the input grid ->
volume with the input's geometry. Memory is bounded by the batch size: only one batch of
model-sized slices exists at a time.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from .checkpoint import ModelMetadata, load_checkpoint
from .device import autocast_dtype, select_device
from .errors import Cancelled, InputError
from .input_check import check_stack
from .orientation import from_canonical_slices, to_canonical_slices
from .preprocessing import SliceGeometry, foreground_slices, gather_context, normalise_stack
from .volume import Volume

#: Smallest in-plane size (voxels) that is synthesised; smaller inputs are refused.
MIN_INPLANE_VOXELS = 16


class Synthesizer:
    """A loaded model ready to synthesise volumes.

    ``checkpoint``: path of a ``.safetensors`` checkpoint (see :mod:`MRISynthesisLib.checkpoint`).
    ``device``: 'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda' or 'mps'.
    ``batch_size``: slices per forward pass; memory use grows linearly with it.
    ``mixed_precision``: autocast on CUDA (bfloat16 where supported, else float16).
    ``flip_tta``: average the prediction with that of the left-right mirrored slice.

    Every input is checked for resemblance to brain MRI (:mod:`MRISynthesisLib.input_check`);
    ``input_check`` holds the check of the last input, and each result carries it in
    ``meta['input_check']`` and ``meta['provenance']``.
    """

    def __init__(self, checkpoint, device="auto", batch_size: int = 8, mixed_precision: bool = True,
                 flip_tta: bool = False):
        if int(batch_size) < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        self.device = select_device(device)
        self.checkpoint_path = Path(checkpoint) if checkpoint is not None else None
        if checkpoint is not None:
            self.model, self.metadata = load_checkpoint(checkpoint, device=self.device)
        self.batch_size = int(batch_size)
        self.mixed_precision = bool(mixed_precision)
        self.flip_tta = bool(flip_tta)
        self.input_check = None

    @classmethod
    def from_model(cls, model, metadata: ModelMetadata, device="auto", **options) -> "Synthesizer":
        """Wrap an in-memory model (e.g. during training validation) with the same inference path.

        The model is switched to eval mode; the caller switches it back to training mode."""
        synthesizer = cls(None, device=device, **options)
        metadata.validate()
        synthesizer.model, synthesizer.metadata = model.to(synthesizer.device).eval(), metadata
        return synthesizer

    @property
    def supports_uncertainty(self) -> bool:
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

    def synthesize_with_uncertainty(self, volume: Volume, samples: int = 8, progress=None, mask=None):
        """``(mean, std)`` volumes from ``samples`` stochastic passes (VAE-type models only)."""
        if not self.supports_uncertainty:
            raise InputError(f"model '{self.metadata.model_id}' ({self.metadata.architecture}) cannot sample; "
                             "uncertainty maps need a VAE model")
        if int(samples) < 2:
            raise InputError(f"uncertainty needs at least 2 samples, got {samples}")
        return self._run(volume, progress, mask, samples=int(samples))

    # -- internals ---------------------------------------------------------------------------

    def _prepare(self, volume: Volume, mask):
        array = np.asarray(volume.array, dtype=np.float32)
        if not np.all(np.isfinite(array)):
            raise InputError("the input volume contains NaN or infinite values")
        stack, transform = to_canonical_slices(array, volume.affine)
        _, rows, cols = stack.shape
        if rows < MIN_INPLANE_VOXELS or cols < MIN_INPLANE_VOXELS:
            raise InputError(f"the axial slices are only {rows} x {cols} voxels; at least "
                             f"{MIN_INPLANE_VOXELS} x {MIN_INPLANE_VOXELS} are needed")
        mask_stack = None
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != array.shape:
                raise InputError(f"mask shape {mask.shape} does not match the volume's shape {array.shape}")
            mask_stack, _ = to_canonical_slices(mask.astype(bool), volume.affine)
            if not mask_stack.any():
                raise InputError("the given mask is empty (no voxel inside); give a mask of the brain or none")
        require_positive_intensities(stack)
        norm = self.metadata.normalisation
        model_input, mask_stack = normalise_stack(stack, mask_stack, float(norm.get("low", 0.5)),
                                                  float(norm.get("high", 99.5)))
        # Not refused, but the result says so: is this like the brain MRI the model saw?
        self.input_check = check_stack(stack, mask_stack, transform.canonical_spacing, model_input)
        geometry = SliceGeometry(rows, cols, transform.canonical_spacing[1:], int(self.metadata.slice_size),
                                 self.metadata.pixel_spacing_mm)
        return model_input, mask_stack, transform, geometry

    def _forward(self, x):
        import torch

        dtype = autocast_dtype(self.device) if self.mixed_precision else None
        cast = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with cast:
            y = self.model(x)
            if self.flip_tta:
                y = 0.5 * (y + torch.flip(self.model(torch.flip(x, dims=[3])), dims=[3]))
        return y.float()

    def _run(self, volume: Volume, progress, mask, samples: int):
        import torch

        model_input, mask_stack, transform, geometry = self._prepare(volume, mask)
        indices = foreground_slices(mask_stack)
        mean_stack = np.zeros(model_input.shape, dtype=np.float32)
        std_stack = np.zeros(model_input.shape, dtype=np.float32) if samples else None
        context = int(self.metadata.context_slices)
        total = len(indices)
        generator = torch.Generator(device="cpu").manual_seed(0)
        with torch.inference_mode():
            for start in range(0, total, self.batch_size):
                batch = indices[start:start + self.batch_size]
                x = torch.from_numpy(gather_context(model_input, batch, context)).to(self.device)
                x = geometry.to_model(x)
                if samples:
                    draws = self.model.sample(x, samples, generator=generator).float()
                    y_mean, y_std = draws.mean(dim=0), draws.std(dim=0)
                    std_stack[batch] = geometry.from_model(y_std * 0.5)[:, 0].cpu().numpy()
                else:
                    y_mean = self._forward(x)
                y = (geometry.from_model(y_mean)[:, 0] + 1.0) * 0.5
                mean_stack[batch] = y.clamp_(0.0, 1.0).cpu().numpy()
                if progress is not None and progress(min(start + len(batch), total), total) is False:
                    raise Cancelled("synthesis cancelled; nothing was written")
        if total == 0 and progress is not None:
            progress(0, 0)
        mean_stack *= mask_stack
        out_meta = {k: v for k, v in volume.meta.items() if k == "header"}
        out_meta.update(model_id=self.metadata.model_id, direction=self.metadata.direction,
                        input_check=self.input_check.as_dict(), provenance=self._provenance())
        mean = Volume(from_canonical_slices(mean_stack, transform), volume.affine.copy(), out_meta)
        if not samples:
            return mean, None
        std_stack *= mask_stack
        return mean, Volume(from_canonical_slices(std_stack, transform), volume.affine.copy(), dict(out_meta))


    def _provenance(self) -> dict:
        """What made this output (stored in the NIfTI header by :func:`MRISynthesisLib.io.nifti_image`)."""
        from . import __version__

        return {"software": f"MRISynthesis {__version__}", "model_id": self.metadata.model_id,
                "model_architecture": self.metadata.architecture, "direction": self.metadata.direction,
                "model_content_sha256": self.metadata.content_sha256, "flip_tta": self.flip_tta,
                "input_check": self.input_check.as_dict(), "units": self.metadata.output_units,
                "note": "synthetic image, not for diagnosis"}


def require_positive_intensities(array: np.ndarray) -> None:
    """InputError for a volume with negative values and no positive one (not an MRI magnitude
    image), named as such rather than as an empty volume."""
    if float(array.max()) <= 0 and float(array.min()) < 0:
        raise InputError(f"the volume has no positive voxels (values {float(array.min()):g} to "
                         f"{float(array.max()):g}); MRI magnitude images are positive")


def describe(metadata: ModelMetadata) -> str:
    """One line naming the model, e.g. for logs and node attributes."""
    return f"{metadata.model_id} ({metadata.architecture}, {metadata.source_contrast}->{metadata.target_contrast})"
