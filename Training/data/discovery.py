"""Find T1/T2 training pairs on disk: subject folders, CSV manifests, or two unpaired folders.

A subject folder holds one person's co-registered scans under whatever names their dataset uses.
Each NIfTI file name is cut into tokens at ``_``, ``-`` and ``.`` (case-insensitive) and given
one role:

=============  ==========================================================================
role           tokens (examples)
=============  ==========================================================================
lesion mask    ``seg``, ``lesion``, ``gold standard``, ``manual mask``, ``label``, ``wmh``
brain mask     ``mask``, ``brainmask``, ``foreground``, ``fg`` (``*_foreground``, ``*_mask``,
               BIDS ``desc-brain_mask``)
T1             ``t1`` (BraTS 2020 ``_t1``, ``_t1_bet``, ``T1_*``, ``.T1.``, GLISTR ``ex0_t1_*``),
               ``t1n`` (BraTS 2021+ ``-t1n``, bare ``t1n``), ``t1w`` (BIDS ``_T1w``)
T2             ``t2``, ``t2w`` (never ``t2f`` = FLAIR)
=============  ==========================================================================

Post-contrast T1 (``t1c``, ``t1ce``, ``T1POST``, ``t1gd``), FLAIR, PD are separate tokens and
therefore never chosen. A file naming both T1 and T2 (``t2_to_t1``) is ambiguous and ignored.
Folders with no T1 or T2, or with two candidates for one contrast, are skipped with the reason.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from MRISynthesisLib.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")

T1_TOKENS = {"t1", "t1n", "t1w"}
T2_TOKENS = {"t2", "t2w"}
BRAIN_MASK_TOKENS = {"mask", "brainmask", "foreground", "fg", "brainmaskfile"}
LESION_TOKENS = {"seg", "segmentation", "lesion", "lesions", "label", "labels", "wmh", "tumor", "tumour",
                 "gt"}
# "manual.mask", "GOLD_STANDARD": a mask made by a rater is a lesion mask, not a brain mask.
LESION_QUALIFIERS = {"manual", "gold", "consensus"}

#: Folder-name fragments that name the dataset a subject comes from (checked in this order).
SOURCE_LABELS = (("brats", "BraTS"), ("tcga", "TCGA"), ("mslub", "MSLUB"), ("cbica", "CBICA"),
                 ("glistr", "GLISTR"), ("ixi", "IXI"), ("oasis", "OASIS"), ("adni", "ADNI"))


@dataclass(frozen=True)
class Subject:
    """One person's co-registered T1 and T2 (same grid), with optional brain and lesion masks.

    ``source`` is a short dataset label ('BraTS', 'TCGA', 'MSLUB', 'CBICA', 'GLISTR', ... or
    'other') used to stratify the split and to report metrics per source.
    """

    id: str
    t1: Path
    t2: Path
    mask: Path | None = None
    source: str = "other"
    lesion_mask: Path | None = None


@dataclass
class DiscoveryReport:
    """Subjects found (sorted by id) and what was skipped: ``(folder or file name, reason)``."""

    subjects: list = field(default_factory=list)
    skipped: list = field(default_factory=list)


def guess_source(name: str) -> str:
    """Dataset label from a subject folder name: 'BraTS-GLI-00001-000' -> 'BraTS', else 'other'."""
    lowered = name.lower()
    for fragment, label in SOURCE_LABELS:
        if fragment in lowered:
            return label
    return "other"


def is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES) and not path.name.startswith(".")


def _stem(name: str) -> str:
    lowered = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def file_role(name: str) -> str | None:
    """Role of a NIfTI file from its name: 't1', 't2', 'mask', 'lesion' or None (anything else)."""
    tokens = set(re.split(r"[_\-.\s]+", _stem(name).lower())) - {""}
    if tokens & LESION_TOKENS or ("mask" in tokens and tokens & LESION_QUALIFIERS) or {"gold", "standard"} <= tokens:
        return "lesion"
    if tokens & BRAIN_MASK_TOKENS:
        return "mask"
    is_t1, is_t2 = bool(tokens & T1_TOKENS), bool(tokens & T2_TOKENS)
    if is_t1 and not is_t2:
        return "t1"
    if is_t2 and not is_t1:
        return "t2"
    return None


def subject_from_folder(folder) -> tuple[Subject | None, str | None]:
    """``(Subject, None)`` for a usable subject folder, ``(None, reason)`` otherwise.

    Files are searched recursively (BIDS keeps them in ``anat/``); hidden files are ignored.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if is_nifti(p) and not _hidden(p, folder))
    if not files:
        return None, "no NIfTI files (.nii/.nii.gz)"
    by_role: dict[str, list[Path]] = {"t1": [], "t2": [], "mask": [], "lesion": []}
    for path in files:
        role = file_role(path.name)
        if role is not None:
            by_role[role].append(path)
    for contrast in ("t1", "t2"):
        found = by_role[contrast]
        if not found:
            others = ", ".join(p.name for p in files)
            return None, f"no {contrast.upper()} file recognised among: {others}"
        if len(found) > 1:
            names = ", ".join(str(p.relative_to(folder)) for p in found)
            return None, f"ambiguous: {len(found)} {contrast.upper()} candidates ({names}); use a CSV manifest"
    mask = by_role["mask"][0] if len(by_role["mask"]) == 1 else None
    lesion = by_role["lesion"][0] if len(by_role["lesion"]) == 1 else None
    return Subject(folder.name, by_role["t1"][0], by_role["t2"][0], mask, guess_source(folder.name), lesion), None


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _require_folder(root, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise InputError(f"{what} not found: {root}")
    if not root.is_dir():
        raise InputError(f"{what} is not a folder: {root}")
    try:
        next(iter(root.iterdir()), None)
    except OSError as error:
        raise InputError(f"{what} cannot be read: {root} ({error.strerror or error})") from None
    return root


def discover_subjects(root, allow_empty: bool = False) -> DiscoveryReport:
    """Scan ``root`` (a folder of subject folders) for T1/T2 pairs; see the module docstring.

    Raises :class:`InputError` when ``root`` is missing, not a folder or unreadable, and (unless
    ``allow_empty``) when no pair at all is found; the message lists why folders were skipped.
    Only file names are read here; :func:`check_pair` verifies the grids.
    """
    root = _require_folder(root, "data folder")
    report = DiscoveryReport()
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            subject, reason = subject_from_folder(entry)
            if subject is None:
                report.skipped.append((entry.name, reason))
            else:
                report.subjects.append(subject)
        elif is_nifti(entry):
            report.skipped.append((entry.name, "image file at the top level; expected one folder per subject"))
    if not report.subjects and not allow_empty:
        raise InputError(_nothing_found(root, report))
    return report


def _nothing_found(root: Path, report: DiscoveryReport) -> str:
    if not report.skipped:
        return f"no T1/T2 pairs found in {root}: it has no subject folders"
    reasons = "; ".join(f"{name}: {reason}" for name, reason in report.skipped[:3])
    more = f" (and {len(report.skipped) - 3} more)" if len(report.skipped) > 3 else ""
    return f"no T1/T2 pairs found in {root}: {reasons}{more}"


def read_manifest(csv_path) -> DiscoveryReport:
    """Subjects from a CSV with columns ``subject,t1,t2`` and optional ``mask``, ``lesion_mask``,
    ``source``; relative paths are relative to the CSV's folder.

    Rows whose files are missing are skipped with the reason; a missing column, a duplicate
    subject id, an unreadable file or a manifest with no usable row raise :class:`InputError`.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise InputError(f"manifest not found: {csv_path}")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            columns = [c.strip() for c in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read manifest {csv_path}: {error}") from None
    if not rows:
        raise InputError(f"manifest {csv_path} has no rows (expected a header subject,t1,t2[,mask] and one row per subject)")
    missing = [c for c in ("subject", "t1", "t2") if c not in columns]
    if missing:
        raise InputError(f"manifest {csv_path} lacks column(s) {', '.join(missing)}; found {', '.join(columns)}")
    report, seen = DiscoveryReport(), set()
    for line, raw in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        subject_id = row["subject"]
        if not subject_id:
            report.skipped.append((f"line {line}", "empty subject id"))
            continue
        if subject_id in seen:
            raise InputError(f"manifest {csv_path} lists subject '{subject_id}' twice (line {line})")
        seen.add(subject_id)
        paths, problem = {}, None
        for column in ("t1", "t2", "mask", "lesion_mask"):
            value = row.get(column, "")
            if not value:
                if column in ("t1", "t2"):
                    problem = f"no {column.upper()} path"
                continue
            path = Path(value).expanduser()
            path = path if path.is_absolute() else csv_path.parent / path
            if not path.is_file():
                problem = f"{column} file not found: {path}"
            paths[column] = path
        if problem:
            report.skipped.append((subject_id, problem))
            continue
        source = row.get("source") or guess_source(subject_id)
        report.subjects.append(Subject(subject_id, paths["t1"], paths["t2"], paths.get("mask"), source,
                                       paths.get("lesion_mask")))
    if not report.subjects:
        raise InputError(_nothing_found(csv_path, report))
    return report


def discover_unpaired(t1_dir, t2_dir) -> tuple[list, list]:
    """Two independent folders (unpaired mode, CycleGAN/UNIT) -> (T1 paths, T2 paths), sorted.

    Every NIfTI file below each folder is an image of that folder's contrast, except files named
    as masks or lesion masks. Raises :class:`InputError` if a folder is missing or holds none.
    """
    lists = []
    for folder, contrast in ((t1_dir, "T1"), (t2_dir, "T2")):
        folder = _require_folder(folder, f"{contrast} folder")
        paths = sorted(p for p in folder.rglob("*")
                       if is_nifti(p) and not _hidden(p, folder) and file_role(p.name) not in ("mask", "lesion"))
        if not paths:
            raise InputError(f"no {contrast} images (.nii/.nii.gz) found in {folder}")
        lists.append(paths)
    return lists[0], lists[1]


def check_pair(subject: Subject, atol_mm: float = 1e-3) -> None:
    """Verify from the headers that T1, T2 (and the brain mask) share one grid.

    Raises :class:`InputError` naming the subject, the files and the differing shape or matrix.
    Trailing singleton axes (256x256x46x1) are ignored, as :func:`MRISynthesisLib.io.load_volume` does.
    """
    import nibabel as nib
    import numpy as np

    def header(path):
        try:
            image = nib.load(str(path))
        except Exception as error:
            raise InputError(f"subject {subject.id}: cannot read {Path(path).name}: {error}") from None
        shape = tuple(int(n) for n in image.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        return shape, np.asarray(image.affine, dtype=np.float64)

    _require_two_images(subject)
    t1_shape, t1_affine = header(subject.t1)
    others = [("T2", subject.t2)] + ([("mask", subject.mask)] if subject.mask is not None else [])
    for label, path in others:
        shape, affine = header(path)
        if shape != t1_shape:
            raise InputError(f"subject {subject.id}: {label} {Path(path).name} has shape {shape} but T1 "
                             f"{Path(subject.t1).name} has {t1_shape}; paired training needs co-registered "
                             f"images on one grid")
        if not np.allclose(affine, t1_affine, atol=atol_mm, rtol=0):
            worst = float(np.abs(affine - t1_affine).max())
            raise InputError(f"subject {subject.id}: {label} {Path(path).name} and T1 {Path(subject.t1).name} "
                             f"have different voxel-to-RAS matrices (max difference {worst:.4g} mm > {atol_mm:g}); "
                             f"paired training needs co-registered images on one grid")


def _require_two_images(subject: Subject) -> None:
    """Refuse a pair whose T1 and T2 are one image (the same file, a link to it, or a byte-identical
    copy): the network would learn the identity and training would look excellent."""
    import filecmp
    import os

    t1, t2 = Path(subject.t1), Path(subject.t2)
    try:
        same = os.path.samefile(t1, t2) or (t1.stat().st_size == t2.stat().st_size
                                            and filecmp.cmp(t1, t2, shallow=False))
    except OSError as error:
        raise InputError(f"subject {subject.id}: cannot read {error.filename}: {error.strerror}") from None
    if same:
        raise InputError(f"subject {subject.id}: T1 {t1.name} and T2 {t2.name} are the same image; paired "
                         "training needs two contrasts of the subject")


def format_report(report: DiscoveryReport) -> str:
    """Human-readable summary: one line per subject (id, source, T1, T2, mask) and per skip."""
    lines = [f"{len(report.subjects)} subject(s) found, {len(report.skipped)} skipped"]
    for s in report.subjects:
        mask = Path(s.mask).name if s.mask else "-"
        lines.append(f"  {s.id} [{s.source}]: T1={Path(s.t1).name}  T2={Path(s.t2).name}  mask={mask}")
    for name, reason in report.skipped:
        lines.append(f"  skipped {name}: {reason}")
    return "\n".join(lines)
