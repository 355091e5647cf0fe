"""Self-describing, safe model checkpoints: one ``.safetensors`` file with JSON metadata.

The weights are stored with safetensors (no pickle, so loading never executes code). The
metadata (architecture and its config, direction, slice size, normalisation, orientation
convention, training data, validation metrics, software version, content hash) is a JSON
string stored under the key ``"mrisynthesis"`` in the safetensors header, so a checkpoint
describes itself and a renamed or copied file still works.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


from . import __version__
from .atomic import atomic_path
from .errors import CheckpointError, InputError

FORMAT = "mrisynthesis-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "mrisynthesis"
DIRECTIONS = ("t1-to-t2", "t2-to-t1")
ORIENTATION_CONVENTION = ("canonical axial slices: slice inferior->superior, row anterior->posterior, "
                          "column right->left (nibabel LPS axis order, indexed [k, j, i])")


@dataclass
class ModelMetadata:
    """Everything needed to use a model correctly, stored inside its checkpoint."""

    architecture: str
    config: dict
    direction: str
    model_id: str = "unnamed"
    title: str = ""
    slice_size: int = 256
    pixel_spacing_mm: float | None = 1.0
    context_slices: int = 0
    normalisation: dict = field(default_factory=lambda: {
        "method": "percentile", "low": 0.5, "high": 99.5, "mask": "foreground", "model_range": [-1.0, 1.0]})
    orientation: str = ORIENTATION_CONVENTION
    output_units: str = "normalised: 0 background, 1 = 99.5th percentile of the target contrast in the brain"
    training_data: dict = field(default_factory=dict)
    validation_metrics: dict = field(default_factory=dict)
    description: str = ""
    software_version: str = __version__
    created: str = ""
    content_sha256: str = ""
    weights_dtype: str = "float32"
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def source_contrast(self) -> str:
        return self.direction.split("-to-")[0].upper()

    @property
    def target_contrast(self) -> str:
        return self.direction.split("-to-")[1].upper()

    def validate(self) -> None:
        """Check every field's type and range; raises :class:`CheckpointError` naming the field."""
        if self.direction not in DIRECTIONS:
            raise CheckpointError(f"checkpoint direction '{self.direction}' is not one of {', '.join(DIRECTIONS)}")
        if not isinstance(self.architecture, str) or not self.architecture:
            raise CheckpointError("checkpoint metadata 'architecture' must be a model name")
        if not isinstance(self.config, dict):
            raise CheckpointError("checkpoint metadata 'config' must be a JSON object")
        if not _is_int(self.slice_size) or self.slice_size < 16:
            raise CheckpointError(f"checkpoint slice_size must be an integer >= 16, got {self.slice_size!r}")
        if not _is_int(self.context_slices) or self.context_slices < 0:
            raise CheckpointError(f"checkpoint context_slices must be an integer >= 0, got {self.context_slices!r}")
        spacing = self.pixel_spacing_mm
        if spacing is not None and (not _is_number(spacing) or not 0 < spacing < 100):
            raise CheckpointError(f"checkpoint pixel_spacing_mm must be null or a positive number, got {spacing!r}")
        norm = self.normalisation
        if not isinstance(norm, dict):
            raise CheckpointError("checkpoint metadata 'normalisation' must be a JSON object")
        low, high = norm.get("low", 0.5), norm.get("high", 99.5)
        if not (_is_number(low) and _is_number(high) and 0 <= low < high <= 100):
            raise CheckpointError(f"checkpoint normalisation percentiles must satisfy 0 <= low < high <= 100, "
                                  f"got {low!r}, {high!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelMetadata":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise CheckpointError(f"checkpoint metadata is not valid JSON ({error.msg})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError("file is not an MRISynthesis checkpoint (metadata format missing)")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"checkpoint format version {data.get('format_version')} is newer than this "
                                  f"software supports ({FORMAT_VERSION}); update MRISynthesis")
        known = {f for f in cls.__dataclass_fields__}
        missing = [k for k in ("architecture", "config", "direction") if k not in data]
        if missing:
            raise CheckpointError(f"checkpoint metadata lacks {', '.join(missing)}")
        metadata = cls(**{k: v for k, v in data.items() if k in known})
        metadata.validate()
        return metadata


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
    float32 on load.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoint file name must end in .safetensors: {path.name}")
    metadata.validate()
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        if half and tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        state[name] = tensor.clone()
    metadata.weights_dtype = "float16" if half else "float32"
    metadata.software_version = __version__
    metadata.created = metadata.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    metadata.content_sha256 = content_hash(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={METADATA_KEY: metadata.to_json()})
    return path


def read_metadata(path) -> ModelMetadata:
    """Read only the metadata of a checkpoint (fast; no weights)."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except Exception as error:
        raise CheckpointError(f"{path.name} is not a readable safetensors checkpoint "
                              f"(corrupt or truncated?): {_first_line(error)}") from None
    if raw is None:
        raise CheckpointError(f"{path.name} has no MRISynthesis metadata; it is not one of our checkpoints")
    return ModelMetadata.from_json(raw)


def load_checkpoint(path, device="cpu"):
    """Load ``(model, metadata)`` from a checkpoint; the model is in eval mode on ``device``.

    Raises :class:`CheckpointError` for a missing, corrupt, truncated, tampered, unknown or
    mismatched checkpoint. Never unpickles anything.
    """
    from safetensors.torch import load_file

    from .models import build_model

    path = _existing(path)
    metadata = read_metadata(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as error:
        raise CheckpointError(f"cannot read the weights in {path.name} (corrupt or truncated?): "
                              f"{_first_line(error)}") from None
    if not metadata.content_sha256:
        raise CheckpointError(f"{path.name}: metadata has no content hash, so its weights cannot be verified")
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
                              f"with its config: {_first_line(error)}") from None
    model.eval()
    return model.to(device), metadata


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size < 16:
        raise CheckpointError(f"{path.name} is empty or truncated ({path.stat().st_size} bytes)")
    return path


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__
