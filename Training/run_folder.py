"""The folder of one training run, ``<output_dir>/<name>/``, and every name in it, defined here only::

    config.yaml                          the effective configuration (rewritten on --resume)
    split.json                           subject ids of 'train', 'val' and 'test'
    train_state.pt                       everything --resume needs (Training.state)
    checkpoints/{kind}-{direction}.safetensors   kind 'best' (by validation) or 'last'
    metrics.jsonl, metrics.csv           every logged number (Training.logs)
    images/epoch_NNN.png                 validation picture of each epoch
    tensorboard/                         TensorBoard events (optional package)
    cache/                               slice cache (unless data.cache_dir names another folder)
    report.md, curves.png                written when training ends

Training code asks a :class:`RunFolder` for a path instead of writing these names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from MRISynthesisLib.errors import MRISynthesisError, OutputError


class RunFolder:
    """Paths of the files of the run in ``path`` (nothing is created by asking)."""

    CONFIG = "config.yaml"
    SPLIT = "split.json"
    STATE = "train_state.pt"
    CHECKPOINTS = "checkpoints"
    METRICS_JSONL = "metrics.jsonl"
    METRICS_CSV = "metrics.csv"
    IMAGES = "images"
    TENSORBOARD = "tensorboard"
    CACHE = "cache"
    REPORT = "report.md"
    CURVES = "curves.png"

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def split(self) -> Path:
        return self.path / self.SPLIT

    @property
    def state(self) -> Path:
        return self.path / self.STATE

    @property
    def metrics_jsonl(self) -> Path:
        return self.path / self.METRICS_JSONL

    @property
    def metrics_csv(self) -> Path:
        return self.path / self.METRICS_CSV

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def cache(self) -> Path:
        return self.path / self.CACHE

    @property
    def report(self) -> Path:
        return self.path / self.REPORT

    @property
    def curves(self) -> Path:
        return self.path / self.CURVES

    def image(self, epoch: int) -> Path:
        """The validation picture of ``epoch``."""
        return self.path / self.IMAGES / f"epoch_{epoch:03d}.png"

    def checkpoint(self, kind: str, direction: str) -> Path:
        """``checkpoints/{kind}-{direction}.safetensors``; ``kind`` is 'best' or 'last'."""
        return self.path / self.CHECKPOINTS / f"{kind}-{direction}.safetensors"

    def checkpoints(self) -> list[Path]:
        """The checkpoints saved so far, sorted by name."""
        return sorted((self.path / self.CHECKPOINTS).glob("*.safetensors"))

    def has_saved_state(self) -> bool:
        """True once the run saved anything worth keeping (a training state or a checkpoint)."""
        return self.state.exists() or bool(self.checkpoints())

    # -- checks before a run starts ----------------------------------------------------------------

    @classmethod
    def new(cls, output_dir, name: str) -> "RunFolder":
        """The folder of a new run ``output_dir/name``: refused (:class:`OutputError`) when it exists
        (no silent overwrite) or ``output_dir`` (or, if it does not exist yet, its nearest existing
        parent) is not writable. Nothing is created."""
        output_dir = Path(output_dir)
        run = cls(output_dir / name)
        if run.path.exists():
            raise OutputError(f"run folder {run.path} already exists; continue it with --resume {run.path} "
                              f"or choose another name (name=...)")
        existing = output_dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise NotADirectoryError(20, "not a folder")
            handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=str(existing))
            os.close(handle)
            os.remove(probe)
        except OSError as error:
            raise OutputError(f"output folder {output_dir} is not writable: {error.strerror or error}") from None
        return run

    @classmethod
    def existing(cls, path) -> "RunFolder":
        """The folder of a run to continue: refused unless it holds a configuration."""
        run = cls(path)
        if not run.config.is_file():
            raise MRISynthesisError(f"cannot resume {run.path}: it has no {cls.CONFIG} (not a run folder)")
        return run

    def require_resumable(self) -> None:
        """Refuse (before anything is written into the folder) a run without a training state."""
        if not self.state.is_file():
            raise MRISynthesisError(f"no resumable state in {self.path}: {self.STATE} is missing (the run stopped "
                                    "before its first checkpoint; start it again without --resume)")

    # -- clean-up of a run that could not start ----------------------------------------------------

    def remove(self, also_empty_parent: bool = False) -> None:
        """Delete the whole folder (a new run that saved nothing), and its parent when it was made
        for it and is empty."""
        shutil.rmtree(self.path, ignore_errors=True)
        if also_empty_parent:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # only if empty

    def entries(self) -> set:
        return set(os.listdir(self.path))

    def remove_entries_not_in(self, before: set) -> None:
        """Delete what was added since ``before`` (:meth:`entries`): a failed resume adds nothing."""
        for name in self.entries() - before:
            path = self.path / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
