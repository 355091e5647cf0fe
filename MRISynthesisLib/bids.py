"""BIDS layout: find the anatomical inputs of a raw dataset and name the derivatives.

Discovery is a documented glob, not a BIDS library (see docs/cohorts.md for why):
``BIDS_DIR/sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_<key>-<value>...]_<suffix>.nii[.gz]``
with ``<suffix>`` = ``T1w`` (t1-to-t2) or ``T2w`` (t2-to-t1). Each such file is one *item*;
its derivative keeps every entity of the source name, adds ``desc-synthetic`` (the last entity
in BIDS order) and takes the target suffix:
``OUTPUT_DIR/sub-01/ses-1/anat/sub-01_ses-1_desc-synthetic_T2w.nii.gz`` and its ``.json`` sidecar.

``dataset_description.json`` of the derivative dataset is created exactly once even when many
processes (a SLURM job array) start together: the complete file is written under a temporary
name and hard-linked to its final name, which fails atomically if another process got there
first; then the existing file is read and checked to describe the same model.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .atomic import default_file_mode
from .conventions import DIRECTIONS, SOURCE_CONTRAST, TARGET_CONTRAST
from .errors import InputError, OutputError

#: BIDS suffixes (source, target) of each direction: 'T1w' for contrast 'T1'.
SUFFIXES = {direction: (f"{SOURCE_CONTRAST[direction]}w", f"{TARGET_CONTRAST[direction]}w") for direction in DIRECTIONS}
DESCRIPTION = "synthetic"
BIDS_VERSION = "1.10.0"
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_NAME = re.compile(r"^(?P<entities>(?:[A-Za-z]+-[A-Za-z0-9]+_)+)(?P<suffix>[A-Za-z0-9]+)(?P<ext>\.nii(?:\.gz)?)$")


@dataclass(frozen=True)
class BidsItem:
    """One source image of a participant: the unit of work of the BIDS App."""

    subject: str                    # label without 'sub-'
    session: str | None             # label without 'ses-', or None
    entities: tuple                 # ((key, value), ...) of the source name, in file order, no 'desc'
    source: Path
    reference: Path | None          # the real target contrast with the same entities, if present

    @property
    def label(self) -> str:
        """``sub-01 ses-1 acq-fast`` (for tables and progress)."""
        return " ".join(f"{k}-{v}" for k, v in self.entities)

    def relative_folder(self) -> Path:
        folder = Path(f"sub-{self.subject}")
        if self.session is not None:
            folder = folder / f"ses-{self.session}"
        return folder / "anat"

    def stem(self, target_suffix: str) -> str:
        """``sub-01_ses-1_desc-synthetic_T2w``."""
        return "_".join([f"{k}-{v}" for k, v in self.entities] + [f"desc-{DESCRIPTION}", target_suffix])

    def mask_stem(self) -> str:
        """``sub-01_ses-1_desc-brain_mask``: the brain mask on the source's grid (as fMRIPrep names it)."""
        return "_".join([f"{k}-{v}" for k, v in self.entities] + ["desc-brain", "mask"])


@dataclass(frozen=True)
class DerivativePaths:
    image: Path       # .nii.gz
    sidecar: Path     # .json
    figures: Path     # folder of the QC pictures of this item
    stem: str
    mask: Path        # the brain mask synthesis used: <entities>_desc-brain_mask.nii.gz
    mask_sidecar: Path


def derivative_paths(item: BidsItem, output_dir, direction: str) -> DerivativePaths:
    stem = item.stem(SUFFIXES[direction][1])
    folder = Path(output_dir) / item.relative_folder()
    return DerivativePaths(folder / f"{stem}.nii.gz", folder / f"{stem}.json",
                           Path(output_dir) / f"sub-{item.subject}" / "figures", stem,
                           folder / f"{item.mask_stem()}.nii.gz", folder / f"{item.mask_stem()}.json")


def find_brain_mask(item: BidsItem, mask_dir) -> Path:
    """The item's brain mask in a derivatives folder: ``MASK_DIR/sub-<label>/[ses-<label>/]anat/
    <entities of the source>_desc-brain_mask.nii[.gz]`` (what this App writes, and fMRIPrep's name).
    :class:`InputError` naming the expected file when there is none."""
    folder = Path(mask_dir) / item.relative_folder()
    for extension in (".nii.gz", ".nii"):
        candidate = folder / f"{item.mask_stem()}{extension}"
        if candidate.is_file():
            return candidate
    raise InputError(f"no brain mask for this item in --brain-mask-dir: expected {folder / item.mask_stem()}.nii.gz")


def parse_name(name: str):
    """``(entities, suffix, extension)`` of a BIDS NIfTI file name, or ``None`` if it is not one."""
    match = _NAME.match(name)
    if not match:
        return None
    entities = tuple(tuple(part.split("-", 1)) for part in match["entities"].rstrip("_").split("_"))
    if entities[0][0] != "sub" or len({k for k, _ in entities}) != len(entities):
        return None
    return entities, match["suffix"], match["ext"]


def _labels(values, prefix: str, option: str):
    if not values:
        return None
    labels = []
    for value in values:
        label = value[len(prefix):] if value.startswith(prefix) else value
        if not _LABEL.match(label):
            raise InputError(f"{option} '{value}' is not a BIDS label (letters and digits only)")
        labels.append(label)
    return labels


def discover(bids_dir, direction: str, participants=None, sessions=None) -> list[BidsItem]:
    """Source images of ``direction`` in a raw BIDS dataset, sorted by name.

    ``participants`` / ``sessions``: labels with or without the ``sub-`` / ``ses-`` prefix; a
    participant label that matches no folder is an error (a typo must not silently do nothing).
    The reference of an item is the file of the other suffix whose entities are identical.
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputError(f"BIDS folder not found: {bids_dir}")
    if direction not in SUFFIXES:
        raise InputError(f"unknown direction '{direction}'; expected one of {', '.join(SUFFIXES)}")
    wanted = _labels(participants, "sub-", "--participant-label")
    wanted_sessions = _labels(sessions, "ses-", "--session-label")
    subjects = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
    if not subjects:
        raise InputError(f"{bids_dir} has no sub-<label> folders; is it a BIDS dataset?")
    if wanted:
        missing = [label for label in wanted if label not in subjects]
        if missing:
            raise InputError(f"participant(s) not found in {bids_dir}: {', '.join(missing)}")
        subjects = [s for s in subjects if s in wanted]
    source_suffix, target_suffix = SUFFIXES[direction]
    items = []
    for subject in subjects:
        folders = sorted((bids_dir / f"sub-{subject}").glob("ses-*/anat")) + [bids_dir / f"sub-{subject}" / "anat"]
        for folder in folders:
            session = folder.parent.name[4:] if folder.parent.name.startswith("ses-") else None
            if not folder.is_dir() or (wanted_sessions and session not in wanted_sessions):
                continue
            parsed = {}
            for path in sorted(folder.iterdir()):
                name = parse_name(path.name)
                if name is None or any(k == "desc" for k, _ in name[0]):
                    continue
                entities, suffix, _ = name
                if dict(entities).get("sub") != subject or dict(entities).get("ses") != session:
                    continue
                parsed.setdefault((entities, suffix), path)
            for (entities, suffix), path in parsed.items():
                if suffix == source_suffix:
                    items.append(BidsItem(subject, session, entities, path, parsed.get((entities, target_suffix))))
    return items


# -- dataset_description.json -----------------------------------------------------------------

def dataset_description(bids_dir, direction: str, model_id: str, model_sha256: str) -> dict:
    """The derivative dataset's description (BIDS ``GeneratedBy`` with the model and its hash)."""
    source_suffix, target_suffix = SUFFIXES[direction]
    raw_name = None
    raw_description = Path(bids_dir) / "dataset_description.json"
    if raw_description.is_file():
        try:
            raw_name = json.loads(raw_description.read_text(encoding="utf-8")).get("Name")
        except (json.JSONDecodeError, OSError, AttributeError):
            raw_name = None
    uri = Path(bids_dir).resolve().as_uri()
    return {
        "Name": f"MRISynthesis: synthetic {target_suffix} from {source_suffix}" + (f" of {raw_name}" if raw_name else ""),
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "MRISynthesis", "Version": __version__,
            "Description": f"{direction} synthesis with model {model_id}. Synthetic images are not for diagnosis.",
            "ModelId": model_id, "ModelSHA256": model_sha256,
        }],
        "SourceDatasets": [{"URL": uri}],
        "DatasetLinks": {"raw": uri},
    }


def ensure_dataset_description(output_dir, description: dict) -> Path:
    """Create ``output_dir/dataset_description.json`` once, safely under concurrency.

    Returns its path. If it already exists (written by another job or an earlier run), it must
    name the same model (``ModelId`` and ``ModelSHA256``); otherwise :class:`OutputError`, so
    derivatives of two models never mix in one folder.
    """
    path = create_once(Path(output_dir) / "dataset_description.json", json.dumps(description, indent=2) + "\n")
    existing = _read_json_when_complete(path)
    ours, theirs = _model_of(description), _model_of(existing)
    if theirs is None:
        raise OutputError(f"{path} does not describe MRISynthesis derivatives (its GeneratedBy names no model); "
                          "choose another output folder")
    if ours != theirs:
        raise OutputError(f"{output_dir} holds derivatives of model {theirs[0]} (sha256 {theirs[1][:12]}...) "
                          f"according to its dataset_description.json, not {ours[0]}; choose another output folder")
    return path


def generated_by(description) -> dict:
    """The first ``GeneratedBy`` entry of a dataset description; ``{}`` when it is missing or malformed."""
    entries = description.get("GeneratedBy") if isinstance(description, dict) else None
    return entries[0] if isinstance(entries, list) and entries and isinstance(entries[0], dict) else {}


def _model_of(description: dict) -> tuple | None:
    """``(ModelId, ModelSHA256)`` of a description's first GeneratedBy entry, ``None`` if it names none."""
    generated = generated_by(description)
    model_id, sha256 = generated.get("ModelId"), generated.get("ModelSHA256")
    if not isinstance(model_id, str) or not isinstance(sha256, (str, type(None))):
        return None
    return model_id, sha256 or ""


def _read_json_when_complete(path: Path, timeout_s: float = 10.0) -> dict:
    """Read a JSON object, retrying briefly: with the exclusive-create fallback of :func:`create_once`
    another process may still be writing it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                return data
            raise OutputError(f"{path} is not a JSON object")
        except (json.JSONDecodeError, FileNotFoundError):
            if time.monotonic() > deadline:
                raise OutputError(f"{path} exists but is not valid JSON; remove it or choose another "
                                  "output folder") from None
            time.sleep(0.1)


def create_once(path, text: str) -> Path:
    """Create ``path`` with ``text`` if it is absent; never replace an existing file.

    The complete content is written and synced under a temporary name, then hard-linked to
    ``path``: the link either appears whole or fails with ``FileExistsError`` because another
    process created it first. Filesystems without hard links fall back to an exclusive create.
    """
    path = Path(path)
    if path.exists():
        return path
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=str(path.parent))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, default_file_mode())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # no hard links here (some network or FUSE filesystems)
            try:
                with open(path, "x", encoding="utf-8") as stream:
                    stream.write(text)
            except FileExistsError:
                pass
    finally:
        os.remove(tmp)
    return path
