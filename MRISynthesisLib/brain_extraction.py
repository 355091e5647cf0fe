"""Which voxels are brain: skull-stripped inputs are kept as they are, whole-head scans are extracted.

The models were trained on skull-stripped brains and the input is normalised over its mask, so a
whole-head scan (skull, fat, neck) must be reduced to its brain first. :func:`choose_brain_mask`
turns the user's choice into the mask given to :meth:`Synthesizer.synthesize`:

* ``"auto"`` (default): a skull-stripped input (see :func:`preprocessing.looks_skull_stripped`)
  is left to the synthesizer's own foreground mask, exactly as before brain extraction existed;
  anything else is brain-extracted with :func:`extract_brain`;
* ``"none"``: no extraction; the synthesizer's foreground mask (on a whole-head scan: the head);
* a mask array ``[i, j, k]`` on the input's grid, read by :func:`mask_from_values`: binary,
  labels (every label > 0 is brain) or probabilities (brain above :data:`THRESHOLD`).

Extraction uses the network of `deepbet <https://github.com/wwu-mmll/deepbet>`_ (MIT licence,
Fisch et al., Computers in Biology and Medicine 2024) whose weights ship inside its wheel: nothing
is downloaded at run time. The two weight files are checked against the SHA-256 sums of the
version this project was validated with before they are loaded. Choice and accuracy:
docs/architecture.md, "Brain extraction".
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel import orientations

from .errors import Cancelled, InputError
from .orientation import from_canonical_slices, to_canonical_slices
from .preprocessing import brain_mask, looks_skull_stripped
from .volume import Volume

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = ["CHOICES", "BrainMaskChoice", "choose_brain_mask", "extract_brain", "mask_from_values", "mask_used"]

#: SHA-256 of the TorchScript files inside the deepbet 1.0.2 wheel (validated in docs/architecture.md).
DEEPBET_WEIGHTS = {
    "bbox_model.pt": "39a7b2b5f799faa1391ea97bfcdc0b9299f20d84f2316a4ff8918dc4685e40aa",
    "model.pt": "de8ee7c69654d0dd3935dc4a5d84571d8ecf4637a6bfc01df399c4c2bc86e0fd",
}
#: Probability above which a voxel is brain (deepbet's default).
THRESHOLD = 0.5
CHOICES = ("auto", "none")

_RAS = np.array([[0, 1], [1, 1], [2, 1]])


@dataclass(frozen=True)
class BrainMaskChoice:
    """The mask to synthesise with and where it came from.

    ``mask``: boolean ``[i, j, k]`` on the input's grid, or ``None`` to let the synthesizer compute
    its usual foreground mask (:func:`preprocessing.brain_mask`). ``source``: one of
    ``"skull-stripped input"``, ``"extracted"``, ``"none"``, ``"given"``. ``warnings``: sentences
    about the mask the user must see (every front end shows them and the provenance records them).
    """

    mask: np.ndarray | None
    source: str
    warnings: tuple = ()

    def describe(self) -> str:
        return {"skull-stripped input": "input is skull-stripped: its non-zero voxels",
                "extracted": "brain extracted automatically (deepbet)",
                "none": "no brain extraction: automatic foreground (head) mask",
                "given": "the given brain mask"}[self.source]


def choose_brain_mask(volume: Volume, choice="auto", device="cpu", progress=None) -> BrainMaskChoice:
    """Resolve ``choice`` ('auto', 'none' or a mask array ``[i, j, k]``) for ``volume``.

    ``progress(done, total)`` is called during extraction; returning ``False`` cancels
    (:class:`Cancelled`). ``device``: a ``torch.device`` or 'cpu'/'cuda'/'mps'/'auto'.
    """
    if isinstance(choice, str):
        name = choice.lower()
        if name == "none":
            return BrainMaskChoice(None, "none")
        if name != "auto":
            raise InputError(f"unknown brain mask choice '{choice}'; expected one of {', '.join(CHOICES)} or a mask")
        if looks_skull_stripped(volume.array):
            return BrainMaskChoice(None, "skull-stripped input")
        return BrainMaskChoice(extract_brain(volume, device=device, progress=progress), "extracted")
    mask = np.asarray(choice)
    if mask.shape != volume.shape:
        raise InputError(f"brain mask shape {mask.shape} does not match the volume's shape {volume.shape}")
    return BrainMaskChoice(mask_from_values(mask), "given")


def mask_from_values(values: np.ndarray, name: str = "the brain mask") -> np.ndarray:
    """The boolean brain mask that ``values`` (a mask file's voxels, or a labelmap) stand for.

    Accepted: binary (0/1, false/true, 0/255), a label map (non-negative whole numbers: every
    label > 0 is brain) or a probability map (values in [0, 1], not all whole: brain above
    :data:`THRESHOLD`, as for automatic extraction). Refused with :class:`InputError` naming
    ``name``: negative values (a -1 background would otherwise count as brain), fractional values
    above 1 (an image, not a mask), and a mask with no brain voxel. The emptiness check is made
    on the mask that is returned, so the two always agree.
    """
    values = np.asarray(values)
    if values.dtype == bool:
        mask, rule = values, "no voxel > 0"
    else:
        low, high = values.min(initial=0), values.max(initial=0)
        if low < 0:
            raise InputError(f"{name} has negative values (down to {low:g}); a brain mask holds 0 (background) "
                             "and 1 or other positive labels (brain), or probabilities from 0 to 1")
        whole = np.issubdtype(values.dtype, np.integer) or bool(np.all(np.mod(values, 1) == 0))
        if whole:
            mask, rule = values > 0, "no voxel > 0"
        elif high <= 1:
            mask, rule = values > THRESHOLD, f"no voxel above {THRESHOLD:g}"
        else:
            raise InputError(f"{name} is not a brain mask: it has fractional values above 1 (up to {high:g}); "
                             "expected 0/1, whole-number labels or probabilities from 0 to 1")
    if not mask.any():
        raise InputError(f"{name} is empty ({rule})")
    return mask


def mask_used(volume: Volume, chosen: BrainMaskChoice) -> np.ndarray:
    """The boolean ``[i, j, k]`` mask the synthesizer works in for ``chosen`` (for saving/showing).

    For ``mask=None`` this is the synthesizer's foreground mask, computed the same way (on the
    canonical slice stack)."""
    if chosen.mask is not None:
        return chosen.mask
    stack, transform = to_canonical_slices(np.asarray(volume.array, dtype=np.float32), volume.affine)
    return from_canonical_slices(brain_mask(stack), transform)


def extract_brain(volume: Volume, device="cpu", progress=None) -> np.ndarray:
    """Boolean brain mask ``[i, j, k]`` of a whole-head T1w (or T2w) volume, on its own grid.

    The volume is reoriented to the closest RAS axes (flips and swaps only, as deepbet expects),
    run through deepbet's bounding-box and segmentation networks, thresholded at 0.5, reduced to
    its largest connected component with holes filled, and reoriented back.
    ``progress(done, total)`` is reported after each of the 3 steps.
    """
    import torch

    from .device import select_device

    array = np.asarray(volume.array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise InputError("the input volume contains NaN or infinite values")
    positive = array[array > 0]
    if positive.size == 0:
        raise InputError("the volume has no foreground voxels (it is empty or constant)")
    if positive.min() == positive.max():
        raise InputError(f"the volume's foreground is constant (intensity {positive.min():g}); nothing to synthesise from")
    del positive
    device = device if isinstance(device, torch.device) else select_device(device)

    def report(done):
        if progress is not None and progress(done, 3) is False:
            raise Cancelled("brain extraction cancelled; nothing was written")

    report(0)
    extractor = _deepbet(device.type)
    report(1)
    ornt = orientations.io_orientation(volume.affine)
    ras = np.ascontiguousarray(orientations.apply_orientation(array, ornt))
    no_brain = InputError("automatic brain extraction found no brain in the volume; give a brain mask instead")
    try:
        with torch.inference_mode():
            probability = extractor.run_model(ras)
        report(2)
        mask = extractor.postprocess(probability > THRESHOLD).astype(bool)
    except (AssertionError, ValueError):  # deepbet's checks when a network finds no head/brain
        raise no_brain from None
    back = orientations.apply_orientation(mask, orientations.ornt_transform(_RAS, ornt))
    report(3)
    if not back.any():
        raise no_brain
    return np.ascontiguousarray(back)


@functools.lru_cache(maxsize=2)
def _deepbet(device_type: str):
    """deepbet's ``BrainExtraction`` on ``device_type``, its weights verified, loaded once."""
    try:
        from deepbet import utils as deepbet_utils
        from deepbet.bet import BrainExtraction
    except ImportError as error:
        raise InputError(f"automatic brain extraction needs the 'deepbet' package ({error}); install it with "
                         "'pip install deepbet==1.0.2', or give a brain mask, or choose no extraction") from None
    models = Path(deepbet_utils.DATA_PATH) / "models"
    for name, expected in DEEPBET_WEIGHTS.items():
        path = models / name
        if not path.is_file():
            raise InputError(f"deepbet's weight file {path} is missing; reinstall deepbet==1.0.2")
        if _sha256(path) != expected:
            raise InputError(f"deepbet's weight file {path} is not the validated version (SHA-256 differs); "
                             "install deepbet==1.0.2")
    import torch

    with warnings.catch_warnings():  # torch.jit.load's deprecation notice is deepbet's business
        warnings.simplefilter("ignore", DeprecationWarning)
        extractor = BrainExtraction(no_gpu=True)
    if device_type != "cpu":
        extractor.model.to(torch.device(device_type))
        extractor.bbox_model.to(torch.device(device_type))
    return extractor


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
