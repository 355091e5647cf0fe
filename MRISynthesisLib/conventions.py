"""The domain constants of MRISynthesis, defined once: directions, contrasts, normalisation.

Everything else (the command line, checkpoints, the BIDS App, training, the Slicer module)
imports these names instead of repeating the strings and numbers. Plain Python with no
dependency, so the Slicer module can import it when Slicer loads the module (before PyTorch or
numpy are checked) and it also runs on Python 3.9 (Slicer 5.8 must load far enough to say it
needs 5.10).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = [
    "DEFAULT_DIRECTION", "DEFAULT_SLICE_GRID", "DIRECTIONS", "DIRECTION_ALIASES", "MIN_TRAINING_FOREGROUND",
    "PERCENTILE_HIGH", "PERCENTILE_LOW", "REVERSE", "SOURCE_CONTRAST", "T1_TO_T2", "T2_TO_T1",
    "TARGET_CONTRAST", "SliceGrid", "check_direction", "source_and_target", "source_contrast",
    "target_contrast"]

#: Synthesis directions: which contrast is given and which one is synthesised.
T1_TO_T2 = "t1-to-t2"
T2_TO_T1 = "t2-to-t1"
DIRECTIONS = (T1_TO_T2, T2_TO_T1)
#: The direction used when neither a direction nor a model is named.
DEFAULT_DIRECTION = T1_TO_T2
#: Spellings accepted on the command line -> the direction.
DIRECTION_ALIASES = {T1_TO_T2: T1_TO_T2, T2_TO_T1: T2_TO_T1, "t1t2": T1_TO_T2, "t2t1": T2_TO_T1}

#: Contrast given to the model and contrast it synthesises, per direction.
SOURCE_CONTRAST = {T1_TO_T2: "T1", T2_TO_T1: "T2"}
TARGET_CONTRAST = {T1_TO_T2: "T2", T2_TO_T1: "T1"}
#: The direction that undoes each direction (CycleGAN/UNIT train both at once).
REVERSE = {T1_TO_T2: T2_TO_T1, T2_TO_T1: T1_TO_T2}

#: Intensity normalisation of every model input and reference: the ``PERCENTILE_LOW`` and
#: ``PERCENTILE_HIGH`` percentiles inside the brain mask map to 0 and 1 (model range [-1, 1]).
#: Shipped checkpoints store these values in their metadata; these are the defaults.
PERCENTILE_LOW = 0.5
PERCENTILE_HIGH = 99.5

#: Training skips slices whose brain-mask fraction is below this (``data.min_foreground``); the
#: shipped models were trained with it. Inference is more generous
#: (:data:`MRISynthesisLib.preprocessing.MIN_SLICE_FOREGROUND`).
MIN_TRAINING_FOREGROUND = 0.05


@dataclass(frozen=True)
class SliceGrid:
    """The grid a model sees: square slices of ``slice_size`` pixels, resampled in plane to
    ``pixel_spacing_mm`` (None: not resampled), with ``context_slices`` neighbouring slices on each
    side as extra input channels (2.5D).

    One definition for the three places that must agree: a checkpoint's metadata
    (:class:`MRISynthesisLib.checkpoint.ModelMetadata`), a training configuration's ``data``
    section (``Training.config.DataConfig``) and the key of the training slice cache.
    """

    slice_size: int = 256
    pixel_spacing_mm: float | None = 1.0
    context_slices: int = 0

    @property
    def in_channels(self) -> int:
        """Input channels of a network on this grid: the slice and its neighbours."""
        return 2 * int(self.context_slices) + 1


#: The model grid of a new configuration or checkpoint when nothing else is said (1 mm, 256 x 256, 2D).
DEFAULT_SLICE_GRID = SliceGrid()


def check_direction(direction: str) -> str:
    """``direction`` itself when it is one of :data:`DIRECTIONS`; :class:`InputError` otherwise."""
    if direction not in DIRECTIONS:
        raise InputError(f"direction '{direction}' is not one of {', '.join(DIRECTIONS)}")
    return direction


def source_contrast(direction: str) -> str:
    """'T1' for 't1-to-t2', 'T2' for 't2-to-t1'."""
    return SOURCE_CONTRAST[check_direction(direction)]


def target_contrast(direction: str) -> str:
    """'T2' for 't1-to-t2', 'T1' for 't2-to-t1'."""
    return TARGET_CONTRAST[check_direction(direction)]


def source_and_target(direction: str, t1, t2) -> tuple:
    """``(source, target)``: ``(t1, t2)`` for 't1-to-t2', ``(t2, t1)`` for 't2-to-t1' (any objects:
    paths, volumes, folders)."""
    return (t1, t2) if check_direction(direction) == T1_TO_T2 else (t2, t1)
