"""Which voxels are brain: skull-stripped inputs are kept as they are, whole-head scans are extracted.

The models were trained on skull-stripped brains and the input is normalised over its mask, so a
whole-head scan (skull, fat, neck) must be reduced to its brain first. :func:`choose_brain_mask`
turns the user's choice into the mask given to :meth:`Synthesizer.synthesize`:

* ``"auto"`` (default): :func:`skull_stripped_decision` decides. An input that is skull-stripped is
  kept as it is (its voxels above the constant background; for a zero background this is exactly
  the synthesizer's own foreground mask, so the output is bit for bit what it was before brain
  extraction existed); anything else is brain-extracted with :func:`extract_brain`;
* ``"extract"``: always brain-extract;
* ``"none"``: no extraction; the synthesizer's foreground mask (on a whole-head scan: the head);
* a mask array ``[i, j, k]`` on the input's grid, read by :func:`mask_from_values`: binary,
  labels (every label > 0 is brain) or probabilities (brain above :data:`THRESHOLD`).

How "skull-stripped" is decided (:func:`skull_stripped_decision`; measured on every volume of the
shared collection in ``docs/brain-mask-decision.md``, made by ``benchmarks/brain_mask_decision.py``):

1. a scan without a constant background (its air is noise) is a whole head: extracted;
2. a constant background (exact zeros, or another constant such as +3) does not make a scan
   skull-stripped: scanners and DICOM converters store air as zeros and defacing cuts the face to
   zeros, so the region above the background may be a whole head. When that region is no larger
   than a brain (:data:`MAX_BRAIN_ML`), stays away from the volume's faces and the extractor's
   coarse network (deepbet's localiser at 128^3, about 1 CPU-second) calls nearly all of it brain
   (:data:`MIN_COARSE_BRAIN_SHARE`), the input is skull-stripped;
3. otherwise the extractor runs, and :func:`scalp_gap_mm` measures how far the region's outline
   lies beyond the extracted brain in the axial plane: up to :data:`MAX_STRIPPED_GAP_MM` the input
   is skull-stripped (kept as it is), beyond it scalp and skull lie in between: a whole head (the
   extracted mask is used).

An extracted mask is checked (:func:`check_extracted_mask`): a volume outside
:data:`PLAUSIBLE_BRAIN_ML` (partial coverage, a child, a failed extraction) or a second large
separate region in the extractor's raw output gives a warning, which every front end shows and the
output's provenance records (:meth:`BrainMaskChoice.provenance`).

Extraction uses the network of `deepbet <https://github.com/wwu-mmll/deepbet>`_ (MIT licence,
Fisch et al., Computers in Biology and Medicine 2024) whose weights ship inside its wheel: nothing
is downloaded at run time. The two weight files are checked against the SHA-256 sums of the
version this project was validated with before they are loaded. Choice and accuracy:
docs/architecture.md, "Brain extraction".
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
from nibabel import orientations
from scipy import ndimage

from .errors import Cancelled, InputError
from .orientation import from_canonical_slices, to_canonical_slices
from .preprocessing import (MAX_FACE_FOREGROUND_IN_STRIPPED, ZERO_BACKGROUND_FRACTION, brain_mask, looks_skull_stripped,
                            max_face_fraction, slabs)
from .volume import Volume

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = ["CHOICES", "BrainExtractionWarning", "BrainMaskChoice", "SkullStrippedDecision", "background_value", "check_extracted_mask",
           "choose_brain_mask", "coarse_brain_share", "extract_brain", "mask_from_values", "mask_used",
           "release_extractor", "scalp_gap_mm", "skull_stripped_decision"]

#: SHA-256 of the TorchScript files inside the deepbet 1.0.2 wheel (validated in docs/architecture.md).
DEEPBET_WEIGHTS = {
    "bbox_model.pt": "39a7b2b5f799faa1391ea97bfcdc0b9299f20d84f2316a4ff8918dc4685e40aa",
    "model.pt": "de8ee7c69654d0dd3935dc4a5d84571d8ecf4637a6bfc01df399c4c2bc86e0fd",
}
#: Probability above which a voxel is brain (deepbet's default).
THRESHOLD = 0.5
CHOICES = ("auto", "extract", "none")

#: Volume (ml) of a plausible adult brain mask; an extracted mask outside it gets a warning. Adult
#: brains are about 1.0-1.8 l (a whole head about 3-4 l).
PLAUSIBLE_BRAIN_ML = (800.0, 2200.0)
#: A region above a constant background larger than this is not a skull-stripped brain.
MAX_BRAIN_ML = PLAUSIBLE_BRAIN_ML[1]
#: Share of the region above the background that the extractor's coarse network must call brain
#: for the input to count as skull-stripped without running the fine network (measured: 0.80-0.98
#: on skull-stripped volumes, at most 0.56 on whole heads and head slabs, but only 0.49-0.71 on
#: skull-stripped slabs, which the fine network then decides; docs/brain-mask-decision.md).
MIN_COARSE_BRAIN_SHARE = 0.85
#: Largest :func:`scalp_gap_mm` of a skull-stripped input (measured: 0-5 mm skull-stripped,
#: 13-16 mm whole heads, where scalp and skull lie between the head's outline and the brain).
MAX_STRIPPED_GAP_MM = 8.0
#: Axial slices where the extracted brain covers less than this share of the foreground are left
#: out of :func:`scalp_gap_mm`.
MIN_BRAIN_AREA_SHARE = 0.3
#: A separate region of the extractor's raw output at least this large (ml) besides the kept
#: brain gets a warning (deepbet keeps only the largest region).
LARGE_SECOND_REGION_ML = 20.0
#: The grid of deepbet's coarse network (its ``run_model`` default).
_COARSE_SHAPE = (128, 128, 128)

_RAS = np.array([[0, 1], [1, 1], [2, 1]])


@dataclass(frozen=True)
class BrainMaskChoice:
    """The mask to synthesise with, where it came from, and what to tell the user about it.

    ``mask``: boolean ``[i, j, k]`` on the input's grid, or ``None`` to let the synthesizer compute
    its usual foreground mask (:func:`preprocessing.brain_mask`). ``source``: one of
    ``"skull-stripped input"``, ``"extracted"``, ``"none"``, ``"given"``. ``warnings``: sentences
    about the mask the user must see (every front end shows them and the provenance records them).
    ``requested``: the choice as asked ('auto', 'extract', 'none', 'file'). ``evidence``: the
    numbers behind the decision and the mask volume (:meth:`provenance`).
    """

    mask: np.ndarray | None
    source: str
    warnings: tuple = ()
    requested: str = "auto"
    evidence: dict = field(default_factory=dict)

    def describe(self) -> str:
        text = {"skull-stripped input": "input is skull-stripped: its voxels above the background",
                "extracted": "brain extracted automatically (deepbet)",
                "none": "no brain extraction: automatic foreground (head) mask",
                "given": "the given brain mask"}[self.source]
        if self.evidence.get("mask_ml") is not None:
            text += f", {self.evidence['mask_ml']:.0f} ml"
        if self.evidence.get("reason"):
            text += f" ({self.evidence['reason']})"
        return text

    def provenance(self) -> dict:
        """What the output's provenance records about the mask (JSON-ready)."""
        return {"requested": self.requested, "source": self.source, "description": self.describe(),
                "warnings": list(self.warnings), **{k: v for k, v in self.evidence.items() if k != "reason"}}


@dataclass(frozen=True)
class SkullStrippedDecision:
    """The outcome of :func:`skull_stripped_decision` and its evidence.

    ``background``: the value of the constant background, or None (no constant background);
    ``foreground_ml``: volume of the voxels above it; ``coarse_brain_share``: share of those voxels
    the coarse network finds to be brain; ``scalp_gap_mm``: :func:`scalp_gap_mm` (each None when
    not needed); ``reason``: one sentence; ``extracted``: ``(mask, warnings)`` of the
    extractor when it ran on a whole head, else None.
    """

    skull_stripped: bool
    reason: str
    background: float | None
    foreground_ml: float | None
    coarse_brain_share: float | None = None
    scalp_gap_mm: float | None = None
    extracted: tuple | None = field(default=None, repr=False)

    def evidence(self) -> dict:
        return {"reason": self.reason, "background": self.background, "foreground_ml": _round(self.foreground_ml),
                "coarse_brain_share": _round(self.coarse_brain_share, 3), "scalp_gap_mm": _round(self.scalp_gap_mm)}


def choose_brain_mask(volume: Volume, choice="auto", device="cpu", progress=None, engine="torch") -> BrainMaskChoice:
    """Resolve ``choice`` ('auto', 'extract', 'none' or a mask array ``[i, j, k]``) for ``volume``.

    ``progress(done, total)`` is called during extraction; returning ``False`` cancels
    (:class:`Cancelled`). ``device``: a ``torch.device`` or 'cpu'/'cuda'/'mps'/'auto'. ``engine``:
    the synthesis engine; with 'onnxruntime' the decision's coarse network runs on ONNX Runtime
    too (:func:`coarse_brain_share`).
    """
    if isinstance(choice, str):
        name = choice.lower()
        if name == "none":
            return BrainMaskChoice(None, "none", requested="none")
        if name not in CHOICES:
            raise InputError(f"unknown brain mask choice '{choice}'; expected one of {', '.join(CHOICES)} or a mask")
        evidence = {}
        if name == "auto":
            decision = skull_stripped_decision(volume, device=device, progress=progress, engine=engine)
            evidence = decision.evidence()
            if decision.skull_stripped:
                return _keep_skull_stripped(volume, decision, evidence)
        mask, found = decision.extracted if name == "auto" and decision.extracted else \
            _extract_with_warnings(volume, device, progress)
        voxel_ml = _voxel_ml(volume)
        evidence.update(mask_ml=_round(mask.sum() * voxel_ml))
        return BrainMaskChoice(mask, "extracted", tuple(found + check_extracted_mask(mask, voxel_ml)),
                               requested=name, evidence=evidence)
    mask = np.asarray(choice)
    if mask.shape != volume.shape:
        raise InputError(f"brain mask shape {mask.shape} does not match the volume's shape {volume.shape}")
    mask = mask_from_values(mask)
    return BrainMaskChoice(mask, "given", requested="file", evidence={"mask_ml": _round(mask.sum() * _voxel_ml(volume))})


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


def _keep_skull_stripped(volume: Volume, decision: SkullStrippedDecision, evidence: dict) -> BrainMaskChoice:
    """The choice for a skull-stripped input: ``mask=None`` where the synthesizer's own foreground
    mask is exactly the voxels above the background (zero background), else those voxels."""
    array = np.asarray(volume.array)
    mask = None if decision.background == 0 and looks_skull_stripped(array) else array > decision.background
    evidence = dict(evidence, mask_ml=_round(decision.foreground_ml))
    return BrainMaskChoice(mask, "skull-stripped input", requested="auto", evidence=evidence)


def skull_stripped_decision(volume: Volume, device="cpu", progress=None, engine="torch") -> SkullStrippedDecision:
    """Is ``volume`` skull-stripped (only brain above a constant background)? See the module
    docstring. Returns the decision and, when the extractor had to run, its mask (so a whole head
    is not extracted twice). ``engine``: see :func:`coarse_brain_share`."""
    array = np.asarray(volume.array)
    background = background_value(array)
    if background is None:
        return SkullStrippedDecision(False, "no constant background: a whole-head scan", None, None)
    foreground = array > background
    if not foreground.any():
        raise InputError("the volume has no foreground voxels (it is empty or constant)")
    foreground_ml = float(np.count_nonzero(foreground)) * _voxel_ml(volume)
    away_from_faces = max_face_fraction(foreground) < MAX_FACE_FOREGROUND_IN_STRIPPED
    share = None
    if away_from_faces and foreground_ml <= MAX_BRAIN_ML:
        share = coarse_brain_share(volume, foreground, device=device, engine=engine)
        if share >= MIN_COARSE_BRAIN_SHARE:
            return SkullStrippedDecision(True, f"the extractor's coarse network finds brain in {share:.0%} of the "
                                         "voxels above the background", background, foreground_ml, share)
    mask, extraction_warnings = _extract_with_warnings(volume, device, progress)
    gap = scalp_gap_mm(foreground, mask, volume.affine)
    found = (f"the voxels above the background end {gap:.1f} mm (median, in-plane) beyond the extracted brain"
             if gap is not None else "the extracted brain covers too little of the voxels above the background to compare")
    if gap is not None and gap <= MAX_STRIPPED_GAP_MM:
        return SkullStrippedDecision(True, found, background, foreground_ml, share, gap)
    return SkullStrippedDecision(False, found + ": a whole head", background, foreground_ml, share, gap,
                                 extracted=(mask, extraction_warnings))


def scalp_gap_mm(foreground: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> float | None:
    """Median in-plane distance (mm) from the outline of ``foreground`` to ``brain`` (boolean
    ``[i, j, k]``), on the axial slices where ``brain`` covers at least
    :data:`MIN_BRAIN_AREA_SHARE` of the foreground (so slices the extractor missed, e.g. the end
    slices of a slab, do not count). About 0-5 mm for skull-stripped inputs, 13-16 mm (scalp and
    skull) for whole heads; None when no slice qualifies."""
    fg_stack, transform = to_canonical_slices(foreground, affine, copy=False)
    brain_stack, _ = to_canonical_slices(brain, affine, copy=False)
    spacing = transform.canonical_spacing[1:]
    gaps = []
    for fg, inside in zip(fg_stack, brain_stack):
        area = np.count_nonzero(fg)
        if area == 0 or np.count_nonzero(inside & fg) < MIN_BRAIN_AREA_SHARE * area:
            continue
        outline = fg & ~ndimage.binary_erosion(fg)
        gaps.append(ndimage.distance_transform_edt(~inside, sampling=spacing)[outline])
    return float(np.median(np.concatenate(gaps))) if gaps else None


def background_value(array: np.ndarray) -> float | None:
    """The value of ``array``'s constant background, or None when it has none.

    The most frequent value on the volume's six outer faces, when more than
    :data:`preprocessing.ZERO_BACKGROUND_FRACTION` of all voxels hold exactly it: 0 for most
    skull-stripped and zero-filled scans, +3 for a shifted one (also when interpolation left values
    below it next to the brain); None for a scan whose air is noise.
    """
    array = np.asarray(array)
    faces = np.concatenate([array[(slice(None),) * axis + (index,)].ravel()
                            for axis in range(array.ndim) for index in (0, -1)])
    values, counts = np.unique(faces, return_counts=True)
    candidate = values[int(np.argmax(counts))]
    count = sum(np.count_nonzero(array[part] == candidate) for part in slabs(array.shape[0], array.shape))
    if count > ZERO_BACKGROUND_FRACTION * array.size:
        return float(candidate)
    return None


def coarse_brain_share(volume: Volume, foreground: np.ndarray, device="cpu", engine="torch") -> float:
    """Share of the ``foreground`` voxels (boolean ``[i, j, k]``) that deepbet's coarse network
    (the localiser it runs before the fine one, on the volume resampled to 128^3) calls brain.
    About a CPU-second: not reported as a step of brain extraction.

    ``engine`` 'onnxruntime' runs the network on ONNX Runtime, on a graph derived from deepbet's
    weights (:mod:`MRISynthesisLib.extractor_graphs`), and everything around it in numpy: no
    PyTorch once the graph is cached (probabilities within 1e-4 of PyTorch's, the same decision on
    the shared data). When that graph cannot be made, a warning says so and PyTorch runs it."""
    if str(engine).lower() == "onnxruntime":
        share = _coarse_brain_share_onnxruntime(volume, foreground)
        if share is not None:
            return share
    import torch

    extractor = _prepared_extractor(volume, device, None)
    ornt = orientations.io_orientation(volume.affine)
    small = torch.from_numpy(_on_coarse_grid(volume.array, ornt).astype(np.float32))
    low, high = small.quantile(0.005), small.quantile(0.995)
    from deepbet.utils import keep_largest_connected_component, normalize

    parameters = next(extractor.bbox_model.parameters())
    with torch.inference_mode():
        probability = extractor.bbox_model(normalize(small, low, high)[None, None].to(parameters.device))[0, 1]
    brain = (probability > THRESHOLD).float().cpu().numpy()
    if not brain.any():
        return 0.0
    brain = keep_largest_connected_component(brain).astype(bool)  # as deepbet does before cropping
    fg_small = _on_coarse_grid(foreground, ornt).astype(bool)
    if not fg_small.any():
        return 0.0
    return float(np.count_nonzero(brain & fg_small) / np.count_nonzero(fg_small))


def _on_coarse_grid(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """``array`` reoriented by ``ornt`` and sampled on deepbet's coarse grid (:data:`_COARSE_SHAPE`)
    exactly as PyTorch's 'nearest-exact' interpolation samples it (the voxels it reads are
    picked, so no full-size float32 copy is made: 0.6 GB less at 512 x 512 x 300)."""
    ras = orientations.apply_orientation(np.asarray(array), ornt)  # flips and transposes: a view
    return np.ascontiguousarray(ras[np.ix_(*(_nearest_exact_indices(n, m) for n, m in zip(ras.shape, _COARSE_SHAPE)))])


def _nearest_exact_indices(size: int, new_size: int) -> np.ndarray:
    """The source index of each of ``new_size`` samples along an axis of ``size`` voxels, as
    ``torch.nn.functional.interpolate(mode='nearest-exact')`` computes it on the CPU:
    ``floor((i + 0.5) * scale)`` with a float32 scale, rounded to float32 before the floor."""
    scale = np.float64(np.float32(size) / np.float32(new_size))
    source = np.floor(((np.arange(new_size) + 0.5) * scale).astype(np.float32)).astype(np.intp)
    return np.minimum(source, size - 1)


def _coarse_brain_share_onnxruntime(volume: Volume, foreground: np.ndarray) -> float | None:
    """:func:`coarse_brain_share` on ONNX Runtime and numpy; None (with a warning) when the
    network's graph cannot be made or run."""
    from . import extractor_graphs
    from .engines import EngineUnavailable

    weights = DEEPBET_WEIGHTS["bbox_model.pt"]
    extractor_graphs.checked_weights("bbox_model.pt", weights)
    _check_extractable(volume)
    ornt = orientations.io_orientation(volume.affine)
    small = _on_coarse_grid(volume.array, ornt).astype(np.float32)
    low, high = np.quantile(small, [0.005, 0.995]).astype(np.float32)
    try:
        probability = extractor_graphs.coarse_probability(_deepbet_normalise(small, low, high), weights,
                                                          torch_network=lambda: _deepbet("cpu").bbox_model)
    except EngineUnavailable as error:
        warnings.warn(f"{error}; the brain extractor's coarse network runs on PyTorch instead", stacklevel=3)
        return None
    brain = probability > THRESHOLD
    if not brain.any():
        return 0.0
    brain = _largest_component_26(brain)  # as deepbet does before cropping
    fg_small = _on_coarse_grid(foreground, ornt).astype(bool)
    if not fg_small.any():
        return 0.0
    return float(np.count_nonzero(brain & fg_small) / np.count_nonzero(fg_small))


def _deepbet_normalise(x: np.ndarray, low, high) -> np.ndarray:
    """deepbet's input normalisation (its ``utils.normalize``) in float32 numpy: clip between the
    ``low`` and ``high`` intensities to [0, 1], standardise (unbiased standard deviation), then
    scale to ImageNet's grey mean and deviation."""
    x = (x.astype(np.float32) - np.float32(low)) / np.float32(high - low)
    np.clip(x, 0.0, 1.0, out=x)
    x = (x - x.mean(dtype=np.float32)) / x.std(dtype=np.float32, ddof=1)
    return (np.float32(0.226) * x + np.float32(0.449)).astype(np.float32)


def _largest_component_26(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of ``mask`` (deepbet's ``keep_largest_connected_component``,
    with the same labelling library)."""
    import cc3d

    labels = cc3d.connected_components(mask.astype(np.float32))
    return labels == np.bincount(labels[labels != 0]).argmax()


def check_extracted_mask(mask: np.ndarray, voxel_ml: float) -> list[str]:
    """Warnings about an extracted mask: a volume outside :data:`PLAUSIBLE_BRAIN_ML`. (A large second
    region in the extractor's raw output is reported by :func:`extract_brain` itself.)"""
    found = []
    volume_ml = float(np.count_nonzero(mask)) * voxel_ml
    low, high = PLAUSIBLE_BRAIN_ML
    if not low <= volume_ml <= high:
        found.append(f"the extracted brain mask is {volume_ml:.0f} ml, outside the {low:.0f}-{high:.0f} ml of an adult "
                     "brain (partial coverage, or a failed extraction): check it (--save-mask) or give a mask")
    return found


def mask_used(volume: Volume, chosen: BrainMaskChoice) -> np.ndarray:
    """The boolean ``[i, j, k]`` mask the synthesizer works in for ``chosen`` (for saving/showing).

    For ``mask=None`` this is the synthesizer's foreground mask, computed the same way (on the
    canonical slice stack)."""
    if chosen.mask is not None:
        return chosen.mask
    stack, transform = to_canonical_slices(volume.array, volume.affine, copy=False)  # brain_mask reads any type
    return from_canonical_slices(brain_mask(stack), transform)


def extract_brain(volume: Volume, device="cpu", progress=None) -> np.ndarray:
    """Boolean brain mask ``[i, j, k]`` of a whole-head T1w (or T2w) volume, on its own grid.

    The volume is reoriented to the closest RAS axes (flips and swaps only, as deepbet expects),
    run through deepbet's bounding-box and segmentation networks, thresholded at 0.5, reduced to
    its largest connected component with holes filled, and reoriented back. When the raw output
    held a second separate region of at least :data:`LARGE_SECOND_REGION_ML` (dropped by that
    reduction), a :class:`BrainExtractionWarning` says so.
    ``progress(done, total)`` is reported after each of the 3 steps.
    """
    import torch

    extractor = _prepared_extractor(volume, device, progress)
    report = _reporter(progress)
    report(1)
    ornt = orientations.io_orientation(volume.affine)
    ras = np.ascontiguousarray(orientations.apply_orientation(_finite_float32(volume), ornt))
    no_brain = InputError("automatic brain extraction found no brain in the volume; give a brain mask instead")
    try:
        with torch.inference_mode():
            probability = extractor.run_model(ras)
        report(2)
        raw = probability > THRESHOLD
        del probability
        second_ml = _second_region_voxels(raw) * _voxel_ml(volume)
        mask = extractor.postprocess(raw).astype(bool)
    except (AssertionError, ValueError):  # deepbet's checks when a network finds no head/brain
        raise no_brain from None
    back = orientations.apply_orientation(mask, orientations.ornt_transform(_RAS, ornt))
    report(3)
    if not back.any():
        raise no_brain
    if second_ml >= LARGE_SECOND_REGION_ML:
        warnings.warn(f"the brain extractor found a second separate region of {second_ml:.0f} ml besides the brain "
                      "it kept: check the mask (--save-mask) or give a mask", BrainExtractionWarning, stacklevel=2)
    return np.ascontiguousarray(back)


class BrainExtractionWarning(UserWarning):
    """Something about an extracted mask the user must check (shown like every warning)."""


def _extract_with_warnings(volume: Volume, device, progress) -> tuple[np.ndarray, list]:
    """:func:`extract_brain`'s mask and its :class:`BrainExtractionWarning` messages (other Python
    warnings pass on unchanged)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = extract_brain(volume, device=device, progress=progress)
    found = []
    for warning in caught:
        if issubclass(warning.category, BrainExtractionWarning):
            found.append(str(warning.message))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return mask, found


def _prepared_extractor(volume: Volume, device, progress):
    """The checked input's extractor on ``device`` (reports step 0 of 3 first: cancelling works)."""
    import torch

    from .device import select_device

    _check_extractable(volume)
    device = device if isinstance(device, torch.device) else select_device(device)
    _reporter(progress)(0)
    return _deepbet(device.type)


def _check_extractable(volume: Volume) -> None:
    """:class:`InputError` for a volume the extractor cannot work on (no positive voxel, a constant
    foreground, NaN or infinite values)."""
    low, high = _positive_range(volume.array)
    if low is None:
        raise InputError("the volume has no foreground voxels (it is empty or constant)")
    if low == high:
        raise InputError(f"the volume's foreground is constant (intensity {low:g}); nothing to synthesise from")


def _positive_range(array: np.ndarray):
    """``(smallest, largest)`` positive value of ``array`` as float32 (``(None, None)`` when there is
    none), read slab by slab (no full-size temporary); :class:`InputError` for NaN or infinite values."""
    low = high = None
    for part in slabs(array.shape[0], array.shape):
        values = np.asarray(array[part], dtype=np.float32)
        if not np.isfinite(values).all():
            raise InputError("the input volume contains NaN or infinite values")
        positive = values[values > 0]
        if positive.size:
            low = positive.min() if low is None else min(low, positive.min())
            high = positive.max() if high is None else max(high, positive.max())
    return low, high


def _finite_float32(volume: Volume) -> np.ndarray:
    array = np.asarray(volume.array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise InputError("the input volume contains NaN or infinite values")
    return array


def _reporter(progress):
    def report(done):
        if progress is not None and progress(done, 3) is False:
            raise Cancelled("brain extraction cancelled; nothing was written")

    return report


def _second_region_voxels(mask: np.ndarray) -> int:
    """Voxel count of the second largest 6-connected region of ``mask`` (0 when there is none)."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return 0
    sizes = np.sort(np.bincount(labels.ravel())[1:])
    return int(sizes[-2])


def _voxel_ml(volume: Volume) -> float:
    return float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0


def _round(value, digits: int = 1):
    return None if value is None else round(float(value), digits)


@functools.lru_cache(maxsize=2)
def _deepbet(device_type: str):
    """deepbet's ``BrainExtraction`` on ``device_type``, its weights verified, loaded once."""
    try:
        from deepbet.bet import BrainExtraction
    except ImportError as error:
        raise InputError(f"automatic brain extraction needs the 'deepbet' package ({error}); install it with "
                         "'pip install deepbet==1.0.2', or give a brain mask, or choose no extraction") from None
    from .extractor_graphs import checked_weights

    for name, expected in DEEPBET_WEIGHTS.items():
        checked_weights(name, expected)
    import torch

    with warnings.catch_warnings():  # torch.jit.load's deprecation notice is deepbet's business
        warnings.simplefilter("ignore", DeprecationWarning)
        extractor = BrainExtraction(no_gpu=True)
    if device_type != "cpu":
        extractor.model.to(torch.device(device_type))
        extractor.bbox_model.to(torch.device(device_type))
    return extractor


def release_extractor() -> None:
    """Free the extractor's networks and what their runs keep (about 150 MB; loaded again in about
    0.4 s when needed): synthesis does not need them once the brain mask is chosen (issue 26)."""
    _deepbet.cache_clear()
