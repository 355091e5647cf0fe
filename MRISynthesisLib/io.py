"""Reading and writing volumes (NIfTI via nibabel; NRRD in :mod:`MRISynthesisLib.nrrd_io`), with
checks that give one-line errors.

Outputs are written atomically (temporary file in the target folder, then rename) and never over
an input file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import InputError, OutputError
from .volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def load_volume(path) -> Volume:
    """Read a 3D NIfTI or NRRD file into a :class:`Volume` (float32, ``[i, j, k]``, RAS affine).

    Accepted: 3D scalar images, and 4D images whose 4th axis has length 1 (stored that way by
    some pipelines). Refused with :class:`InputError`: missing/unreadable/non-NIfTI files, 2D
    images, multi-component (4D, vector, RGB) images, values that are NaN/Inf or overflow float32.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InputError(f"input file not found: {path}")
    if path.is_dir():
        raise InputError(f"input is a folder, expected a NIfTI file: {path}")
    if _suffix(path) in NRRD_SUFFIXES:
        from .nrrd_io import load_nrrd

        return load_nrrd(path)
    if _suffix(path) not in NIFTI_SUFFIXES:
        raise InputError(f"unsupported file type '{path.name}': expected a NIfTI (.nii, .nii.gz) "
                         "or NRRD (.nrrd, .nhdr) file")
    try:
        image = nib.load(str(path))
        dtype = image.get_data_dtype()
        shape = tuple(int(n) for n in image.shape)
    except Exception as error:  # nibabel raises many types for bad files
        raise InputError(f"cannot read {path.name}: {_reason(error)}") from None
    if dtype.fields is not None or (len(dtype.shape) > 0):
        raise InputError(f"{path.name} is a multi-component (RGB/vector) image; expected one scalar contrast")
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 3 or (len(shape) == 3 and min(shape) < 1):
        raise InputError(f"{path.name} is a {len(shape)}D image with shape {image.shape}; expected a 3D volume")
    if len(shape) > 3:
        raise InputError(f"{path.name} has shape {image.shape}: a {len(shape)}D image with several "
                         f"volumes/components; expected one 3D volume")
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as error:
        raise InputError(f"cannot read the voxels of {path.name}: {_reason(error)}") from None
    if not np.all(np.isfinite(data)):
        raw = np.asanyarray(image.dataobj.get_unscaled() if hasattr(image.dataobj, "get_unscaled") else data)
        if np.issubdtype(raw.dtype, np.integer) or np.all(np.isfinite(raw)):
            raise InputError(f"{path.name} has values beyond the float32 range (integer overflow or scaling)")
        raise InputError(f"{path.name} contains NaN or infinite values")
    affine = np.asarray(image.affine, dtype=np.float64)
    return Volume(data, affine, {"path": str(path), "header": image.header})


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def check_output_path(path, inputs=(), suffixes=VOLUME_SUFFIXES) -> Path:
    """Validate an output path before any work is done; returns it as a Path.

    Refuses: a suffix not in ``suffixes``, a path equal to one of ``inputs``, a missing or
    non-writable folder, a path that is a folder.
    """
    path = Path(path)
    if _suffix(path) not in suffixes:
        raise OutputError(f"output '{path.name}' must end in {' or '.join(suffixes)}")
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise OutputError(f"output {path} is the input file; choose another name (inputs are never overwritten)")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"output folder is not writable: {folder}")
    if path.is_dir():
        raise OutputError(f"output path is a folder: {path}")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def save_volume(volume: Volume, path, inputs=()) -> Path:
    """Write ``volume`` as float32 NIfTI (or NRRD, by the suffix) atomically.

    NIfTI: the affine is stored in sform and qform; the header of the source volume
    (``volume.meta['header']``), when known, provides units and the sform/qform codes, so a
    viewer places the output exactly where it places the input. NRRD: see :mod:`.nrrd_io`.
    """
    import nibabel as nib

    path = check_output_path(path, inputs)
    if _suffix(path) in NRRD_SUFFIXES:
        from .nrrd_io import save_nrrd

        return save_nrrd(volume, path)
    data = np.asarray(volume.array, dtype=np.float32)
    header = volume.meta.get("header")
    image = nib.Nifti1Image(data, volume.affine)
    sform_code, qform_code = 1, 1
    if header is not None and hasattr(header, "get_sform"):
        try:
            image.header.set_xyzt_units(*header.get_xyzt_units())
            sform_code = int(header["sform_code"]) or 1
            qform_code = int(header["qform_code"]) or 1
        except Exception:
            pass
    image.set_sform(volume.affine, code=sform_code)
    image.set_qform(volume.affine, code=qform_code)
    image.header.set_data_dtype(np.float32)
    try:
        with atomic_path(path, suffix=_suffix(path)) as tmp:
            nib.save(image, tmp)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    return path
