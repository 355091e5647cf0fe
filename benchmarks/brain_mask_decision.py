"""Is ``--brain-mask auto`` right on every volume of ``../shared/data``? Prints the table of
``docs/brain-mask-decision.md``.

    OMP_NUM_THREADS=1 python benchmarks/brain_mask_decision.py [--data ../shared/data] [--no-slabs]

For every MRI volume of the shared collection (masks and lesion labels left out): what the
automatic decision was (``MRISynthesisLib.brain_extraction.choose_brain_mask(volume, "auto")``),
whether it is right, the volume of the mask synthesis would use, and its Dice against a reference
brain mask where one exists:

* ``paired/``: skull-stripped by their sources: the right decision is "keep". Reference: the
  CBICA subjects' ``*_foreground`` file; for the others the volume's own non-zero voxels (what
  its source's skull stripping left);
* ``templates/hcp_mni152/*_brain``: skull-stripped; reference ``MNI152_T1_1mm_brain_mask``;
* ``raw/`` and the other templates: whole heads: the right decision is "extract". References:
  ``MNI152_T1_1mm_brain_mask`` resampled (linear, >= 0.5) onto the 2 mm HCP templates, and onto
  the SPM avg152 templates, which are in MNI space too but a different average (approximate);
  none for the raw scans.

Then (unless ``--no-slabs``) the hard cases of partial coverage, made from shared volumes in
memory: skull-stripped slabs with a zero and a +3 background, and whole-head slabs with zero air.

Nothing is cached: deepbet runs on every whole-head volume (about 7 CPU-s each) and the coarse
network on every skull-stripped one. Exit status 1 when any decision is wrong.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from MRISynthesisLib.brain_extraction import choose_brain_mask, mask_used  # noqa: E402
from MRISynthesisLib.io import load_volume  # noqa: E402
from MRISynthesisLib.volume import Volume  # noqa: E402

#: File names that are masks or labels, not MRI.
NOT_MRI = re.compile(r"(mask|foreground|GOLD_STANDARD)", re.IGNORECASE)
HCP_MASK = Path("templates/hcp_mni152/MNI152_T1_1mm_brain_mask.nii.gz")


def expected_decision(relative: Path) -> str:
    stripped = relative.parts[0] == "paired" or relative.name.split(".")[0].endswith("_brain")
    return "skull-stripped input" if stripped else "extracted"


def reference_mask(data: Path, relative: Path, volume: Volume):
    """(boolean mask on ``volume``'s grid, what it is) or (None, '')."""
    from benchmarks.whole_head import resample

    if relative.parts[0] == "paired":
        foreground = list((data / relative.parent).glob("*_foreground.nii*"))
        if foreground:
            return load_volume(foreground[0]).array > 0, "CBICA foreground"
        return volume.array > 0, "own non-zero voxels"
    if relative.parts[0] == "templates":
        mask = load_volume(data / HCP_MASK)
        if mask.shape == volume.shape and mask.same_geometry(volume, atol=1e-3):
            return mask.array > 0, "HCP brain mask"
        fraction = resample(mask.array.astype(np.float32), mask.affine, volume.shape, volume.affine, np.eye(4))
        return fraction >= 0.5, "HCP brain mask, resampled" + (" (other template)" if "spm" in str(relative) else "")
    return None, ""


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def slabs(data: Path):
    """(name, volume, expected decision, reference mask or None): partial-coverage cases."""
    cases = [("paired/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t1n.nii.gz", "skull-stripped input"),
             ("paired/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t2w.nii.gz", "skull-stripped input"),
             ("paired/MSLUB-patient07/T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
              "skull-stripped input"),
             ("raw/MSLUB-longitudinal/patient04-study1/study1_T1W.nii.gz", "extracted"),
             ("raw/MSLUB-longitudinal/patient04-study1/study1_T2W.nii.gz", "extracted")]
    for relative, expected in cases:
        volume = load_volume(data / relative)
        depth = volume.shape[2]
        for first, count in ((depth // 3, max(8, depth // 4)), (depth // 2, max(6, depth // 6))):
            array = np.ascontiguousarray(volume.array[:, :, first:first + count])
            affine = volume.affine.copy()
            affine[:3, 3] += affine[:3, 2] * first
            for shift in ((0.0, 3.0) if expected == "skull-stripped input" else (0.0,)):
                reference = array > 0 if expected == "skull-stripped input" else None
                name = f"{relative} k={first}..{first + count - 1}" + (f", background +{shift:g}" if shift else "")
                yield name, Volume(array + np.float32(shift), affine), expected, reference


def row(name, volume, expected, reference, reference_name) -> tuple[str, bool]:
    started = time.process_time()
    chosen = choose_brain_mask(volume, "auto")
    seconds = time.process_time() - started
    used = mask_used(volume, chosen)
    voxel_ml = abs(np.linalg.det(volume.affine[:3, :3])) / 1000
    evidence = chosen.evidence
    facts = [f"fg {evidence['foreground_ml']:.0f} ml" if evidence.get("foreground_ml") is not None else "no constant bg"]
    if evidence.get("coarse_brain_share") is not None:
        facts.append(f"coarse {evidence['coarse_brain_share']:.2f}")
    if evidence.get("scalp_gap_mm") is not None:
        facts.append(f"gap {evidence['scalp_gap_mm']:.1f} mm")
    right = chosen.source == expected
    decision = {"skull-stripped input": "keep", "extracted": "extract"}.get(chosen.source, chosen.source)
    score = f"{dice(used, reference):.3f} ({reference_name})" if reference is not None else "–"
    warnings = "; ".join(w.split(":")[0] for w in chosen.warnings) or "–"
    return (f"| {name} | {decision} | {'yes' if right else '**NO**'} | {used.sum() * voxel_ml:.0f} | {score} | "
            f"{', '.join(facts)} | {warnings} | {seconds:.0f} |"), right


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--no-slabs", action="store_true", help="leave out the partial-coverage cases")
    args = parser.parse_args(argv)
    if not (args.data / "paired").is_dir():
        print(f"error: no shared data at {args.data}", file=sys.stderr)
        return 2
    print("| file | decision | right | mask ml | Dice (reference) | evidence | warnings | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    wrong = 0
    files = [p for p in sorted(args.data.rglob("*.nii*")) if not NOT_MRI.search(p.name)]
    for path in files:
        relative = path.relative_to(args.data)
        volume = load_volume(path)
        reference, reference_name = reference_mask(args.data, relative, volume)
        line, right = row(str(relative), volume, expected_decision(relative), reference, reference_name)
        print(line, flush=True)
        wrong += not right
    if not args.no_slabs:
        for name, volume, expected, reference in slabs(args.data):
            line, right = row(name, volume, expected, reference, "slab's non-zero voxels")
            print(line, flush=True)
            wrong += not right
    print(f"\n{wrong} wrong decision(s)")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
