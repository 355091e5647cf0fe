"""Atomic file writing: write a temporary file beside the target, then rename it into place.

A reader (or a crash) never sees a half-written output or checkpoint: the target either keeps
its previous content or gets the complete new one. The file gets the usual permissions
(``0o666`` minus the umask), not the owner-only mode of a temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``.

    ``suffix`` (default: ``path``'s own, e.g. ``.nii.gz``) lets writers that infer the format from
    the name work. On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if suffix is None:
        name = path.name
        suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=str(path.parent))
    os.close(handle)
    try:
        yield tmp
        with open(tmp, "rb") as written:  # on disk before the rename makes it visible
            os.fsync(written.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
