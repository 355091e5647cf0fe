"""Raw T1/T2 scans of one person, each on its own grid and whole head, become a training pair:
``mrisynthesis prepare-pairs RAW_DIR OUT_DIR`` (also ``python -m Training.prepare_pairs``).

For every subject folder of ``RAW_DIR`` (one T1 and one T2 file, recognised by name as training
discovery does: ``*T1*``/``*T1w*``, ``*T2*``/``*T2w*``; FLAIR, PD and others are ignored):

1. the T2 is rigidly registered to the T1 (:mod:`Training.data.registration`: 6 degrees of
   freedom, Mattes mutual information, three resolutions, SimpleITK) and resampled onto the T1's
   grid (linear; 0 outside the T2's field of view);
2. the brain mask comes from the T1 (``MRISynthesisLib.brain_extraction.choose_brain_mask``,
   'auto': a whole head is extracted with deepbet, a skull-stripped T1 is kept); the registered T2
   is brain-extracted too, for the check below only;
3. the registration is checked (:data:`CHECKS`) and the pair refused when a check fails:
   - the mutual information after registration is no worse than with the scanners' alignment;
   - the head masks of T1 and registered T2 agree (Dice in the T2's field of view);
   - the brain masks extracted from the T1 and from the registered T2 agree (Dice in the T2's
     field of view): a misaligned, flipped or foreign T2 fails here;
   - the T2's field of view covers the T1's brain;
4. written to ``OUT_DIR/<subject>/`` in the layout training discovers
   (:mod:`Training.data.discovery`): ``t1.nii.gz`` and ``t2.nii.gz`` (float32, 0 outside the
   brain, on the T1's grid), ``brain_mask.nii.gz`` (1 = brain) and the QC report ``qc.json`` +
   ``qc.png`` (T1 with the T2's edges, before and after registration, and the brain outline).

Each subject is written completely or not at all (a hidden temporary folder renamed at the end);
a subject folder that already exists in ``OUT_DIR`` is left alone ("already prepared"), so a
second run prepares only what is missing. A refused pair writes only its QC report, as
``OUT_DIR/<subject>.refused.png`` and ``.json``. A bad subject (a contrast missing, a 2D or
unreadable file, a failed registration) gets one line with the reason and the others go on.
Exit status: 0 when every subject is prepared, 1 when some were refused or failed, 2 for a bad
command. Inputs are never modified.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from MRISynthesisLib.conventions import PERCENTILE_HIGH
from MRISynthesisLib.errors import InputError, MRISynthesisError
from MRISynthesisLib.volume import Volume

from .data.discovery import file_role

#: Smallest head-mask Dice of T1 and registered T2 (in the T2's field of view) of an accepted pair.
#: Measured: 0.940-0.952 on the five raw MSLUB-longitudinal sessions, 0.907 when one patient's T1
#: is paired with another patient's T2 (docs/training.md).
MIN_HEAD_DICE = 0.92
#: Smallest brain-mask Dice of T1 and registered T2 (in the T2's field of view) of an accepted pair.
#: Measured: 0.971-0.979 on the five sessions, 0.931 for the other patient's T2.
MIN_BRAIN_DICE = 0.95
#: Smallest share of the T1's brain inside the registered T2's field of view.
MIN_BRAIN_COVERAGE = 0.90
CHECKS = {
    "metric_improved": "Mattes MI after registration <= MI with the scanners' alignment",
    "head_dice": f"head-mask Dice of T1 and registered T2 >= {MIN_HEAD_DICE}",
    "brain_dice": f"brain-mask Dice of T1 and registered T2 >= {MIN_BRAIN_DICE}",
    "brain_coverage": f"share of the T1's brain in the T2's field of view >= {MIN_BRAIN_COVERAGE}",
}
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr")
TEMP_MARKER = "prepare-pairs-tmp"


class PairRefused(Exception):
    """A subject that cannot become a pair; the message is the one-line reason."""


@dataclass
class SubjectResult:
    """``status``: 'prepared', 'already prepared', 'refused' or 'failed'; ``reason``: one line."""

    subject: str
    status: str
    reason: str = ""
    qc: dict = field(default_factory=dict)


# -- one subject ----------------------------------------------------------------------------------

def find_raw_pair(folder: Path) -> tuple[Path, Path]:
    """The T1 and T2 files of a raw subject folder (by name, as training discovery names roles)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name.lower().endswith(VOLUME_SUFFIXES))
    found = {"t1": [], "t2": []}
    for path in files:
        role = file_role(path.name)
        if role in found:
            found[role].append(path)
    for contrast, paths in found.items():
        if not paths:
            names = ", ".join(p.name for p in files) or "no image files"
            raise PairRefused(f"no {contrast.upper()} file recognised among: {names}")
        if len(paths) > 1:
            raise PairRefused(f"{len(paths)} {contrast.upper()} candidates ({', '.join(p.name for p in paths)})")
    return found["t1"][0], found["t2"][0]


def prepare_subject(folder: Path, out_root: Path, threads: int | None = None) -> SubjectResult:
    """Register, extract, check and write one subject (see the module docstring)."""
    from MRISynthesisLib.io import load_volume

    subject = folder.name
    target = out_root / subject
    if target.exists():
        return SubjectResult(subject, "already prepared", f"{target} exists (delete it to prepare it again)")
    try:
        t1_path, t2_path = find_raw_pair(folder)
        t1, t2 = load_volume(t1_path), load_volume(t2_path)
        pair, qc = register_and_check(t1, t2, threads)
        qc.update(subject=subject, t1_file=str(t1_path), t2_file=str(t2_path))
    except PairRefused as refused:
        return SubjectResult(subject, "failed", str(refused))
    except MRISynthesisError as error:
        return SubjectResult(subject, "failed", str(error))
    except RuntimeError as error:  # SimpleITK's registration errors
        return SubjectResult(subject, "failed", "registration failed: " + _first_line(error))
    failed = [name for name, check in qc["checks"].items() if not check["passed"]]
    if failed:
        reason = "registration check failed: " + "; ".join(
            f"{CHECKS[name]} (measured {qc['checks'][name]['value']:.3f})" for name in failed)
        _write_refused_report(out_root, subject, pair, qc)
        return SubjectResult(subject, "refused", reason, qc)
    _write_subject(target, pair, qc)
    return SubjectResult(subject, "prepared", "", qc)


@dataclass
class _Pair:
    t1: Volume
    t2_before: Volume  # the T2 on the T1's grid with the scanners' alignment (for the QC figure)
    t2: Volume         # registered onto the T1's grid
    brain: np.ndarray  # boolean [i, j, k]


def register_and_check(t1: Volume, t2: Volume, threads: int | None = None) -> tuple[_Pair, dict]:
    """Register ``t2`` to ``t1``, extract the brain, and measure :data:`CHECKS`: ``(pair, qc)``."""
    from MRISynthesisLib.brain_extraction import choose_brain_mask, extract_brain, mask_used
    from MRISynthesisLib.preprocessing import brain_mask

    from .data.registration import field_of_view, register_rigid, resample_onto

    started = time.monotonic()
    registration = register_rigid(t1, t2, threads=threads)
    moved = resample_onto(t2, t1, registration.fixed_to_moving)
    before = resample_onto(t2, t1, np.eye(4))
    fov = field_of_view(t2, t1, registration.fixed_to_moving)
    chosen = choose_brain_mask(t1, "auto")
    brain = mask_used(t1, chosen)
    try:
        t2_brain = extract_brain(moved)
    except InputError:
        t2_brain = np.zeros_like(brain)
    head_t1, head_t2 = brain_mask(t1.array) & fov, brain_mask(moved.array) & fov
    fov_before = field_of_view(t2, t1, np.eye(4))
    head_dice_before = _dice(brain_mask(t1.array) & fov_before, brain_mask(before.array) & fov_before)
    voxel_ml = float(abs(np.linalg.det(t1.affine[:3, :3]))) / 1000
    values = {"metric_improved": registration.metric_after - registration.metric_before,
              "head_dice": _dice(head_t1, head_t2),
              "brain_dice": _dice(brain & fov, t2_brain & fov),
              "brain_coverage": float(np.count_nonzero(brain & fov) / max(1, np.count_nonzero(brain)))}
    thresholds = {"metric_improved": 0.0, "head_dice": MIN_HEAD_DICE, "brain_dice": MIN_BRAIN_DICE,
                  "brain_coverage": MIN_BRAIN_COVERAGE}
    checks = {name: {"value": round(values[name], 4), "threshold": thresholds[name], "rule": CHECKS[name],
                     "passed": bool(values[name] <= 0.0 if name == "metric_improved"
                                    else values[name] >= thresholds[name])} for name in CHECKS}
    qc = {
        "registration": {"method": "rigid (Euler 3D), Mattes mutual information, SimpleITK, shrink 4/2/1",
                         "fixed": "T1", "moving": "T2",
                         "fixed_to_moving_ras": np.round(registration.fixed_to_moving, 6).tolist(),
                         "rotation_deg": round(registration.rotation_deg, 3),
                         "translation_mm": round(registration.translation_mm, 3),
                         "metric_before": round(registration.metric_before, 5),
                         "metric_after": round(registration.metric_after, 5),
                         "iterations_last_level": registration.iterations, "stop": registration.stop},
        "brain_mask": {"source": chosen.source, "description": chosen.describe(),
                       "volume_ml": round(float(np.count_nonzero(brain)) * voxel_ml, 1),
                       "warnings": list(chosen.warnings)},
        "head_dice_before_registration": round(head_dice_before, 4),
        "checks": checks,
        "seconds": round(time.monotonic() - started, 1),
    }
    return _Pair(t1, before, moved, brain), qc


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return float(2 * np.count_nonzero(a & b) / total) if total else 0.0


# -- writing ----------------------------------------------------------------------------------------

def _write_subject(target: Path, pair: _Pair, qc: dict) -> None:
    """All files of a prepared subject, complete or none (a hidden folder renamed at the end)."""
    from MRISynthesisLib.io import write_volume

    temporary = target.parent / f".{target.name}.{os.getpid()}.{TEMP_MARKER}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        inside = pair.brain.astype(np.float32)
        write_volume(pair.t1.with_array(np.asarray(pair.t1.array, np.float32) * inside), temporary / "t1.nii.gz")
        write_volume(pair.t1.with_array(pair.t2.array * inside), temporary / "t2.nii.gz")
        write_volume(pair.t1.with_array(inside), temporary / "brain_mask.nii.gz")
        _write_qc(temporary / "qc", pair, qc)
        os.rename(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _write_refused_report(out_root: Path, subject: str, pair: _Pair, qc: dict) -> None:
    from MRISynthesisLib.atomic import atomic_path

    for suffix, write in ((".png", lambda path: _overlay_png(pair, path, qc)),
                          (".json", lambda path: _write_json(path, qc))):
        target = out_root / f"{subject}.refused{suffix}"
        with atomic_path(target, suffix=suffix) as temporary:
            write(temporary)


def _write_qc(stem: Path, pair: _Pair, qc: dict) -> None:
    _overlay_png(pair, stem.with_suffix(".png"), qc)
    _write_json(stem.with_suffix(".json"), qc)


def _write_json(path, data) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=2)
        stream.write("\n")


def _overlay_png(pair: _Pair, path, qc: dict) -> None:
    """T1 (grey) with the T2's edges (red), before and after registration, and the brain outline
    (cyan, after): axial, coronal and sagittal slices through the brain's centre."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage
    from skimage.feature import canny

    from MRISynthesisLib.orientation import to_canonical_slices

    t1, transform = to_canonical_slices(np.asarray(pair.t1.array, np.float32), pair.t1.affine)
    stacks = [to_canonical_slices(v.array, pair.t1.affine)[0] for v in (pair.t2_before, pair.t2)]
    brain = to_canonical_slices(pair.brain, pair.t1.affine)[0]
    s_mm, r_mm, c_mm = transform.canonical_spacing
    high = float(np.percentile(t1[t1 > 0], PERCENTILE_HIGH)) if (t1 > 0).any() else 1.0
    box = ndimage.find_objects((t1 > 0.05 * high).astype(np.uint8))[0] or tuple(slice(None) for _ in t1.shape)
    crop = lambda a: a[box]  # noqa: E731  (the head's bounding box: no empty margins in the figure)
    t1, stacks, brain = crop(t1), [crop(s) for s in stacks], crop(brain)
    centre = [int(round(c)) for c in ndimage.center_of_mass(brain)] if brain.any() else [n // 2 for n in brain.shape]
    views = [("axial", lambda a: a[centre[0]], r_mm / c_mm),
             ("coronal", lambda a: a[::-1, centre[1], :], s_mm / c_mm),
             ("sagittal", lambda a: a[::-1, :, centre[2]], s_mm / r_mm)]
    figure, axes = plt.subplots(2, 3, figsize=(15, 10), facecolor="black")
    for row, (stack, title) in enumerate(zip(stacks, ("scanner alignment", "after registration"))):
        t2_high = float(np.percentile(stack[stack > 0], 99)) if (stack > 0).any() else 1.0
        for column, (name, cut, aspect) in enumerate(views):
            axis = axes[row, column]
            axis.imshow(cut(t1), cmap="gray", vmin=0, vmax=high, aspect=aspect, interpolation="nearest")
            edges = canny(np.clip(cut(stack) / t2_high, 0, 1), sigma=1.5)
            axis.imshow(np.ma.masked_where(~edges, edges), cmap="autumn", aspect=aspect, interpolation="nearest")
            if row == 1:
                outline = cut(brain) & ~ndimage.binary_erosion(cut(brain))
                axis.imshow(np.ma.masked_where(~outline, outline), cmap="cool", aspect=aspect,
                            interpolation="nearest", alpha=0.9)
            axis.set_title(f"{title}: {name}", color="white", fontsize=10)
            axis.axis("off")
    checks = qc["checks"]
    figure.suptitle(f"{qc.get('subject', '')}  T1 (grey), T2 edges (red), T1 brain mask (cyan)   head Dice "
                    f"{qc['head_dice_before_registration']:.3f} -> {checks['head_dice']['value']:.3f}, "
                    f"brain Dice {checks['brain_dice']['value']:.3f}, "
                    f"brain {qc['brain_mask']['volume_ml']:.0f} ml, moved {qc['registration']['rotation_deg']:.1f} deg / "
                    f"{qc['registration']['translation_mm']:.1f} mm", color="white", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=72, facecolor="black")
    plt.close(figure)


# -- the command ------------------------------------------------------------------------------------

def prepare_pairs(raw_dir, out_dir, threads: int | None = None, report=print) -> list[SubjectResult]:
    """Prepare every subject folder of ``raw_dir`` into ``out_dir`` (created if missing); ``report``
    gets one line per subject. Raises :class:`InputError` for a bad ``raw_dir``/``out_dir``."""
    raw, out = Path(raw_dir).expanduser(), Path(out_dir).expanduser()
    if not raw.is_dir():
        raise InputError(f"raw data folder not found: {raw}")
    raw_resolved, out_resolved = raw.resolve(), out.resolve()
    if out_resolved == raw_resolved or raw_resolved in out_resolved.parents:
        raise InputError(f"the output folder {out} must not be inside the raw data folder {raw} (inputs are never modified)")
    folders = sorted(p for p in raw.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError(f"no subject folders in {raw} (expected one folder per subject holding its T1 and T2)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the output folder {out}: {error.strerror or error}") from None
    if not os.access(out, os.W_OK):
        raise InputError(f"output folder {out} is not writable")
    _remove_stale_temporaries(out)
    results = []
    for folder in folders:
        try:
            result = prepare_subject(folder, out, threads)
        except OSError as error:  # writing failed (disk full, permissions): nothing of it stays
            result = SubjectResult(folder.name, "failed", f"cannot write: {error.strerror or error}")
        results.append(result)
        report(_summary_line(result))
    return results


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary subject folders left by a killed run (``kill -9``) of this machine: removed."""
    for folder in out.glob(f".*.{TEMP_MARKER}"):
        try:
            os.kill(int(folder.name.split(".")[-2]), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            continue


def _summary_line(result: SubjectResult) -> str:
    if result.status != "prepared":
        return f"{result.subject}: {result.status}: {result.reason}"
    qc = result.qc
    return (f"{result.subject}: prepared: MI {qc['registration']['metric_before']:.3f} -> "
            f"{qc['registration']['metric_after']:.3f}, head Dice {qc['checks']['head_dice']['value']:.3f}, "
            f"brain Dice {qc['checks']['brain_dice']['value']:.3f}, brain {qc['brain_mask']['volume_ml']:.0f} ml"
            + "".join(f"; warning: {w}" for w in qc["brain_mask"]["warnings"]))


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrisynthesis prepare-pairs",
        description="Turn raw T1/T2 scans (one folder per subject, each scan on its own grid, whole head or "
                    "skull-stripped) into co-registered, brain-extracted training pairs with a QC report per "
                    "subject (docs/training.md#data).")
    parser.add_argument("raw_dir", metavar="RAW_DIR", help="folder of subject folders, each with one T1 and one T2 file")
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="where the pairs go (one folder per subject; give it to 'mrisynthesis train --data')")
    parser.add_argument("--threads", type=int, default=None,
                        help="registration threads (default: OMP_NUM_THREADS, else all cores)")
    return parser


def main(argv=None) -> int:
    """``mrisynthesis prepare-pairs``; exit statuses as every command's
    (:func:`MRISynthesisLib.cli.exit_status`)."""
    from MRISynthesisLib.cli import exit_status

    return exit_status(_prepare, build_parser().parse_args(argv), interrupted=lambda: (
        "the subjects prepared so far are complete, the one in progress was not written"))


def _prepare(args) -> int:
    results = prepare_pairs(args.raw_dir, args.out_dir, args.threads)
    done = sum(r.status in ("prepared", "already prepared") for r in results)
    print(f"{done} of {len(results)} subject(s) ready in {args.out_dir}; QC reports: <subject>/qc.png and qc.json",
          file=sys.stderr)
    return 0 if done == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
