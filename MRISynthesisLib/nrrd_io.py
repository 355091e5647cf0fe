"""NRRD, 3D Slicer's native format: ``.nrrd`` (one file) or ``.nhdr`` (header + ``.raw.gz`` data).

``space directions`` and ``space origin`` are read in any patient-based space (LPS, RAS, LAS) and
converted exactly (sign flips) to the RAS affine of :class:`~MRISynthesisLib.volume.Volume`;
outputs are written in LPS, as Slicer writes them. Used through :func:`MRISynthesisLib.io.load_volume`
and :func:`MRISynthesisLib.io.save_volume`, which choose the format by the file's suffix.

Reading is bounded by what the header declares, so a small hostile file cannot make us allocate,
decompress or wait without end: the header is read up to :data:`MAX_HEADER_BYTES`; header and
data must be regular files (not a FIFO or a device); a detached data file must lie inside the
header's folder (``data file: /dev/zero`` or ``../other/x.raw`` is refused: a header cannot make us
read a file its folder does not hold); ``line skip`` and ``byte skip`` are bounded by the file's
size; the voxels are streamed into the float32 volume chunk by chunk and the reading stops at the
declared size: raw data must have exactly that size, compressed data must decompress to exactly
that size and may not claim a ratio above :data:`MAX_COMPRESSION_RATIO`.
"""

from __future__ import annotations

import bz2
import io
import json
import os
import stat
import zlib
from pathlib import Path

import numpy as np

from .errors import InputError, first_line
from .volume import Volume

#: Largest volume accepted (voxels): 2^28, e.g. 640^3 (1 GiB as float32); clinical MRI is ~2^24.
MAX_VOXELS = 2 ** 28
#: Longest NRRD header read (bytes); Slicer's headers are under 2 KB.
MAX_HEADER_BYTES = 1 << 20
#: The key/value field of a written NRRD header that holds the provenance record (JSON, one line).
PROVENANCE_KEY = "mrisynthesis_provenance"
#: Most bytes scanned to honour ``line skip`` (lines of a foreign header before the data).
MAX_LINE_SKIP_BYTES = 16 << 20
#: gzip (deflate) cannot exceed about 1032:1; bzip2 can (runs of zeros), but no MRI volume whose
#: foreground is not constant comes near this ratio.
MAX_COMPRESSION_RATIO = 1100
#: Longest ASCII text per value (a double with 17 digits, exponent and separators is ~26 characters).
MAX_ASCII_BYTES_PER_VALUE = 64
_CHUNK = 1 << 22
_COMPRESSED = {"gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}
_ASCII = ("ascii", "text", "txt")
#: Sign of each NRRD space axis relative to RAS, for the patient-based spaces of the NRRD format.
_NRRD_SPACES = {
    "right-anterior-superior": (1, 1, 1), "ras": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1), "las": (-1, 1, 1),
    "left-posterior-superior": (-1, -1, 1), "lps": (-1, -1, 1),
}
_MULTI_COMPONENT_KINDS = ("vector", "list", "rgb-color", "covariant-vector", "3-color", "rgba-color")


def load_nrrd(path: Path) -> Volume:
    """Read a 3D scalar NRRD (``.nrrd`` or ``.nhdr`` + data file) into a RAS :class:`Volume`.

    NRRD stores the voxels fastest axis first, which is nibabel's ``[i, j, k]``; row ``n`` of
    ``space directions`` is the step of axis ``n`` in the file's space, so the RAS affine is
    ``diag(sign) @ [directions.T | origin]``. Trailing axes beyond the three spatial ones must
    have length 1 (as for NIfTI). Everything about the header is checked before a voxel is read.
    """
    path = Path(path)
    header, data_start = read_header(path)
    sizes = _sizes(path, header)
    kinds = [str(k).lower() for k in header.get("kinds", [])]
    if any(kind in _MULTI_COMPONENT_KINDS and size > 1 for kind, size in zip(kinds, sizes)):
        raise InputError(f"{path.name} is a multi-component (RGB/vector) image; expected one scalar contrast")
    spatial = [n for n, kind in enumerate(kinds) if kind in ("domain", "space")] if kinds else list(range(len(sizes)))
    if len(sizes) > 3 and len(spatial) >= 3 and all(sizes[n] == 1 for n in range(len(sizes)) if n not in spatial[:3]):
        spatial = spatial[:3]  # e.g. a 4D file whose last axis has length 1, as NIfTI allows
    else:
        spatial = list(range(len(sizes)))
    shape = tuple(sizes[n] for n in spatial)
    if len(shape) != 3:
        extra = " with several volumes/components" if len(shape) > 3 else ""
        raise InputError(f"{path.name} is a {len(sizes)}D image with shape {tuple(sizes)}{extra}; "
                         "expected a 3D volume")
    space = str(header.get("space", "")).lower()
    if space not in _NRRD_SPACES:
        raise InputError(f"{path.name}: NRRD space '{header.get('space', 'missing')}' is not a patient space "
                         "(expected e.g. left-posterior-superior); the orientation would be a guess")
    affine = _affine(path, header, spatial, _NRRD_SPACES[space])
    dtype = _dtype(path, header)
    array = _read_voxels(path, header, data_start, dtype, int(np.prod(sizes, dtype=np.int64)))
    return Volume(array.reshape(shape, order="F"), affine, {"path": str(path)})


def read_header(path: Path) -> tuple[dict, int]:
    """``(fields, offset of the first data byte)`` of an NRRD header, read at most
    :data:`MAX_HEADER_BYTES`; fields are parsed by pynrrd. :class:`InputError` if unreadable."""
    import nrrd

    lines, size = [], 0
    with _open_regular(path, f"{path.name}") as handle:
        while True:
            line = handle.readline(MAX_HEADER_BYTES + 1 - size)
            size += len(line)
            if size > MAX_HEADER_BYTES:
                raise InputError(f"cannot read {path.name}: its header is longer than {MAX_HEADER_BYTES:,} bytes "
                                 "(not an NRRD file?)")
            if not line or not line.rstrip(b"\r\n").strip():
                break  # a blank line ends the header (or the end of a detached header file)
            lines.append(line.decode("ascii", "replace"))
    if not lines:
        raise InputError(f"cannot read {path.name}: it is empty or has no NRRD header")
    try:
        return dict(nrrd.read_header(lines)), size
    except Exception as error:  # pynrrd raises NRRDError, ValueError, StopIteration...
        raise InputError(f"cannot read {path.name}: {first_line(error)}") from None


def detached_data_file(path: Path) -> Path | None:
    """The data file a (readable) ``.nhdr`` header names, resolved; ``None`` for attached data or an
    unreadable header (used to never write over an input's data)."""
    try:
        header, _ = read_header(Path(path))
        name = _data_file_field(header)
    except InputError:
        return None
    return (Path(path).parent / name).resolve() if name else None


def _open_regular(path: Path, what: str):
    """Open ``path`` for binary reading only if it is a regular file: a FIFO (which would block
    forever) or a device such as ``/dev/zero`` is refused, without blocking."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise InputError(f"cannot read {what}: {error.strerror or error}") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise InputError(f"{what} is not a regular file (a pipe, device or folder); refused")
    return os.fdopen(descriptor, "rb")


def _sizes(path: Path, header: dict) -> list[int]:
    try:
        sizes = [int(n) for n in header["sizes"]]
    except (KeyError, TypeError, ValueError, OverflowError):
        raise InputError(f"cannot read {path.name}: its header has no valid 'sizes'") from None
    if not sizes or min(sizes) < 1 or int(header.get("dimension", len(sizes))) != len(sizes):
        raise InputError(f"cannot read {path.name}: 'sizes' {sizes} must be positive, one per dimension")
    voxels = int(np.prod(sizes, dtype=np.float64)) if max(sizes) < 2 ** 40 else 2 ** 62
    if voxels > MAX_VOXELS:  # refuse before allocating anything
        raise InputError(f"{path.name} declares {' x '.join(map(str, sizes))} voxels, more than the "
                         f"{MAX_VOXELS:,} accepted")
    return sizes


def _affine(path: Path, header: dict, spatial: list[int], signs) -> np.ndarray:
    directions = np.asarray(header.get("space directions", np.full((3, 3), np.nan)), dtype=np.float64)
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    if directions.ndim == 2 and directions.shape[0] == len(header["sizes"]):
        directions = directions[spatial]  # the rows of the three spatial axes ('none' rows are NaN)
    if directions.shape != (3, 3) or origin.shape != (3,) or not (np.all(np.isfinite(directions))
                                                                  and np.all(np.isfinite(origin))):
        raise InputError(f"{path.name} has no valid 'space directions'/'space origin' for its 3 axes")
    affine = np.eye(4)
    affine[:3, :3] = directions.T
    affine[:3, 3] = origin
    affine[:3] *= np.asarray(signs, dtype=np.float64)[:, None]
    return affine


def _dtype(path: Path, header: dict) -> np.dtype:
    from nrrd.reader import _TYPEMAP_NRRD2NUMPY

    kind = _TYPEMAP_NRRD2NUMPY.get(str(header.get("type", "")))
    if kind is None or kind == "V":
        raise InputError(f"cannot read {path.name}: NRRD type '{header.get('type', 'missing')}' is not a number type")
    dtype = np.dtype(kind)
    encoding = str(header.get("encoding", "")).lower()
    if dtype.itemsize > 1 and encoding not in _ASCII:
        endian = header.get("endian")
        if endian not in ("little", "big"):
            raise InputError(f"cannot read {path.name}: header needs 'endian: little' or 'big'")
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    return dtype


def _data_file_field(header: dict) -> str | None:
    name = header.get("data file", header.get("datafile"))
    if name is None:
        return None
    name = str(name).strip()
    parts = name.split()
    if name == "LIST" or (len(parts) >= 4 and "%" in parts[0]):
        raise InputError("NRRD data split over several files ('data file: LIST' or a file name pattern) "
                         "is not supported; save the volume as one .nrrd file")
    return name


def _data_location(path: Path, header: dict, data_start: int) -> tuple[Path, int, str]:
    """``(file, offset, what)``: where the voxels are. A detached data file must be a file inside
    the header's folder (after resolving links), never an absolute path or a ``..`` escape."""
    name = _data_file_field(header)
    if name is None:
        return path, data_start, path.name
    folder = path.parent.resolve()
    data = (path.parent / name).resolve()
    if os.path.isabs(name) or not data.is_relative_to(folder):
        raise InputError(f"{path.name}: its data file '{name}' is outside the header's folder; "
                         "keep the header and its data file in one folder (absolute paths and '..' are refused)")
    return data, 0, f"{path.name}'s data file {name}"


def _read_voxels(path: Path, header: dict, data_start: int, dtype: np.dtype, count: int) -> np.ndarray:
    """The ``count`` declared values as a flat float32 array, read with bounded memory and time."""
    location, offset, what = _data_location(path, header, data_start)
    encoding = str(header.get("encoding", "")).lower()
    if encoding not in ("raw",) + _ASCII and encoding not in _COMPRESSED:
        raise InputError(f"cannot read {path.name}: NRRD encoding '{header.get('encoding', 'missing')}' is not "
                         "supported (raw, gzip, bzip2, ascii)")
    line_skip = int(header.get("line skip", header.get("lineskip", 0)))
    byte_skip = int(header.get("byte skip", header.get("byteskip", 0)))
    declared = count * dtype.itemsize
    with _open_regular(location, what) as handle:
        size = os.fstat(handle.fileno()).st_size
        if line_skip < 0 or byte_skip < -1:
            raise InputError(f"cannot read {path.name}: line skip {line_skip} / byte skip {byte_skip} is negative")
        if line_skip > size or (byte_skip > size and encoding not in _COMPRESSED):
            raise InputError(f"{path.name}: line skip {line_skip} / byte skip {byte_skip} exceeds the "
                             f"{size:,} bytes of {what}")
        handle.seek(offset)
        _skip_lines(handle, line_skip, path)
        start = handle.tell()
        out = np.empty(count, dtype=np.float32)
        if encoding == "raw":
            start = size - declared if byte_skip == -1 else start + byte_skip
            if start < handle.tell() or size - start != declared:
                raise InputError(f"{path.name} declares {count:,} values ({declared:,} bytes of data) but {what} "
                                 f"holds {max(size - start, 0):,} bytes after its header and skips; "
                                 "it is truncated or its header is wrong")
            handle.seek(start)
            _fill(out, _binary_values(_raw_chunks(handle, declared), dtype, path), path)
        elif encoding in _ASCII:
            if byte_skip:
                handle.seek(start + max(byte_skip, 0))
            if size - handle.tell() > count * MAX_ASCII_BYTES_PER_VALUE + (1 << 20):
                raise InputError(f"{path.name}: {what} holds {size - handle.tell():,} bytes of text, far more than "
                                 f"{count:,} values need; its header is wrong")
            _fill(out, _ascii_values(handle, path), path)
        else:
            if byte_skip == -1:
                raise InputError(f"cannot read {path.name}: byte skip -1 is only defined for raw data")
            compressed = size - start
            if byte_skip + declared > compressed * MAX_COMPRESSION_RATIO:
                raise InputError(f"{path.name} declares {declared:,} bytes of data but {what} holds {compressed:,} "
                                 f"{_COMPRESSED[encoding]} bytes: it would decompress more than "
                                 f"{MAX_COMPRESSION_RATIO} times its size (a decompression bomb or a wrong header)")
            chunks = _decompressed_chunks(handle, _COMPRESSED[encoding], byte_skip + declared, path)
            _fill(out, _binary_values(_skip_bytes(chunks, byte_skip), dtype, path), path)
    return out


def _skip_lines(handle, lines: int, path: Path) -> None:
    scanned = 0
    while lines > 0:
        block = handle.read(min(_CHUNK, MAX_LINE_SKIP_BYTES - scanned))
        if not block:
            what = "the file ends" if scanned < MAX_LINE_SKIP_BYTES else f"{MAX_LINE_SKIP_BYTES:,} bytes were scanned"
            raise InputError(f"{path.name}: line skip is longer than its data file ({what} first)")
        found = block.count(b"\n")
        if found >= lines:
            position = -1
            for _ in range(lines):
                position = block.index(b"\n", position + 1)
            handle.seek(position + 1 - len(block), os.SEEK_CUR)
            return
        lines -= found
        scanned += len(block)


def _raw_chunks(handle, total: int):
    remaining = total
    while remaining > 0:
        block = handle.read(min(_CHUNK, remaining))
        if not block:
            return
        remaining -= len(block)
        yield block


def _decompressed_chunks(handle, kind: str, limit: int, path: Path):
    """Decompressed blocks of the first gzip/bzip2 stream, ``limit + 1`` bytes at most: one byte
    beyond the declared size is enough to know that the header is wrong."""
    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16) if kind == "gzip" else bz2.BZ2Decompressor()
    produced, pending = 0, b""
    try:
        while not decompressor.eof and produced <= limit:
            if kind == "gzip":
                data = decompressor.unconsumed_tail or handle.read(1 << 16)
                if not data:
                    break
                block = decompressor.decompress(data, limit + 1 - produced)
            else:
                data = handle.read(1 << 16) if decompressor.needs_input else b""
                if decompressor.needs_input and not data:
                    break
                block = decompressor.decompress(data, max_length=limit + 1 - produced)
            produced += len(block)
            pending += block
            if len(pending) >= _CHUNK or decompressor.eof or produced > limit:
                yield pending
                pending = b""
    except (zlib.error, OSError, EOFError, ValueError) as error:
        raise InputError(f"cannot read {path.name}: its {kind} data is corrupt ({first_line(error)})") from None
    if pending:
        yield pending
    if produced > limit:
        raise InputError(f"{path.name}: its {kind} data holds more data than its header declares "
                         f"({limit:,} bytes); the header is wrong")


def _skip_bytes(chunks, skip: int):
    for block in chunks:
        if skip >= len(block):
            skip -= len(block)
            continue
        yield block[skip:] if skip else block
        skip = 0


def _fill(out: np.ndarray, arrays, path: Path) -> None:
    """Copy the value arrays ``arrays`` yields into ``out`` (float32): exactly ``out.size`` values."""
    position, problem = 0, None
    with np.errstate(over="ignore", invalid="ignore"):
        for values in arrays:
            if position + values.size > out.size:
                raise InputError(f"{path.name} holds more data than its header declares ({out.size:,} values)")
            part = out[position: position + values.size]
            part[...] = values
            position += values.size
            problem = _check_finite(part, values, problem)
    if position != out.size:
        raise InputError(f"{path.name} declares {out.size:,} values but holds only {position:,}; "
                         "it is truncated or its header is wrong")
    _raise_for(problem, path)


def _binary_values(chunks, dtype: np.dtype, path: Path):
    """The ``dtype`` values in byte blocks (a value may straddle two blocks)."""
    carry = b""
    for block in chunks:
        block = carry + block if carry else block
        usable = len(block) - len(block) % dtype.itemsize
        carry = block[usable:]
        yield np.frombuffer(block, dtype=dtype, count=usable // dtype.itemsize)
    if carry:
        raise InputError(f"{path.name}: its data ends inside a value ({len(carry)} of {dtype.itemsize} bytes); "
                         "it is truncated or its header is wrong")


def _ascii_values(handle, path: Path):
    """The numbers of ASCII data, block by block (a number may straddle two blocks)."""
    carry = b""
    while True:
        block = handle.read(_CHUNK)
        text = carry + block
        if block:  # the last token may continue in the next block
            cut = max(text.rfind(b" "), text.rfind(b"\n"), text.rfind(b"\t"), text.rfind(b"\r"))
            text, carry = (text[: cut + 1], text[cut + 1:]) if cut >= 0 else (b"", text)
        try:
            yield np.array(text.split(), dtype=np.float64)
        except ValueError as error:
            raise InputError(f"cannot read {path.name}: its ASCII data has a non-number ({first_line(error)})") from None
        if not block:
            return
        if len(carry) > _CHUNK:
            raise InputError(f"cannot read {path.name}: its ASCII data has a token longer than {_CHUNK:,} bytes")


def _check_finite(converted: np.ndarray, original: np.ndarray, problem):
    if problem == "nan" or np.all(np.isfinite(converted)):
        return problem
    if np.issubdtype(original.dtype, np.integer) or np.all(np.isfinite(original)):
        return problem or "range"
    return "nan"


def _raise_for(problem, path: Path) -> None:
    if problem == "nan":
        raise InputError(f"{path.name} contains NaN or infinite values")
    if problem == "range":
        raise InputError(f"{path.name} has values beyond the float32 range")


# -- writing -----------------------------------------------------------------------------------

def nhdr_data_file(target: Path) -> Path:
    """The data file an ``.nhdr`` output ``target`` gets: ``<stem>.raw.gz`` beside it."""
    target = Path(target)
    return target.parent / (target.name[: -len(".nhdr")] + ".raw.gz")


def write_nrrd(volume: Volume, path, target=None, data_path=None) -> None:
    """Write a float32, gzip-encoded NRRD in LPS (Slicer's convention) to ``path`` (no checks, not
    atomic: see :func:`MRISynthesisLib.io.write_outputs`).

    ``path`` may be a temporary name of ``target``. An ``.nhdr`` target names its data file
    :func:`nhdr_data_file` of ``target`` in its header; the compressed voxels are written to
    ``data_path`` (a temporary name of that file, renamed together with the header by
    :func:`MRISynthesisLib.io.write_outputs`; default: the data file itself).
    """
    target = Path(target if target is not None else path)
    data = np.asarray(volume.array, dtype=np.float32)
    lps = np.diag([-1.0, -1.0, 1.0])
    directions = (lps @ volume.affine[:3, :3]).T
    origin = lps @ volume.affine[:3, 3]

    def vector(values):
        return "(" + ",".join(repr(float(v)) for v in values) + ")"

    lines = ["NRRD0004", "# Complete NRRD file format specification at:",
             "# http://teem.sourceforge.net/nrrd/format.html", "type: float", "dimension: 3",
             "space: left-posterior-superior", f"sizes: {' '.join(str(n) for n in data.shape)}",
             f"space directions: {' '.join(vector(row) for row in directions)}",
             "kinds: domain domain domain", "endian: little", "encoding: gzip",
             f"space origin: {vector(origin)}"]
    provenance = volume.meta.get("provenance")
    if provenance:  # what made a synthetic volume travels with it (read back by io.read_provenance)
        model = "".join(c if " " <= c <= "~" else "?" for c in str(provenance.get("model_id", "")))[:200]
        lines.append(f"content: MRISynthesis {model}; not for diagnosis")  # one printable ASCII line
        record = json.dumps(provenance, sort_keys=True, default=str, allow_nan=False, ensure_ascii=True)
        lines.append(f"{PROVENANCE_KEY}:={record}")
    detached = target.name.lower().endswith(".nhdr")
    if detached:
        lines.append(f"data file: {nhdr_data_file(target).name}")
    text = ("\n".join(lines) + "\n\n").encode("ascii")
    with open(path, "wb") as stream:
        stream.write(text)
        if detached:
            with open(data_path if data_path is not None else nhdr_data_file(target), "wb") as data_stream:
                _write_gzip(data, data_stream)
        else:
            _write_gzip(data, stream)


def _write_gzip(data: np.ndarray, stream: io.RawIOBase) -> None:
    """The voxels, fastest axis first (NRRD order), little-endian float32, one gzip stream;
    slice by slice, so no second copy of the volume is made."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    for k in range(data.shape[2]):
        stream.write(compressor.compress(np.asarray(data[:, :, k], dtype="<f4").tobytes(order="F")))
    stream.write(compressor.flush())
