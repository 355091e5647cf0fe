"""Self-describing, safe model checkpoints: one ``.safetensors`` file with JSON metadata.

The weights are stored with safetensors (no pickle, so loading never executes code). The
metadata (architecture and its config, direction, slice size, normalisation, orientation
convention, training data, validation metrics, software version, content hash) is a JSON
string stored under the key ``"mrisynthesis"`` in the safetensors header, so a checkpoint
describes itself and a renamed or copied file still works.

Integrity (format 2): ``content_sha256`` covers the weights (names, dtypes, shapes, bytes) and
``metadata_sha256`` covers the canonical JSON of every other metadata field, ``content_sha256``
included, so neither the weights nor the direction, slice size, spacing or normalisation can be
changed without the file being refused. These hashes detect accidental or naive edits; they are
not signatures (the catalog's SHA-256 of each shipped file pins the file as a whole).
Format 1 files (weights hash only) are refused by default: their metadata cannot be verified. A
person who trusts such a file re-saves it in the current format with
``python -m Training.export OLD.safetensors --upgrade-to NEW.safetensors``.

Crafted metadata is refused before anything is allocated: every field is type- and range-checked
(:meth:`ModelMetadata.validate`), the architecture must be a generator, and the network its config
describes is first built on PyTorch's ``meta`` device (no memory) to compare its parameter names
and shapes with the tensors the file declares and to bound its size (:data:`MAX_PARAMETERS`). That
construction is itself bounded: it stops at :data:`MAX_MODULES` layers or :data:`MAX_PARAMETERS`
values, so options that are each in range but multiply (``levels: 4096, blocks: 4096``) cannot make
it run for minutes. The meta network then runs one slice of ``slice_size`` pixels (no memory) to
measure what its intermediate results need; a batch may need at most
:data:`MAX_BATCH_ACTIVATION_BYTES` (:func:`check_batch_memory`). The metadata JSON may nest at most
:data:`MAX_JSON_DEPTH` levels.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path


from . import __version__
from .atomic import atomic_path
from .conventions import (DEFAULT_SLICE_GRID, DIRECTIONS, PERCENTILE_HIGH, PERCENTILE_LOW, SOURCE_CONTRAST, TARGET_CONTRAST,
                          SliceGrid)
from .errors import CheckpointError, InputError, first_line

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = [
    "FORMAT_VERSION", "MAX_BATCH_ACTIVATION_BYTES", "MAX_CONTEXT_SLICES", "MAX_MODULES", "MAX_PARAMETERS",
    "MAX_SLICE_SIZE", "ModelMetadata", "activation_bytes", "check_batch_bytes", "check_batch_memory", "content_hash",
    "file_sha256",
    "load_checkpoint", "network_size", "read_metadata", "save_checkpoint", "upgrade_checkpoint",
    "weights_match_content_hash"]

FORMAT = "mrisynthesis-checkpoint"
FORMAT_VERSION = 2
#: Older formats that can still be read when the caller vouches for their unprotected metadata.
LEGACY_FORMAT_VERSIONS = (1,)
METADATA_KEY = "mrisynthesis"
ORIENTATION_CONVENTION = ("canonical axial slices: slice inferior->superior, row anterior->posterior, "
                          "column right->left (nibabel LPS axis order, indexed [k, j, i])")

# Bounds on crafted metadata, checked before any tensor or network is allocated.
MAX_SLICE_SIZE = 1024
MAX_CONTEXT_SLICES = 16
#: Largest integer a model option (ngf, blocks, levels, latent size, ...) may take.
MAX_CONFIG_INT = 4096
MAX_CONFIG_LIST = 64
MAX_TEXT_CHARS = 100_000
#: Largest network (parameters + buffers) a checkpoint may describe: 1.2 GB of float32.
MAX_PARAMETERS = 300_000_000
#: Most layers (modules, containers included) a network may have; the shipped ones have 64-151.
MAX_MODULES = 1000
#: Most memory the network's intermediate results may hold at once for one batch (float32), as
#: measured on the meta device; the shipped models need 8-30 MB per 256 x 256 slice.
MAX_BATCH_ACTIVATION_BYTES = 8 << 30
#: Deepest nesting of JSON arrays/objects in the metadata (the metadata we write nests 3 deep).
MAX_JSON_DEPTH = 32
WEIGHTS_DTYPES = ("float32", "float16")
_TEXT_FIELDS = ("architecture", "direction", "model_id", "title", "orientation", "output_units", "description",
                "software_version", "created", "content_sha256", "metadata_sha256", "weights_dtype", "format")


@dataclass
class ModelMetadata:
    """Everything needed to use a model correctly, stored inside its checkpoint."""

    architecture: str
    config: dict
    direction: str
    model_id: str = "unnamed"
    title: str = ""
    slice_size: int = DEFAULT_SLICE_GRID.slice_size
    pixel_spacing_mm: float | None = DEFAULT_SLICE_GRID.pixel_spacing_mm
    context_slices: int = DEFAULT_SLICE_GRID.context_slices
    normalisation: dict = field(default_factory=lambda: {
        "method": "percentile", "low": PERCENTILE_LOW, "high": PERCENTILE_HIGH, "mask": "foreground",
        "model_range": [-1.0, 1.0]})
    orientation: str = ORIENTATION_CONVENTION
    output_units: str = "normalised: 0 background, 1 = 99.5th percentile of the target contrast in the brain"
    training_data: dict = field(default_factory=dict)
    validation_metrics: dict = field(default_factory=dict)
    description: str = ""
    software_version: str = __version__
    created: str = ""
    content_sha256: str = ""
    metadata_sha256: str = ""
    weights_dtype: str = "float32"
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def grid(self) -> SliceGrid:
        """The model grid (slice size, pixel spacing, context slices) as one value."""
        return SliceGrid(self.slice_size, self.pixel_spacing_mm, self.context_slices)

    @property
    def source_contrast(self) -> str:
        return SOURCE_CONTRAST[self.direction]

    @property
    def target_contrast(self) -> str:
        return TARGET_CONTRAST[self.direction]

    @property
    def percentiles(self) -> tuple[float, float]:
        """``(low, high)``: the intensity percentiles (inside the brain mask) the model's inputs were
        normalised with (:data:`MRISynthesisLib.conventions.PERCENTILE_LOW` / ``_HIGH`` if unstated)."""
        norm = self.normalisation
        return float(norm.get("low", PERCENTILE_LOW)), float(norm.get("high", PERCENTILE_HIGH))

    def validate(self) -> None:
        """Check every field's type and range; raises :class:`CheckpointError` naming the field.

        Nothing is allocated: the bounds keep a crafted file from asking for a huge network or slice.
        (In-memory models, e.g. an identity network in a study, may have any architecture name;
        metadata read from a file must also name a registered generator, see :meth:`from_json`.)
        """
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
                raise CheckpointError(f"checkpoint metadata '{name}' must be a string, got {_short(value)}")
        if not _is_int(self.format_version) or self.format_version < 1:
            raise CheckpointError(f"checkpoint format_version must be a positive integer, got {_short(self.format_version)}")
        if self.direction not in DIRECTIONS:
            raise CheckpointError(f"checkpoint direction '{self.direction}' is not one of {', '.join(DIRECTIONS)}")
        _check_config(self.config)
        if not _is_int(self.slice_size) or not 16 <= self.slice_size <= MAX_SLICE_SIZE:
            raise CheckpointError(f"checkpoint slice_size must be an integer from 16 to {MAX_SLICE_SIZE}, "
                                  f"got {_short(self.slice_size)}")
        if not _is_int(self.context_slices) or not 0 <= self.context_slices <= MAX_CONTEXT_SLICES:
            raise CheckpointError(f"checkpoint context_slices must be an integer from 0 to {MAX_CONTEXT_SLICES}, "
                                  f"got {_short(self.context_slices)}")
        channels = self.config.get("in_channels")
        if channels is not None and channels != 2 * self.context_slices + 1:
            raise CheckpointError(f"checkpoint config in_channels {channels} does not match context_slices "
                                  f"{self.context_slices} (expected {2 * self.context_slices + 1})")
        spacing = self.pixel_spacing_mm
        if spacing is not None and (not _is_number(spacing) or not 0 < spacing < 100):
            raise CheckpointError(f"checkpoint pixel_spacing_mm must be null or a number in (0, 100) mm, "
                                  f"got {_short(spacing)}")
        norm = self.normalisation
        if not isinstance(norm, dict):
            raise CheckpointError("checkpoint metadata 'normalisation' must be a JSON object")
        low, high = norm.get("low", PERCENTILE_LOW), norm.get("high", PERCENTILE_HIGH)
        # A percentile normalisation maps [low, high] to [0, 1]; one that does not span the middle
        # half of the foreground clips most of it (low 0, high 1e-9 would call every input constant).
        if not (_is_number(low) and _is_number(high) and 0 <= low <= 25 and 75 <= high <= 100):
            raise CheckpointError(f"checkpoint normalisation percentiles must satisfy 0 <= low <= 25 and 75 <= high "
                                  f"<= 100, got {_short(low)}, {_short(high)}")
        for name in ("training_data", "validation_metrics"):
            if not isinstance(getattr(self, name), dict):
                raise CheckpointError(f"checkpoint metadata '{name}' must be a JSON object")
        if self.weights_dtype not in WEIGHTS_DTYPES:
            raise CheckpointError(f"checkpoint weights_dtype must be one of {', '.join(WEIGHTS_DTYPES)}, "
                                  f"got {_short(self.weights_dtype)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=True)

    @classmethod
    def from_json(cls, text: str, trust_legacy_metadata: bool = False,
                  check_architecture: bool = True) -> "ModelMetadata":
        """Parse, verify (metadata hash, format version) and validate the metadata JSON.

        ``trust_legacy_metadata``: accept a format-1 file, whose metadata has no hash; only for a
        person re-saving a file they vouch for (:func:`upgrade_checkpoint`).
        ``check_architecture=False`` skips the check that the architecture names a registered
        generator (it imports PyTorch, which the model registry needs); the caller then relies on
        :func:`load_checkpoint`, which always checks it, or on a graph derived from a checkpoint
        that passed it (:mod:`MRISynthesisLib.engines`).
        """
        depth = _json_depth(text)
        if depth > MAX_JSON_DEPTH:
            raise CheckpointError(f"checkpoint metadata nests {depth} levels deep (at most {MAX_JSON_DEPTH}); "
                                  "it was not written by MRISynthesis")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise CheckpointError(f"checkpoint metadata is not valid JSON ({error.msg})") from None
        except RecursionError:
            raise CheckpointError("checkpoint metadata nests too deeply") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError("file is not an MRISynthesis checkpoint (metadata format missing)")
        version = data.get("format_version")
        if not _is_int(version) or version < 1:
            raise CheckpointError(f"checkpoint format_version must be a positive integer, got {_short(version)}")
        if version > FORMAT_VERSION:
            raise CheckpointError(f"checkpoint format version {version} is newer than this "
                                  f"software supports ({FORMAT_VERSION}); update MRISynthesis")
        if version < FORMAT_VERSION:
            if version not in LEGACY_FORMAT_VERSIONS or not trust_legacy_metadata:
                raise CheckpointError(
                    f"checkpoint format version {version} does not protect its metadata (direction, slice size, "
                    f"normalisation) with a hash, so it is refused; if you trust the file, re-save it in format "
                    f"{FORMAT_VERSION}: python -m Training.export OLD.safetensors --upgrade-to NEW.safetensors")
        elif data.get("metadata_sha256") != metadata_hash(data):
            raise CheckpointError("checkpoint metadata does not match its metadata hash (edited or corrupted); "
                                  "its direction, slice size and normalisation cannot be trusted")
        missing = [k for k in ("architecture", "config", "direction") if k not in data]
        if missing:
            raise CheckpointError(f"checkpoint metadata lacks {', '.join(missing)}")
        known = {f for f in cls.__dataclass_fields__}
        metadata = cls(**{k: v for k, v in data.items() if k in known})
        metadata.validate()
        if check_architecture:
            _check_generator(metadata.architecture)  # a file must name a registered generator
        return metadata


def metadata_hash(data: dict) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces, ASCII) of ``data`` minus its own hash."""
    canonical = json.dumps({k: v for k, v in data.items() if k != "metadata_sha256"}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in JSON ``text`` (brackets inside strings ignored), in linear
    time and without recursion, so it can be checked before parsing."""
    import numpy as np

    outside_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    steps = np.frombuffer(outside_strings.encode("utf-8", "replace"), dtype=np.uint8)
    change = (np.isin(steps, (ord("["), ord("{"))).astype(np.int64)
              - np.isin(steps, (ord("]"), ord("}"))).astype(np.int64))
    return int(np.cumsum(change).max(initial=0))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_generator(architecture: str) -> None:
    from .models import DISCRIMINATOR_NAMES, GENERATOR_NAMES

    if architecture in DISCRIMINATOR_NAMES:
        raise CheckpointError(f"checkpoint architecture '{architecture}' is a discriminator, not a generator; "
                              "only generators synthesize images")
    if architecture not in GENERATOR_NAMES:
        raise CheckpointError(f"checkpoint architecture {_short(architecture)} is unknown; "
                              f"generators: {', '.join(GENERATOR_NAMES)}")


def _check_config(config) -> None:
    """Every model option must be a bounded JSON scalar or a short list of them (any architecture)."""
    if not isinstance(config, dict):
        raise CheckpointError("the model config must be a JSON object")
    for key, value in config.items():
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) > MAX_CONFIG_LIST:
            raise CheckpointError(f"config '{key}' has {len(value)} items (at most {MAX_CONFIG_LIST})")
        for item in items:
            if isinstance(item, bool) or item is None:
                continue
            if isinstance(item, str) and len(item) <= 200:
                continue
            if _is_int(item) and -MAX_CONFIG_INT <= item <= MAX_CONFIG_INT:
                continue
            if isinstance(item, float) and math.isfinite(item) and abs(item) <= MAX_CONFIG_INT:
                continue
            raise CheckpointError(f"config '{key}' = {_short(value)} is out of range "
                                  f"(numbers from -{MAX_CONFIG_INT} to {MAX_CONFIG_INT}, short strings, booleans)")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def content_hash(state: dict) -> str:
    """SHA-256 over tensor names, dtypes, shapes and bytes (independent of file layout)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(-1).view(dtype=_byte_dtype()).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _byte_dtype():
    import torch

    return torch.uint8


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path, model, metadata: ModelMetadata, half: bool = False) -> Path:
    """Write ``model``'s weights and ``metadata`` to ``path`` (.safetensors), atomically.

    ``half=True`` stores floating-point weights as float16 (half the size); they are cast back to
    float32 on load. The file is always written in the current format (:data:`FORMAT_VERSION`),
    with fresh weight and metadata hashes.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoint file name must end in .safetensors: {path.name}")
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        if half and tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        state[name] = tensor.clone()
    metadata.weights_dtype = "float16" if half else "float32"
    metadata.software_version = __version__
    metadata.format, metadata.format_version = FORMAT, FORMAT_VERSION
    metadata.created = metadata.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    metadata.content_sha256 = content_hash(state)
    metadata.validate()
    record = asdict(metadata)
    metadata.metadata_sha256 = record["metadata_sha256"] = metadata_hash(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={METADATA_KEY: json.dumps(record, sort_keys=True, allow_nan=True)})
    return path


def read_metadata(path, trust_legacy_metadata: bool = False, check_architecture: bool = True) -> ModelMetadata:
    """Read and verify only the metadata of a checkpoint (fast; no weights are read).
    ``check_architecture``: see :meth:`ModelMetadata.from_json` (False: no PyTorch is imported)."""
    return _read_header(path, trust_legacy_metadata, check_architecture)[0]


def _read_header(path, trust_legacy_metadata: bool = False, check_architecture: bool = True):
    """``(metadata, {tensor name: (dtype, shape)})`` from the safetensors header only."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="numpy") as handle:  # the header only; "numpy" needs no torch
            raw = (handle.metadata() or {}).get(METADATA_KEY)
            tensors = {name: (handle.get_slice(name).get_dtype(), tuple(handle.get_slice(name).get_shape()))
                       for name in handle.keys()}
    except Exception as error:
        raise CheckpointError(f"{path.name} is not a readable safetensors checkpoint "
                              f"(corrupt or truncated?): {first_line(error)}") from None
    if raw is None:
        raise CheckpointError(f"{path.name} has no MRISynthesis metadata; it is not one of our checkpoints")
    try:
        return ModelMetadata.from_json(raw, trust_legacy_metadata, check_architecture), tensors
    except CheckpointError as error:
        raise CheckpointError(f"{path.name}: {error}") from None


#: safetensors dtype codes -> the dtype names :func:`content_hash` hashes (PyTorch's).
_TORCH_DTYPE_NAMES = {"F64": "torch.float64", "F32": "torch.float32", "F16": "torch.float16", "BF16": "torch.bfloat16",
                      "I64": "torch.int64", "I32": "torch.int32", "I16": "torch.int16", "I8": "torch.int8",
                      "U8": "torch.uint8", "BOOL": "torch.bool"}


def weights_match_content_hash(path, metadata: ModelMetadata) -> bool:
    """True when the weights stored in ``path`` hash to ``metadata.content_sha256`` (the hash of
    :func:`content_hash`), computed from the file's bytes without PyTorch (for engines that run a
    graph derived from the checkpoint instead of the checkpoint itself). False for a file whose
    weights differ or cannot be read."""
    import mmap

    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            size = int.from_bytes(data[:8], "little")
            header = json.loads(bytes(data[8:8 + size]))
            start = 8 + size
            digest = hashlib.sha256()
            for name in sorted(k for k in header if k != "__metadata__"):
                entry = header[name]
                begin, end = (int(v) for v in entry["data_offsets"])
                digest.update(name.encode())
                digest.update(_TORCH_DTYPE_NAMES[entry["dtype"]].encode())
                digest.update(str(tuple(int(n) for n in entry["shape"])).encode())
                digest.update(data[start + begin:start + end])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return digest.hexdigest() == metadata.content_sha256


def load_checkpoint(path, device="cpu", trust_legacy_metadata: bool = False):
    """Load ``(model, metadata)`` from a checkpoint; the model is in eval mode on ``device``.

    Raises :class:`CheckpointError` for a missing, corrupt, truncated, tampered, unknown or
    mismatched checkpoint, and for one in an old format unless ``trust_legacy_metadata``. Never
    unpickles anything; nothing is allocated before the metadata and the declared tensor shapes
    have been checked against the network the metadata describes.
    """
    from safetensors.torch import load_file

    from .models import build_model

    path = _existing(path)
    metadata, declared = _read_header(path, trust_legacy_metadata)
    if not metadata.content_sha256:
        raise CheckpointError(f"{path.name}: metadata has no content hash, so its weights cannot be verified")
    _check_declared_tensors(path, metadata, declared)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as error:
        raise CheckpointError(f"cannot read the weights in {path.name} (corrupt or truncated?): "
                              f"{first_line(error)}") from None
    if content_hash(state) != metadata.content_sha256:
        raise CheckpointError(f"{path.name}: weights do not match the content hash in its metadata (file corrupted or altered)")
    try:
        model = build_model(metadata.architecture, **metadata.config)
    except InputError as error:
        raise CheckpointError(f"{path.name}: cannot build its network: {error}") from None
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path.name}: weights do not fit architecture '{metadata.architecture}' "
                              f"with its config: {first_line(error)}") from None
    model.eval()
    return model.to(device), metadata


def _check_declared_tensors(path: Path, metadata: ModelMetadata, declared: dict) -> None:
    """Build the described network on the ``meta`` device (no memory) and compare it with the file.

    Generic for every registered generator: the size guard needs no per-model list.
    """
    try:
        expected = network_shapes(metadata.architecture, metadata.config)
        slice_bytes = activation_bytes(metadata)
    except CheckpointError as error:
        raise CheckpointError(f"{path.name}: {error}") from None
    if slice_bytes > MAX_BATCH_ACTIVATION_BYTES:
        raise CheckpointError(f"{path.name}: its network needs {_gib(slice_bytes)} for the intermediate results of "
                              f"a single {metadata.slice_size} x {metadata.slice_size} slice (at most "
                              f"{_gib(MAX_BATCH_ACTIVATION_BYTES)} per batch are accepted)")
    size = sum(math.prod(shape) for shape in expected.values())
    if size > MAX_PARAMETERS:
        raise CheckpointError(f"{path.name}: its config describes a network of {size:,} values "
                              f"(at most {MAX_PARAMETERS:,} are accepted)")
    missing = sorted(set(expected) - set(declared))
    unexpected = sorted(set(declared) - set(expected))
    wrong = sorted(name for name in set(expected) & set(declared) if expected[name] != declared[name][1])
    if missing or unexpected or wrong:
        detail = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                  else f"{wrong[0]} is {list(declared[wrong[0]][1])}, expected {list(expected[wrong[0]])}")
        raise CheckpointError(f"{path.name}: weights do not fit architecture '{metadata.architecture}' "
                              f"with its config ({len(missing) + len(unexpected) + len(wrong)} tensors differ; "
                              f"{detail})")


def network_shapes(architecture: str, config: dict) -> dict:
    """``{tensor name: shape}`` of the network ``architecture`` with ``config``, built on PyTorch's
    ``meta`` device (no memory is allocated; any registered model). :class:`CheckpointError` for
    unbounded option values, a network beyond :data:`MAX_MODULES` layers or :data:`MAX_PARAMETERS`
    values (construction stops there), or a config its constructor rejects."""
    network = _meta_network(architecture, config)
    return {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}


def _meta_network(architecture: str, config: dict):
    from .models import build_model
    from .network_sizing import build_on_meta

    _check_config(config)
    try:
        return build_on_meta(lambda: build_model(architecture, **config), MAX_MODULES, MAX_PARAMETERS)
    except CheckpointError:
        raise
    except Exception as error:  # a config the constructor rejects (InputError, negative sizes, ...)
        raise CheckpointError(f"cannot build its network '{architecture}': {first_line(error)}") from None


def activation_bytes(metadata: ModelMetadata, batch_size: int = 1) -> int:
    """Peak bytes the intermediate results of the metadata's network hold during the inference of
    ``batch_size`` slices of ``slice_size`` x ``slice_size`` pixels (float32), measured by running
    it on PyTorch's ``meta`` device (no memory) and following which results are still referenced.
    :class:`CheckpointError` if the network cannot run on such slices."""
    key = json.dumps([metadata.architecture, metadata.config, metadata.slice_size, metadata.context_slices],
                     sort_keys=True)
    return batch_size * _slice_activation_bytes(key)


@functools.lru_cache(maxsize=16)
def _slice_activation_bytes(key: str) -> int:
    from .network_sizing import peak_activation_bytes

    architecture, config, size, context = json.loads(key)
    network = _meta_network(architecture, config).eval()
    channels = int(config.get("in_channels", 2 * context + 1))
    try:
        return peak_activation_bytes(network, (1, channels, size, size))
    except Exception as error:
        raise CheckpointError(f"its network cannot run on {size} x {size} slices: {first_line(error)}") from None


def check_batch_memory(metadata: ModelMetadata, batch_size: int) -> None:
    """:class:`CheckpointError` if a batch of ``batch_size`` slices would need more than
    :data:`MAX_BATCH_ACTIVATION_BYTES` for the network's intermediate results (before any is run)."""
    check_batch_bytes(metadata, batch_size, activation_bytes(metadata))


def check_batch_bytes(metadata: ModelMetadata, batch_size: int, per_slice: int) -> None:
    """:func:`check_batch_memory` for a network whose intermediate results need ``per_slice`` bytes
    per slice (:func:`activation_bytes`, e.g. as recorded when a graph was derived from it)."""
    needed = int(batch_size) * int(per_slice)
    if per_slice > MAX_BATCH_ACTIVATION_BYTES:
        raise CheckpointError(f"its network needs {_gib(per_slice)} for the intermediate results of a single "
                              f"{metadata.slice_size} x {metadata.slice_size} slice (at most "
                              f"{_gib(MAX_BATCH_ACTIVATION_BYTES)} per batch are accepted)")
    if needed > MAX_BATCH_ACTIVATION_BYTES:
        fitting = MAX_BATCH_ACTIVATION_BYTES // per_slice
        raise CheckpointError(f"a batch of {batch_size} slices of {metadata.slice_size} x {metadata.slice_size} needs "
                              f"{_gib(needed)} for this network's intermediate results (at most "
                              f"{_gib(MAX_BATCH_ACTIVATION_BYTES)}); use a batch size of at most {max(fitting, 1)}")


def _gib(size: int) -> str:
    return f"{size / 2 ** 30:.1f} GiB"


def network_size(architecture: str, config: dict) -> int:
    """Number of values (parameters and buffers) of a network, measured without allocating it."""
    return sum(math.prod(shape) for shape in network_shapes(architecture, config).values())


def upgrade_checkpoint(source, target) -> Path:
    """Re-save a trusted older-format checkpoint in the current format (same weights, same dtype).

    The weights are verified against their content hash; the metadata is taken as it is, so only
    run this on a file whose origin you know. ``target`` must differ from ``source``.
    """
    source, target = Path(source), Path(target)
    if target.exists() and target.resolve() == source.resolve():
        raise CheckpointError("the upgraded checkpoint must be written to a new file, not over the original")
    model, metadata = load_checkpoint(source, trust_legacy_metadata=True)
    return save_checkpoint(target, model, metadata, half=metadata.weights_dtype == "float16")


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size < 16:
        raise CheckpointError(f"{path.name} is empty or truncated ({path.stat().st_size} bytes)")
    with open(path, "rb") as handle:
        start = handle.read(4)
    # torch.save writes a zip archive (PK..) or, before torch 1.6, a raw pickle (0x80, protocol 2-5).
    if start.startswith(b"PK\x03\x04") or (start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        raise CheckpointError(f"{path.name} is a PyTorch pickle file (.pt/.pth), not a .safetensors checkpoint; "
                              "pickles are never loaded because loading one can run code")
    return path

