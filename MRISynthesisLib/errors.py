"""Exceptions with messages meant for people.

Every error that a user can cause (bad file, bad checkpoint, bad option) is raised as a subclass
of :class:`MRISynthesisError`; the command line prints its message on one line and exits non-zero,
the Slicer module shows it in a message box.
"""

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = ["Cancelled", "CheckpointError", "InputError", "MRISynthesisError", "OutputError", "first_line"]


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of ``error``'s message (at most ``limit`` characters), or its type's name when
    it has no message: how an error of a library (nibabel, torch, ...) is quoted in ours."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


class MRISynthesisError(Exception):
    """Base class of all errors that are reported to the user without a traceback."""


class InputError(MRISynthesisError, ValueError):
    """An input volume or file cannot be used (wrong type, shape, values, unreadable)."""


class CheckpointError(MRISynthesisError):
    """A model checkpoint is missing, corrupt, truncated, unknown or does not match its metadata."""


class OutputError(MRISynthesisError):
    """An output cannot be written (same as input, unwritable folder, ...)."""


class Cancelled(MRISynthesisError):
    """The progress callback asked to stop; nothing was written."""
