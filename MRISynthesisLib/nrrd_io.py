"""NRRD, 3D Slicer's native format: ``.nrrd`` (one file) or ``.nhdr`` (header + ``.raw.gz`` data).

``space directions`` and ``space origin`` are read in any patient-based space (LPS, RAS, LAS) and
converted exactly (sign flips) to the RAS affine of :class:`~MRISynthesisLib.volume.Volume`;
outputs are written in LPS, as Slicer writes them. Used through :func:`MRISynthesisLib.io.load_volume`
and :func:`MRISynthesisLib.io.save_volume`, which choose the format by the file's suffix.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import InputError, OutputError
from .io import _reason
from .volume import Volume

#: Largest volume accepted (voxels): 2^28, e.g. 640^3 (1 GiB as float32); clinical MRI is ~2^24.
MAX_VOXELS = 2 ** 28
#: Sign of each NRRD space axis relative to RAS, for the patient-based spaces of the NRRD format.
_NRRD_SPACES = {
    "right-anterior-superior": (1, 1, 1), "ras": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1), "las": (-1, 1, 1),
    "left-posterior-superior": (-1, -1, 1), "lps": (-1, -1, 1),
}


def load_nrrd(path: Path) -> Volume:
    """Read a 3D scalar NRRD (``.nrrd`` or ``.nhdr`` + data file) into a RAS :class:`Volume`.

    pynrrd returns the voxels in NRRD's fastest-first order, which is nibabel's ``[i, j, k]``;
    row ``n`` of ``space directions`` is the step of axis ``n`` in the file's space, so the RAS
    affine is ``diag(sign) @ [directions.T | origin]``.
    """
    import nrrd

    try:
        sizes = [int(n) for n in nrrd.read_header(str(path)).get("sizes", [])]
        if int(np.prod(sizes, dtype=np.float64)) > MAX_VOXELS:  # refuse before allocating anything
            raise InputError(f"{path.name} declares {' x '.join(map(str, sizes))} voxels, more than the "
                             f"{MAX_VOXELS:,} accepted")
        data, header = nrrd.read(str(path), index_order="F")
    except InputError:
        raise
    except Exception as error:  # pynrrd raises NRRDError, OSError, ValueError, zlib errors...
        raise InputError(f"cannot read {path.name}: {_reason(error)}") from None
    kinds = [str(k).lower() for k in header.get("kinds", [])]
    shape = tuple(int(n) for n in data.shape)
    if data.dtype.fields is not None or any(k in ("vector", "list", "rgb-color", "covariant-vector",
                                                     "3-color", "rgba-color") for k in kinds):
        raise InputError(f"{path.name} is a multi-component (RGB/vector) image; expected one scalar contrast")
    spatial = [n for n, kind in enumerate(kinds) if kind in ("domain", "space")] if kinds else list(range(len(shape)))
    if len(shape) > 3 and all(shape[n] == 1 for n in range(len(shape)) if n not in spatial[:3]) and len(spatial) == 3:
        data = data.reshape([shape[n] for n in spatial])
        shape = data.shape
    if len(shape) != 3:
        raise InputError(f"{path.name} is a {len(shape)}D image with shape {shape}; expected a 3D volume")
    space = str(header.get("space", "")).lower()
    if space not in _NRRD_SPACES:
        raise InputError(f"{path.name}: NRRD space '{header.get('space', 'missing')}' is not a patient space "
                         "(expected e.g. left-posterior-superior); the orientation would be a guess")
    directions = np.asarray(header.get("space directions", np.full((3, 3), np.nan)), dtype=np.float64)
    directions = directions[~np.all(np.isnan(directions), axis=1)] if directions.ndim == 2 else directions
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    if directions.shape != (3, 3) or origin.shape != (3,) or not (np.all(np.isfinite(directions))
                                                                  and np.all(np.isfinite(origin))):
        raise InputError(f"{path.name} has no valid 'space directions'/'space origin' for its 3 axes")
    affine = np.eye(4)
    affine[:3, :3] = directions.T
    affine[:3, 3] = origin
    affine[:3] *= np.asarray(_NRRD_SPACES[space], dtype=np.float64)[:, None]
    with np.errstate(over="ignore", invalid="ignore"):
        array = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        if np.issubdtype(data.dtype, np.integer) or np.all(np.isfinite(data)):
            raise InputError(f"{path.name} has values beyond the float32 range")
        raise InputError(f"{path.name} contains NaN or infinite values")
    return Volume(array, affine, {"path": str(path)})


def save_nrrd(volume: Volume, path: Path) -> Path:
    """Write ``volume`` to ``path`` (``.nrrd`` or ``.nhdr``) atomically; see :func:`write_nrrd`."""
    path = Path(path)
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:
            write_nrrd(volume, tmp, target=path)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def write_nrrd(volume: Volume, path, target=None) -> None:
    """Write a float32, gzip-encoded NRRD in LPS (Slicer's convention) to ``path``.

    ``path`` may be a temporary name that is renamed to ``target`` afterwards (atomic writing).
    ``.nhdr``: the header goes to ``path`` and names the data file ``<target name>.raw.gz``, which
    is written complete under a temporary name and renamed beside ``target`` first, so the header,
    once renamed into place, never points at missing or partial data.
    """
    import nrrd

    target = Path(target if target is not None else path)
    lps = np.diag([-1.0, -1.0, 1.0])
    header = {
        "type": "float", "encoding": "gzip", "space": "left-posterior-superior",
        "kinds": ["domain", "domain", "domain"],
        "space directions": (lps @ volume.affine[:3, :3]).T,
        "space origin": lps @ volume.affine[:3, 3],
    }
    data = np.asarray(volume.array, dtype=np.float32)
    if not target.name.lower().endswith(".nhdr"):
        nrrd.write(str(path), data, header, index_order="F")
        return
    data_name = target.name[: -len(".nhdr")] + ".raw.gz"
    folder = tempfile.mkdtemp(prefix=".tmp-", dir=str(target.parent))
    try:  # pynrrd names the data file in the header by the basename of this path
        nrrd.write(str(path), data, header, detached_header=str(Path(folder) / data_name), index_order="F")
        os.replace(Path(folder) / data_name, target.parent / data_name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
