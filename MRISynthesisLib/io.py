"""Reading and writing volumes (NIfTI via nibabel; NRRD in :mod:`MRISynthesisLib.nrrd_io`), with
checks that give one-line errors.

Outputs are written atomically (temporary file in the target folder, then rename), several
outputs of one command all or nothing (:func:`write_outputs`), and never over an input file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_paths
from .errors import InputError, OutputError, first_line
from .volume import Volume

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = [
    "MAX_VOXELS", "NIFTI_SUFFIXES", "NRRD_SUFFIXES", "VOLUME_SUFFIXES", "check_output_path", "load_volume",
    "nifti_image", "read_provenance", "save_volume", "write_outputs", "write_volume"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES
#: Largest volume accepted (voxels): 2^28, e.g. 640^3, 1 GiB as float32; clinical MRI is ~2^24.
MAX_VOXELS = 2 ** 28
#: deflate cannot compress better than about 1032:1, so a .gz file of n bytes holds at most ~1032 n.
MAX_GZIP_RATIO = 1100


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


#: Stored types that ``load_volume(..., keep_integers=True)`` keeps: float32 holds their values exactly.
EXACT_INTEGER_TYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16))


def load_volume(path, keep_integers: bool = False) -> Volume:
    """Read a 3D NIfTI or NRRD file into a :class:`Volume` (float32, ``[i, j, k]``, RAS affine).

    ``keep_integers``: a NIfTI file stored as int8, uint8, int16 or uint16 without intensity scaling
    (as scanners write them) keeps that type instead of float32 (the same values in half the memory
    or less; synthesis converts them batch by batch, issue 26).

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
    if not path.is_file():  # a FIFO would block forever, a device never ends
        raise InputError(f"{path.name} is not a regular file (a pipe, device or socket); refused")
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
        raise InputError(f"cannot read {path.name}: {first_line(error)}") from None
    if dtype.fields is not None or (len(dtype.shape) > 0):
        raise InputError(f"{path.name} is a multi-component (RGB/vector) image; expected one scalar contrast")
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 3 or (len(shape) == 3 and min(shape) < 1):
        raise InputError(f"{path.name} is a {len(shape)}D image with shape {image.shape}; expected a 3D volume")
    if len(shape) > 3:
        raise InputError(f"{path.name} has shape {image.shape}: a {len(shape)}D image with several "
                         f"volumes/components; expected one 3D volume")
    _check_declared_size(path, image, shape)
    if keep_integers and dtype in EXACT_INTEGER_TYPES and _unscaled(image):
        try:
            data = np.asarray(image.dataobj.get_unscaled()).reshape(shape)
        except Exception as error:
            raise InputError(f"cannot read the voxels of {path.name}: {first_line(error)}") from None
        return Volume(data, np.asarray(image.affine, dtype=np.float64), {"path": str(path), "header": image.header})
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as error:
        raise InputError(f"cannot read the voxels of {path.name}: {first_line(error)}") from None
    if not np.all(np.isfinite(data)):
        raw = np.asanyarray(image.dataobj.get_unscaled() if hasattr(image.dataobj, "get_unscaled") else data)
        if np.issubdtype(raw.dtype, np.integer) or np.all(np.isfinite(raw)):
            raise InputError(f"{path.name} has values beyond the float32 range (integer overflow or scaling)")
        raise InputError(f"{path.name} contains NaN or infinite values")
    affine = np.asarray(image.affine, dtype=np.float64)
    return Volume(data, affine, {"path": str(path), "header": image.header})


def _unscaled(image) -> bool:
    """True when the voxels are used as stored (no scl_slope / scl_inter other than 1 and 0)."""
    slope, inter = getattr(image.dataobj, "slope", 1.0), getattr(image.dataobj, "inter", 0.0)
    return slope == 1.0 and inter == 0.0


def _check_declared_size(path: Path, image, shape) -> None:
    """Refuse, before any voxel is read, a header that declares more data than the file can hold
    or than any brain MRI needs (a tiny crafted file must not make us allocate gigabytes)."""
    voxels = int(np.prod(shape, dtype=np.int64)) if all(n < 2 ** 31 for n in shape) else 2 ** 62
    if voxels > MAX_VOXELS:
        raise InputError(f"{path.name} declares {' x '.join(str(n) for n in shape)} = {voxels:,} voxels, more than "
                         f"the {MAX_VOXELS:,} accepted; crop or downsample it first")
    needed = voxels * image.get_data_dtype().itemsize
    offset = int(getattr(image.dataobj, "offset", 0) or 0)  # where the voxels start in the (uncompressed) file
    size = path.stat().st_size
    compressed = _suffix(path) == ".nii.gz"
    possible = (size * MAX_GZIP_RATIO) if compressed else (size - offset)
    if needed > possible:
        raise InputError(f"{path.name} declares {' x '.join(str(n) for n in shape)} voxels ({needed:,} bytes of data) "
                         f"but the file is only {size:,} bytes{' compressed' if compressed else ''}; "
                         "it is truncated or its header is wrong")


def check_output_path(path, inputs=(), suffixes=VOLUME_SUFFIXES) -> Path:
    """Validate an output path before any work is done; returns it as a Path.

    Refuses: a suffix not in ``suffixes``, a path equal to one of ``inputs`` or to the data file of
    an ``.nhdr`` input, a missing or non-writable folder, a path that is a folder. An ``.nhdr``
    output also writes ``<stem>.raw.gz`` (:func:`~MRISynthesisLib.nrrd_io.nhdr_data_file`): that
    file may not be an input's, and if it exists it must be the data file of the ``.nhdr`` being
    replaced (never an unrelated file of that name).
    """
    path = Path(path)
    if _suffix(path) not in suffixes:
        raise OutputError(f"output '{path.name}' must end in {' or '.join(suffixes)}")
    input_files = _input_files(inputs)
    for source in input_files:
        if _same_file(path, source):
            raise OutputError(f"output {path} is the input file; choose another name (inputs are never overwritten)")
    if _suffix(path) == ".nhdr":
        _check_nhdr_data_file(path, input_files)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"output folder is not writable: {folder}")
    if path.is_dir():
        raise OutputError(f"output path is a folder: {path}")
    return path


def _input_files(inputs) -> list[Path]:
    """The files of ``inputs``: each path, and the data file of a detached NRRD header."""
    from .nrrd_io import detached_data_file

    files = []
    for source in inputs:
        if source is None:
            continue
        files.append(Path(source))
        if _suffix(Path(source)) in NRRD_SUFFIXES and Path(source).is_file():
            data = detached_data_file(Path(source))
            if data is not None:
                files.append(data)
    return files


def _check_nhdr_data_file(path: Path, input_files) -> None:
    from .nrrd_io import detached_data_file, nhdr_data_file

    data = nhdr_data_file(path)
    for source in input_files:
        if _same_file(data, source):
            raise OutputError(f"output {path.name} would write its data to {data.name}, which is an input's "
                              "file; choose another output name (inputs are never overwritten)")
    if data.exists() or data.is_symlink():
        owner = detached_data_file(path) if path.is_file() else None
        if owner is None or not _same_file(owner, data):
            raise OutputError(f"output {path.name} would write its data to {data.name}, which already exists and "
                              f"is not the data file of {path.name}; remove it or choose another output name")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def nifti_image(volume: Volume):
    """``volume`` as a float32 NIfTI image; its affine is stored in sform and qform.

    When the source header is known (``volume.meta['header']``, set by :func:`load_volume`), its
    units and its sform/qform codes are kept as they were, including an unset (0) form, so a
    viewer reads the output's placement from the same form as the input's. Without a source header
    (e.g. a volume from Slicer) both forms are set with code 1 (scanner). A synthetic volume's
    ``meta['provenance']`` (model, input check) is stored in ``descrip`` (short) and as a JSON
    comment extension (:func:`read_provenance`).
    """
    import nibabel as nib

    data = np.asarray(volume.array, dtype=np.float32)
    header = volume.meta.get("header")
    image = nib.Nifti1Image(data, volume.affine)
    sform_code, qform_code = 1, 1
    if header is not None and hasattr(header, "get_sform"):
        try:
            image.header.set_xyzt_units(*header.get_xyzt_units())
            sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
        except Exception:
            sform_code, qform_code = 1, 1
    image.set_sform(volume.affine, code=sform_code)
    image.set_qform(volume.affine, code=qform_code)
    image.header.set_data_dtype(np.float32)
    provenance = volume.meta.get("provenance")
    if provenance:  # what made a synthetic volume travels with it: descrip + a JSON comment extension
        check = provenance.get("input_check") or {}
        flag = "" if check.get("ok", True) else "; INPUT CHECK WARNINGS"
        image.header["descrip"] = f"MRISynthesis {provenance.get('model_id', '')}; not for diagnosis{flag}"[:79].encode()
        text = json.dumps({"mrisynthesis_provenance": provenance}, sort_keys=True, default=str, allow_nan=False)
        image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", text.encode()))
    return image


def read_provenance(path) -> dict | None:
    """The provenance record MRISynthesis stored in a NIfTI or NRRD file it wrote, or None: the model
    and its content hash, device, precision, brain-mask source, the input's content hash, the input
    check and the warnings (:func:`MRISynthesisLib.pipeline.run` makes it)."""
    import nibabel as nib

    path = Path(path)
    if _suffix(path) in NRRD_SUFFIXES:
        from .nrrd_io import PROVENANCE_KEY, read_header

        try:
            record = json.loads(read_header(path)[0].get(PROVENANCE_KEY, "null"))
        except ValueError:
            return None
        return record if isinstance(record, dict) else None
    for extension in nib.load(str(path)).header.extensions:
        if extension.get_code() == 6:  # comment
            try:
                record = json.loads(extension.get_content())
            except ValueError:
                continue
            if isinstance(record, dict) and "mrisynthesis_provenance" in record:
                return record["mrisynthesis_provenance"]
    return None


def write_nifti(volume: Volume, path) -> None:
    """Write ``volume`` to ``path`` as it is (no checks, not atomic): the writer behind
    :func:`save_volume` and :func:`write_outputs`."""
    import nibabel as nib

    nib.save(nifti_image(volume), str(path))


def write_volume(volume: Volume, path, target=None, data_path=None) -> None:
    """Write ``volume`` to ``path`` in the format of ``target``'s suffix (``path`` may be its
    temporary name; no checks, not atomic): NIfTI (:func:`write_nifti`) or NRRD
    (:func:`MRISynthesisLib.nrrd_io.write_nrrd`; ``data_path``: where an ``.nhdr``'s data goes)."""
    if _suffix(Path(target if target is not None else path)) in NRRD_SUFFIXES:
        from .nrrd_io import write_nrrd

        write_nrrd(volume, path, target=target, data_path=data_path)
    else:
        write_nifti(volume, path)


def save_volume(volume: Volume, path, inputs=()) -> Path:
    """Write ``volume`` as float32 NIfTI or NRRD (by the suffix) atomically, never over one of ``inputs``."""
    path = check_output_path(path, inputs)
    return write_outputs([(path, volume)])[0]


def write_outputs(writers) -> list[Path]:
    """Write several outputs all or nothing: ``writers`` is ``[(path, what)]`` where ``what`` is a
    :class:`Volume` (written by :func:`write_volume` in the format of ``path``'s suffix) or a
    function ``write(temporary_path)`` for other files.

    Each output is written to a temporary file beside its target, an ``.nhdr``'s data file too;
    the targets are replaced only when every one succeeded (:func:`~MRISynthesisLib.atomic.atomic_paths`).
    A failure (full disk, lost permission) raises :class:`OutputError` naming the file, and no
    output is left, not even a temporary file. Returns the paths of ``writers``.
    """
    from .nrrd_io import nhdr_data_file

    paths = [Path(path) for path, _ in writers]
    targets, data_files = [], {}  # an .nhdr's data file is a target of its own, renamed with the rest
    for path, what in zip(paths, (what for _, what in writers)):
        targets.append(path)
        if _suffix(path) == ".nhdr":
            if not isinstance(what, Volume):
                raise TypeError(f"{path.name}: an .nhdr output must be given as a Volume (it has a data file)")
            data_files[path] = len(targets)
            targets.append(nhdr_data_file(path))
    current = paths[0] if paths else None
    suffixes = [".raw.gz" if p.name.endswith(".raw.gz") else _suffix(p) if _suffix(p) in NIFTI_SUFFIXES
                else p.suffix for p in targets]
    try:
        with atomic_paths(targets, suffixes) as temps:
            for path, (_, what) in zip(paths, writers):
                current, tmp = path, temps[targets.index(path)]
                if isinstance(what, Volume):
                    data_tmp = temps[data_files[path]] if path in data_files else None
                    write_volume(what, tmp, target=path, data_path=data_tmp)
                else:
                    what(tmp)
            current = None
    except OSError as error:
        where = f"cannot write {current}" if current is not None else "cannot write the outputs"
        raise OutputError(f"{where}: {error.strerror or error}; no output was written") from None
    return paths
