"""Atomic file writing: write a temporary file beside the target, then rename it into place.

A reader (or a crash) never sees a half-written output or checkpoint: the target either keeps
its previous content or gets the complete new one. The file gets the usual permissions
(``0o666`` minus the umask), not the owner-only mode of a temporary file.

Temporary files are named ``.<target name>.<pid>.<host>.mrisynthesis-tmp-<random><suffix>``, so
a later write of the same target recognises the leftovers of a process that was killed
(``kill -9``) on this machine and removes them (:func:`remove_stale_temporaries`).
:func:`terminate_cleanly` makes SIGTERM unwind like Ctrl-C, so ``finally`` blocks remove the
temporary files of an interrupted write.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import tempfile
from pathlib import Path

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = [
    "TEMP_MARKER", "Terminated", "atomic_path", "atomic_paths", "default_file_mode",
    "remove_stale_temporaries", "terminate_cleanly"]

TEMP_MARKER = "mrisynthesis-tmp-"


class Terminated(KeyboardInterrupt):
    """SIGTERM was received; raised in the main thread so that cleanup code runs."""


def terminate_cleanly() -> None:
    """Turn SIGTERM into :class:`Terminated` (a KeyboardInterrupt) in the main thread.

    Command-line entry points call this once; code already handling Ctrl-C then also handles
    ``kill`` (temporary files removed, nothing half-written). No-op outside the main thread.
    """
    def handler(signum, frame):
        raise Terminated(f"terminated by signal {signum}")

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, handler)


def default_file_mode() -> int:
    """The permissions a new file gets here (0o666 less the umask); temporary files are created
    private (0o600) and given these before they are renamed into place."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}.{_host_tag()}.{TEMP_MARKER}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def remove_stale_temporaries(path) -> list[Path]:
    """Remove temporary files of earlier writes of ``path`` whose process (on this host) is gone.

    Files of live processes and of other hosts (shared folders) are left alone. Returns the
    removed paths.
    """
    path = Path(path)
    removed = []
    head = f".{path.name}."
    with contextlib.suppress(OSError):
        for candidate in path.parent.glob(f"{_glob_escape(head)}*.{TEMP_MARKER}*"):
            parts = candidate.name[len(head):].split(".", 2)
            if len(parts) != 3 or not parts[0].isdigit() or parts[1] != _host_tag():
                continue
            pid = parts[0]
            if int(pid) == os.getpid() or _pid_alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def _glob_escape(text: str) -> str:
    """``text`` with glob wildcards quoted (file names may contain ``[``, ``*`` or ``?``)."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in text)


def _suffix_of(path: Path, suffix: str | None) -> str:
    if suffix is not None:
        return suffix
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def _new_temporary(path: Path, suffix: str | None) -> str:
    remove_stale_temporaries(path)
    handle, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_suffix_of(path, suffix), dir=str(path.parent))
    os.close(handle)
    return tmp


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``.

    ``suffix`` (default: ``path``'s own, e.g. ``.nii.gz``) lets writers that infer the format from
    the name work. On an exception (SIGTERM included, see :func:`terminate_cleanly`) the temporary
    file is removed and ``path`` is untouched.
    """
    with atomic_paths([path], [suffix]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(paths, suffixes=None):
    """All-or-nothing writing of several files: yield one temporary path per target.

    The targets are replaced only after every temporary file was written and flushed; if any
    writer fails, every temporary file is removed and no target changes. (The final renames
    need no disk space, so they do not fail for a full disk.)
    """
    paths = [Path(p) for p in paths]
    suffixes = list(suffixes) if suffixes is not None else [None] * len(paths)
    temporaries = []
    try:
        for path, suffix in zip(paths, suffixes):
            temporaries.append(_new_temporary(path, suffix))
        yield tuple(temporaries)
        for tmp in temporaries:
            with open(tmp, "rb") as written:  # on disk before the rename makes it visible
                os.fsync(written.fileno())
        for tmp, path in zip(temporaries, paths):
            os.chmod(tmp, default_file_mode())
            os.replace(tmp, path)
    finally:
        for tmp in temporaries:
            if os.path.exists(tmp):
                os.remove(tmp)
