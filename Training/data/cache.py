"""Slices cut once from the NIfTI volumes and kept in memory-mapped ``.npy`` files.

Every slice goes through exactly the inference path of :class:`MRISynthesisLib.synthesis.Synthesizer`:
``load_volume`` -> ``to_canonical_slices`` -> ``normalise_stack`` (brain mask + percentile
normalisation -> [-1, 1], background -1) -> ``gather_context`` (2.5D neighbours as channels) ->
``SliceGeometry.to_model`` (resample to ``pixel_spacing_mm``, centre-pad to ``slice_size``). The
source and the target are each normalised inside their own brain mask, as each would be at
inference. Slices where either contrast has less than ``min_foreground`` foreground are skipped.

Folder layout (``cache_dir``)::

    source.npy         float16 (N, 2*context+1, S, S)  model input, [-1, 1]
    target.npy         float16 (N, 1, S, S)            model target, [-1, 1] (paired caches only)
    mask.npy           uint8   (N, 1, S, S)            source foreground on the model grid (pixels
                                                       any brain voxel contributes to)
    subject_index.npy  int32   (N,)                    position of the slice's subject in index.json
    slice_position.npy int32   (N,)                    canonical slice number (inferior -> superior)
    index.json         subject ids, sources, files, parameters, key hash, slices per subject

The key hash covers the parameters and every input file (path, size, modification time): a
cache whose key matches is reused, anything else is rebuilt. A build is written to a temporary
folder beside ``cache_dir`` and renamed into place, so an interrupted build never leaves a cache
that looks valid. In distributed training build on rank 0, then barrier, then ``open`` elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from MRISynthesisLib.conventions import (DEFAULT_SLICE_GRID, DIRECTIONS, MIN_TRAINING_FOREGROUND, PERCENTILE_HIGH,
                                         PERCENTILE_LOW, T1_TO_T2, source_and_target)
from MRISynthesisLib.errors import InputError, OutputError
from MRISynthesisLib.io import load_volume
from MRISynthesisLib.orientation import to_canonical_slices
from MRISynthesisLib.preprocessing import SliceGeometry, foreground_slices, gather_context, normalise_stack

FORMAT_VERSION = 1
_ARRAYS = ("source", "target", "mask", "subject_index", "slice_position")
_BATCH = 32  # slices resampled at a time (bounds memory for 2.5D context)


class SliceCache:
    """A built slice cache (see the module docstring); arrays open lazily, read-only, memory-mapped.

    Attributes: ``path``, ``index`` (the parsed ``index.json``), ``subject_ids``, ``sources``,
    ``params``, ``key`` and ``rebuilt`` (True when the last :meth:`build` call wrote it).
    ``target`` is ``None`` for single-contrast caches built by :meth:`build_unpaired`.
    """

    def __init__(self, path, index: dict, rebuilt: bool = False):
        self.path = Path(path)
        self.index = index
        self.rebuilt = rebuilt
        self._arrays: dict = {}

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def open(cls, cache_dir) -> "SliceCache":
        """Open an existing cache; :class:`InputError` if it is missing or incomplete."""
        cache_dir = Path(cache_dir)
        index_path = cache_dir / "index.json"
        try:
            index = json.loads(index_path.read_text())
        except FileNotFoundError:
            raise InputError(f"no slice cache at {cache_dir} (index.json missing); build it first") from None
        except (OSError, ValueError) as error:
            raise InputError(f"slice cache index {index_path} is unreadable: {error}") from None
        if index.get("format_version") != FORMAT_VERSION:
            raise InputError(f"slice cache {cache_dir} has format {index.get('format_version')}, "
                             f"expected {FORMAT_VERSION}; delete it to rebuild")
        for name in index["arrays"]:
            if not (cache_dir / f"{name}.npy").is_file():
                raise InputError(f"slice cache {cache_dir} is incomplete: {name}.npy is missing")
        return cls(cache_dir, index)

    @classmethod
    def build(cls, subjects, cache_dir, *, direction: str = T1_TO_T2,
              slice_size: int = DEFAULT_SLICE_GRID.slice_size, pixel_spacing_mm: float | None = DEFAULT_SLICE_GRID.pixel_spacing_mm,
              context_slices: int = DEFAULT_SLICE_GRID.context_slices, low: float = PERCENTILE_LOW,
              high: float = PERCENTILE_HIGH, min_foreground: float = MIN_TRAINING_FOREGROUND,
              max_slices_per_subject: int | None = None, progress: bool = True) -> "SliceCache":
        """Cache the slices of paired ``subjects`` (:class:`~Training.data.discovery.Subject`).

        ``direction`` 't1-to-t2' makes T1 the source and T2 the target ('t2-to-t1' the reverse).
        ``slice_size`` (pixels) and ``pixel_spacing_mm`` define the model grid (as in the
        checkpoint metadata); ``context_slices`` neighbours on each side become extra source
        channels; ``low``/``high`` are the normalisation percentiles; ``min_foreground`` the
        fraction of brain a slice needs in both contrasts; ``max_slices_per_subject`` keeps that
        many slices evenly spaced through each subject's foreground slices (None: all).
        Reuses ``cache_dir`` when its key matches. Raises :class:`InputError` for unusable
        inputs (different T1/T2 grids, empty volumes) and :class:`OutputError` when
        ``cache_dir`` cannot be written or is a non-cache folder with files in it.
        """
        if direction not in DIRECTIONS:
            raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}, got '{direction}'")
        items = []
        for subject in subjects:
            source, target = source_and_target(direction, subject.t1, subject.t2)
            items.append((subject.id, subject.source, Path(source), Path(target)))
        params = _params(direction, slice_size, pixel_spacing_mm, context_slices, low, high, min_foreground,
                         max_slices_per_subject)
        return cls._build_or_open(items, Path(cache_dir), params, progress)

    @classmethod
    def build_unpaired(cls, paths, cache_dir, *, contrast: str,
                       slice_size: int = DEFAULT_SLICE_GRID.slice_size, pixel_spacing_mm: float | None = DEFAULT_SLICE_GRID.pixel_spacing_mm,
                       context_slices: int = DEFAULT_SLICE_GRID.context_slices, low: float = PERCENTILE_LOW,
                       high: float = PERCENTILE_HIGH, min_foreground: float = MIN_TRAINING_FOREGROUND,
                       max_slices_per_subject: int | None = None, progress: bool = True) -> "SliceCache":
        """Single-contrast cache of independent volumes (unpaired mode): ``source`` only, no ``target``.

        ``contrast`` ('t1' or 't2') is recorded; subject ids are the file names without suffix.
        Other options as in :meth:`build`.
        """
        if contrast not in ("t1", "t2"):
            raise InputError(f"contrast must be 't1' or 't2', got '{contrast}'")
        items, seen = [], set()
        for path in paths:
            path = Path(path)
            subject_id = path.name.split(".nii")[0]
            while subject_id in seen:
                subject_id += "+"
            seen.add(subject_id)
            items.append((subject_id, "other", path, None))
        params = _params(f"{contrast}-only", slice_size, pixel_spacing_mm, context_slices, low, high,
                         min_foreground, max_slices_per_subject)
        return cls._build_or_open(items, Path(cache_dir), params, progress)

    @classmethod
    def _build_or_open(cls, items, cache_dir: Path, params: dict, progress: bool) -> "SliceCache":
        if not items:
            raise InputError("no subjects to cache")
        files = [[str(p.resolve()) if p is not None else None for p in (src, tgt)] for _, _, src, tgt in items]
        key = _key(params, items, files)
        if (cache_dir / "index.json").is_file():
            try:
                existing = cls.open(cache_dir)
                if existing.key == key:
                    return existing
            except InputError:
                pass  # incomplete or old format: rebuild
        elif cache_dir.is_dir() and any(cache_dir.iterdir()):
            raise OutputError(f"{cache_dir} is not a slice cache but holds files; choose an empty or new folder")
        parent = cache_dir.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.building-", dir=str(parent)))
        except OSError as error:
            raise OutputError(f"cannot create the slice cache in {parent}: {error.strerror or error}") from None
        try:
            index = _write(items, files, params, key, tmp, progress)
            _replace_folder(tmp, cache_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(cache_dir, index, rebuilt=True)

    # -- access ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.index["num_slices"])

    def __getstate__(self):
        # memmaps would be pickled as in-memory copies; workers reopen the files instead
        return {"path": self.path, "index": self.index, "rebuilt": self.rebuilt}

    def __setstate__(self, state):
        self.__init__(state["path"], state["index"], state["rebuilt"])

    def _array(self, name):
        if name not in self.index["arrays"]:
            return None
        if name not in self._arrays:
            self._arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    source = property(lambda self: self._array("source"), doc="float16 (N, C, S, S) model inputs")
    target = property(lambda self: self._array("target"), doc="float16 (N, 1, S, S) targets, or None")
    mask = property(lambda self: self._array("mask"), doc="uint8 (N, 1, S, S) source foreground")
    subject_index = property(lambda self: self._array("subject_index"), doc="int32 (N,) subject positions")
    slice_position = property(lambda self: self._array("slice_position"), doc="int32 (N,) canonical slice")

    @property
    def key(self) -> str:
        return self.index["key"]

    @property
    def params(self) -> dict:
        return dict(self.index["params"])

    @property
    def subject_ids(self) -> list[str]:
        return list(self.index["subjects"])

    @property
    def sources(self) -> list[str]:
        return list(self.index["sources"])

    @property
    def in_channels(self) -> int:
        return 2 * int(self.index["params"]["context_slices"]) + 1

    def indices_of(self, subject_ids) -> np.ndarray:
        """Slice indices (sorted) belonging to ``subject_ids``; unknown ids raise :class:`InputError`."""
        positions = {subject_id: i for i, subject_id in enumerate(self.index["subjects"])}
        unknown = [s for s in subject_ids if s not in positions]
        if unknown:
            raise InputError(f"subject(s) not in the slice cache {self.path}: {', '.join(unknown)}")
        wanted = np.array([positions[s] for s in subject_ids], dtype=np.int32)
        return np.flatnonzero(np.isin(np.asarray(self.subject_index), wanted))


def _params(direction, slice_size, pixel_spacing_mm, context_slices, low, high, min_foreground, max_slices):
    if int(slice_size) < 16:
        raise InputError(f"slice_size must be at least 16 pixels, got {slice_size}")
    if pixel_spacing_mm is not None and not float(pixel_spacing_mm) > 0:
        raise InputError(f"pixel_spacing_mm must be positive or None, got {pixel_spacing_mm}")
    if int(context_slices) < 0:
        raise InputError(f"context_slices must be >= 0, got {context_slices}")
    if not 0 <= float(low) < float(high) <= 100:
        raise InputError(f"normalisation percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    if max_slices is not None and int(max_slices) < 1:
        raise InputError(f"max_slices_per_subject must be >= 1 or None, got {max_slices}")
    return {"direction": direction, "slice_size": int(slice_size),
            "pixel_spacing_mm": None if pixel_spacing_mm is None else float(pixel_spacing_mm),
            "context_slices": int(context_slices), "low": float(low), "high": float(high),
            "min_foreground": float(min_foreground),
            "max_slices_per_subject": None if max_slices is None else int(max_slices)}


def _key(params, items, files) -> str:
    described = []
    for (subject_id, _, _, _), paths in zip(items, files):
        stats = []
        for path in paths:
            if path is None:
                stats.append(None)
                continue
            try:
                st = os.stat(path)
            except OSError:
                raise InputError(f"subject {subject_id}: file not found: {path}") from None
            stats.append([path, st.st_size, st.st_mtime_ns])
        described.append([subject_id, stats])
    text = json.dumps({"format_version": FORMAT_VERSION, "params": params, "files": described}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stack(path: Path):
    volume = load_volume(path)
    stack, transform = to_canonical_slices(volume.array, volume.affine)
    return volume, stack, transform


def _extract(subject_id, source_path, target_path, params):
    """One subject -> (source, target|None, mask, slice positions) on the model grid, float16/uint8."""
    import torch

    source_volume, source_stack, transform = _stack(source_path)
    source_norm, source_mask = normalise_stack(source_stack, None, params["low"], params["high"])
    keep = foreground_slices(source_mask, params["min_foreground"])
    target_norm = None
    if target_path is not None:
        target_volume, target_stack, _ = _stack(target_path)
        if not source_volume.same_geometry(target_volume, atol=1e-3):
            raise InputError(f"subject {subject_id}: {Path(source_path).name} {source_volume.shape} and "
                             f"{Path(target_path).name} {target_volume.shape} are not on the same grid "
                             f"(shape or voxel-to-RAS matrix differ); paired training needs co-registered images")
        target_norm, target_mask = normalise_stack(target_stack, None, params["low"], params["high"])
        keep = np.intersect1d(keep, foreground_slices(target_mask, params["min_foreground"]))
    limit = params["max_slices_per_subject"]
    if limit is not None and len(keep) > limit:
        keep = keep[np.unique(np.round(np.linspace(0, len(keep) - 1, limit)).astype(int))]
    _, rows, cols = source_stack.shape
    geometry = SliceGeometry(rows, cols, transform.canonical_spacing[1:], params["slice_size"],
                             params["pixel_spacing_mm"])
    context = params["context_slices"]
    outputs = {"source": [], "target": [], "mask": []}
    for start in range(0, len(keep), _BATCH):
        batch = keep[start:start + _BATCH]
        x = geometry.to_model(torch.from_numpy(gather_context(source_norm, batch, context)))
        outputs["source"].append(x.clamp_(-1, 1).numpy().astype(np.float16))
        if target_norm is not None:
            y = geometry.to_model(torch.from_numpy(target_norm[batch][:, None]))
            outputs["target"].append(y.clamp_(-1, 1).numpy().astype(np.float16))
        # mask as -1/1 so the geometry's -1 padding is background; a pixel is foreground when any
        # brain voxel contributes to it, so every pixel whose source value is not -1 is inside
        m = geometry.to_model(torch.from_numpy(source_mask[batch][:, None].astype(np.float32) * 2 - 1))
        outputs["mask"].append((m > -1.0 + 1e-4).numpy().astype(np.uint8))
    size = params["slice_size"]
    empty = {"source": (0, 2 * context + 1, size, size), "target": (0, 1, size, size), "mask": (0, 1, size, size)}
    dtypes = {"source": np.float16, "target": np.float16, "mask": np.uint8}
    result = {name: np.concatenate(parts) if parts else np.zeros(empty[name], dtypes[name])
              for name, parts in outputs.items()}
    if target_norm is None:
        result["target"] = None
    return result, keep.astype(np.int32)


def _write(items, files, params, key, folder: Path, progress: bool) -> dict:
    from tqdm import tqdm

    paired = items[0][3] is not None
    parts, counts = [], []
    bar = tqdm(items, desc="caching slices", unit="subject", disable=not progress, dynamic_ncols=True)
    for number, (subject_id, _, source_path, target_path) in enumerate(bar):
        bar.set_postfix_str(subject_id)
        arrays, positions = _extract(subject_id, source_path, target_path, params)
        part = folder / f"part-{number:05d}"
        part.mkdir()
        for name, array in arrays.items():
            if array is not None:
                np.save(part / f"{name}.npy", array)
        np.save(part / "slice_position.npy", positions)
        parts.append(part)
        counts.append(len(positions))
    total = int(sum(counts))
    if total == 0:
        raise InputError(f"no slice of the {len(items)} subject(s) has at least {params['min_foreground']:.1%} "
                         f"foreground; nothing to train on")
    size, channels = params["slice_size"], 2 * params["context_slices"] + 1
    shapes = {"source": ((total, channels, size, size), np.float16), "mask": ((total, 1, size, size), np.uint8),
              "subject_index": ((total,), np.int32), "slice_position": ((total,), np.int32)}
    if paired:
        shapes["target"] = ((total, 1, size, size), np.float16)
    outputs = {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
               for name, (shape, dtype) in shapes.items()}
    start = 0
    for number, (part, count) in enumerate(zip(parts, counts)):
        stop = start + count
        for name in ("source", "target", "mask", "slice_position"):
            if name in outputs:
                outputs[name][start:stop] = np.load(part / f"{name}.npy")
        outputs["subject_index"][start:stop] = number
        shutil.rmtree(part)
        start = stop
    for array in outputs.values():
        array.flush()
    del outputs
    index = {"format_version": FORMAT_VERSION, "key": key, "params": params, "num_slices": total,
             "arrays": [name for name in _ARRAYS if name in shapes],
             "subjects": [item[0] for item in items], "sources": [item[1] for item in items],
             "files": files, "slices_per_subject": counts,
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (folder / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


def _replace_folder(tmp: Path, cache_dir: Path) -> None:
    old = None
    if cache_dir.exists():
        old = cache_dir.parent / f".{cache_dir.name}.old-{os.getpid()}-{time.time_ns()}"
        os.replace(cache_dir, old)
    try:
        os.replace(tmp, cache_dir)
    except OSError as error:
        raise OutputError(f"cannot move the slice cache into {cache_dir}: {error.strerror or error}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
