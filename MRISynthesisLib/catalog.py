"""The model catalog: ``Resources/Models.json`` lists the models that ship with MRISynthesis, and
the user's own ``Models.json`` (written by ``python -m Training.export``) lists models they trained.

Each entry: ``id``, ``title``, ``direction`` (t1-to-t2 / t2-to-t1), ``file`` (relative to the
folder of its ``Models.json``), ``sha256`` of that file, ``description`` and ``default`` (true for
the model used when none is named; a default in the user's catalog wins over the shipped one). The
Resources folder is found next to the ``MRISynthesisLib`` package (source checkout or Slicer
extension), or where the environment variable ``MRISYNTHESIS_RESOURCES`` points. The user's folder
is :func:`user_models_dir`. An id of the shipped catalog cannot be reused in the user's.

The shipped ``Models.json`` may also list ``retired`` models: ``id``, ``replaced_by`` (a shipped id),
``retired`` (date), ``reason`` and ``commit`` (the last commit whose tree has the file). Their files
are gone; naming one gives a clear message with the replacement and how to get the file back
(:func:`retired_model`), instead of "unknown model".
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import DIRECTIONS, file_sha256
from .errors import CheckpointError, InputError, first_line

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = [
    "CATALOG_NAME", "USER_MODELS_ENV", "CatalogEntry", "RetiredModel", "default_model", "list_models",
    "read_catalog_file", "resolve_model", "resources_dir", "retired_model", "retired_models", "user_models_dir"]

CATALOG_NAME = "Models.json"
USER_MODELS_ENV = "MRISYNTHESIS_USER_MODELS"


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    title: str
    direction: str
    file: str
    sha256: str
    description: str = ""
    default: bool = False
    size_mb: float = 0.0
    architecture: str = ""
    supports_uncertainty: bool = False
    card: str = ""  # model card, relative to the Resources folder
    folder: str = ""  # the folder of the Models.json that lists it (not read from the file)

    def path(self, resources: Path | None = None) -> Path:
        return Path(resources or self.folder or resources_dir()) / self.file

    @property
    def is_users(self) -> bool:
        """True for a model of the user's own catalog (not one that ships)."""
        return bool(self.folder) and Path(self.folder) == user_models_dir()


@dataclass(frozen=True)
class RetiredModel:
    """A model that shipped once and was taken out of the catalog (its file with it)."""
    id: str
    replaced_by: str
    retired: str
    reason: str
    commit: str

    def message(self) -> str:
        """One line for a user who named it: what to use instead, why, and how to get it back."""
        path = f"Resources/Models/{self.id}.safetensors"
        return (f"model '{self.id}' was retired on {self.retired} ({self.reason}); use '{self.replaced_by}', "
                f"or restore the file from the project's history (git show {self.commit}:{path} > "
                f"{self.id}.safetensors) and pass its path")


def resources_dir() -> Path:
    """The folder holding ``Models.json`` and the shipped weights."""
    env = os.environ.get("MRISYNTHESIS_RESOURCES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    installed = Path(sys.prefix) / "share" / "mrisynthesis" / "Resources"
    for candidate in (here.parent / "Resources", here / "Resources", installed):
        if (candidate / CATALOG_NAME).is_file():
            return candidate
    return here.parent / "Resources"


def user_models_dir() -> Path:
    """The folder of the user's own models and their ``Models.json``: ``$MRISYNTHESIS_USER_MODELS``,
    else ``%APPDATA%\\MRISynthesis`` (Windows), ``~/Library/Application Support/MRISynthesis`` (macOS)
    or ``$XDG_DATA_HOME/mrisynthesis`` (default ``~/.local/share/mrisynthesis``)."""
    env = os.environ.get(USER_MODELS_ENV)
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "MRISynthesis"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "MRISynthesis"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "mrisynthesis"


def list_models(direction: str | None = None, resources: Path | None = None) -> list[CatalogEntry]:
    """Catalog entries, optionally only those of one direction: the shipped ones, then the user's own
    (each in catalog order). ``resources``: read only that folder's ``Models.json``."""
    if direction is not None and direction not in DIRECTIONS:
        raise InputError(f"unknown direction '{direction}'; expected one of {', '.join(DIRECTIONS)}")
    folders = [Path(resources)] if resources is not None else [resources_dir(), user_models_dir()]
    entries: list[CatalogEntry] = []
    for folder in folders:
        known = {e.id for e in entries}
        # an id that ships is never shadowed by a user's entry of the same id
        entries += [e for e in _read_catalog(folder) if e.id not in known]
    return [e for e in entries if direction is None or e.direction == direction]


def read_catalog_file(path: Path) -> dict:
    """The ``{"models": [...]}`` object of a ``Models.json`` (``{"models": []}`` if it is absent)."""
    if not path.is_file():
        return {"models": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"model catalog {path} is malformed: {first_line(error)}") from None
    _models_list(data, path)
    return data


def _read_catalog(folder: Path) -> list[CatalogEntry]:
    path = folder / CATALOG_NAME
    data = read_catalog_file(path)
    return [_entry(item, index, path) for index, item in enumerate(_models_list(data, path))]


_REQUIRED = ("id", "title", "direction", "file", "sha256")


def _models_list(data, path: Path) -> list:
    if not isinstance(data, dict) or not isinstance(data.get("models", []), list):
        raise CheckpointError(f"model catalog {path} is malformed: expected {{\"models\": [...]}}")
    return data.get("models", [])


def _entry(item, index: int, path: Path) -> CatalogEntry:
    """One catalog entry, every field type-checked (a malformed catalog gives one clear line)."""
    fields = CatalogEntry.__dataclass_fields__
    if not isinstance(item, dict):
        raise CheckpointError(f"model catalog {path} is malformed: entry {index + 1} is not an object")
    missing = [name for name in _REQUIRED if name not in item]
    if missing:
        raise CheckpointError(f"model catalog {path} is malformed: entry {index + 1} lacks {', '.join(missing)}")
    values = {k: v for k, v in item.items() if k in fields and k != "folder"}
    for name, value in values.items():
        expected = str if name in _REQUIRED else type(fields[name].default)
        if expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, expected)
        if not ok:
            raise CheckpointError(f"model catalog {path} is malformed: entry {index + 1} ({item.get('id')!r}) "
                                  f"has {name} = {value!r}; expected {expected.__name__}")
    return CatalogEntry(**values, folder=str(path.parent))


_RETIRED_FIELDS = ("id", "replaced_by", "retired", "reason", "commit")


def retired_models(resources: Path | None = None) -> list[RetiredModel]:
    """The ``retired`` list of the shipped ``Models.json`` (empty when it has none)."""
    path = Path(resources or resources_dir()) / CATALOG_NAME
    items = read_catalog_file(path).get("retired", [])
    if not isinstance(items, list):
        raise CheckpointError(f"model catalog {path} is malformed: 'retired' is not a list")
    retired = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or any(not isinstance(item.get(name), str) for name in _RETIRED_FIELDS):
            raise CheckpointError(f"model catalog {path} is malformed: retired entry {index + 1} needs the text "
                                  f"fields {', '.join(_RETIRED_FIELDS)}")
        retired.append(RetiredModel(**{name: item[name] for name in _RETIRED_FIELDS}))
    return retired


def retired_model(model: str, resources: Path | None = None) -> RetiredModel | None:
    """The retired entry of ``model`` (a catalog id), or None when it was never retired."""
    return next((entry for entry in retired_models(resources) if entry.id == model), None)


def default_model(direction: str, resources: Path | None = None) -> CatalogEntry:
    entries = list_models(direction, resources)
    defaults = [entry for entry in entries if entry.default]
    if defaults:
        return defaults[-1]  # the user's own default, when they chose one, else the shipped one
    if entries:
        return entries[0]
    raise InputError(f"no model for {direction} ships with this installation; name a checkpoint with --model PATH")


def resolve_model(model: str | None, direction: str | None = None, resources: Path | None = None,
                  verify: bool = True) -> Path:
    """Path of the checkpoint for a catalog id, a file path, or (``None``) the default of ``direction``.

    Catalog files are checked against their SHA-256 (``verify``); a mismatch is refused.
    """
    if model is None:
        if direction is None:
            raise InputError("name a model (catalog id or checkpoint file) or a direction")
        entry = default_model(direction, resources)
    else:
        candidate = Path(model).expanduser()
        if candidate.suffix == ".safetensors" or os.sep in str(model) or candidate.exists():
            if not candidate.is_file():
                raise CheckpointError(f"checkpoint not found: {candidate}")
            return candidate
        entries = list_models(None, resources)
        matches = [e for e in entries if e.id == model]
        if not matches:
            retired = retired_model(model, resources)
            if retired is not None:
                raise InputError(retired.message())
            known = ", ".join(e.id for e in entries) or "none installed"
            raise InputError(f"unknown model '{model}'; catalog ids: {known}; or give a .safetensors file")
        entry = matches[0]
    path = entry.path()
    if not path.is_file():
        raise CheckpointError(f"model '{entry.id}' is listed in the catalog but its file is missing: {path}")
    if verify and entry.sha256 and file_sha256(path) != entry.sha256:
        raise CheckpointError(f"model '{entry.id}': file {path.name} does not match the catalog's SHA-256 "
                              "(corrupted download or altered file)")
    return path
