"""Volume-level corrections of a synthetic volume's intensities: measured here, not used at inference.

    python -m studies.output_calibration --study runs/study --direction t1-to-t2 \\
        --checkpoint CHECKPOINT [--split-file SPLIT.json] [--split val] [--out runs/calibration]

The reference of the protocol is the real target normalised by its own brain percentiles (0.5 ->
0, 99.5 -> 1), and that scale depends on the whole volume (a bright lesion or a long echo time
moves the 99.5th percentile), while a 2D model sees one slice. This asks whether a correction of
the whole synthetic volume closes that gap. Each subject of one side of the split (``--split``,
default ``val``) is synthesised by the checkpoint through the Synthesizer (as in
:mod:`studies.final_scoring`) and scored inside the brain (:func:`studies.subject_scoring.score`)
as it is and after:

- ``renormalised``: the synthetic brain scaled so its own 0.5 / 99.5 percentiles become 0 / 1,
  the rule the reference went through;
- ``histogram``: its brain histogram mapped onto the mean quantile function of the references of
  the split's training side (a fixed "typical target" histogram);
- ``oracle_linear``: ``a * synthetic + b`` fitted by least squares to the subject's own reference
  inside the brain. It uses the answer, so it is an upper bound on what any per-volume
  scale and offset could buy, not a method.

``--split-file`` selects another subject split (e.g. the other-sites split of
:mod:`studies.recipe_ablation`); the default is the study's ``split.json``. Writes
``<out>/<split>-<direction>-<checkpoint stem>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from MRISynthesisLib.conventions import PERCENTILE_HIGH, PERCENTILE_LOW
from MRISynthesisLib.cli import exit_status
from MRISynthesisLib.errors import InputError, first_line

from studies import subject_scoring as evaluate, comparison_protocol as protocol

#: quantiles (percent) of the histogram template
TEMPLATE_QUANTILES = np.linspace(0.0, 100.0, 201)
CORRECTIONS = ("as_is", "renormalised", "histogram", "oracle_linear")


def _brain(array, mask) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise InputError("the brain mask is empty")
    return np.asarray(array, dtype=np.float64)[mask]


def renormalise(synthetic, mask, low: float = PERCENTILE_LOW, high: float = PERCENTILE_HIGH) -> np.ndarray:
    """``synthetic`` scaled so its ``low`` / ``high`` percentiles inside ``mask`` become 0 / 1, clipped to
    [0, 1], 0 outside ``mask`` (a new float32 array)."""
    lo, hi = np.percentile(_brain(synthetic, mask), [low, high])
    if not hi > lo:
        raise InputError("the synthetic brain is constant; it cannot be renormalised")
    scaled = np.clip((np.asarray(synthetic, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return np.where(np.asarray(mask, dtype=bool), scaled, 0.0).astype(np.float32)


def quantile_function(array, mask) -> np.ndarray:
    """The :data:`TEMPLATE_QUANTILES` percentiles of ``array`` inside ``mask``."""
    return np.percentile(_brain(array, mask), TEMPLATE_QUANTILES)


def histogram_map(synthetic, mask, template: np.ndarray) -> np.ndarray:
    """``synthetic`` with its brain histogram mapped onto ``template`` (a quantile function at
    :data:`TEMPLATE_QUANTILES`): each value goes to the template value of its own quantile
    (piecewise linear); 0 outside ``mask``."""
    template = np.asarray(template, dtype=np.float64)
    if template.shape != TEMPLATE_QUANTILES.shape or np.any(np.diff(template) < 0):
        raise InputError(f"the template must be {TEMPLATE_QUANTILES.size} non-decreasing values")
    own = quantile_function(synthetic, mask)
    # equal quantiles (a plateau) would make np.interp ambiguous: keep the first of each run
    keep = np.concatenate([[True], np.diff(own) > 0])
    mapped = np.interp(np.asarray(synthetic, dtype=np.float64), own[keep], template[keep])
    return np.where(np.asarray(mask, dtype=bool), mapped, 0.0).astype(np.float32)


def oracle_linear(synthetic, reference, mask) -> tuple[np.ndarray, float, float]:
    """``(a * synthetic + b, a, b)`` with ``a, b`` the least-squares fit to ``reference`` inside ``mask``
    (0 outside). Uses the reference: an upper bound, not a method."""
    x, y = _brain(synthetic, mask), _brain(reference, mask)
    design = np.stack([x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    fitted = np.where(np.asarray(mask, dtype=bool), a * np.asarray(synthetic, dtype=np.float64) + b, 0.0)
    return fitted.astype(np.float32), float(a), float(b)


def _split_subjects(study_dir: Path, split_file: Path):
    from Training.data import discover_subjects

    saved = json.loads((study_dir / "protocol.json").read_text())
    subjects = {s.id: s for s in discover_subjects(saved["settings"]["data"]).subjects}
    sides = json.loads(split_file.read_text())
    missing = sorted({i for ids in sides.values() for i in ids} - set(subjects))
    if missing:
        raise InputError(f"{split_file}: subjects not found in the study's data: {', '.join(missing)}")
    return {side: [subjects[i] for i in ids] for side, ids in sides.items()}


def run(study_dir, direction: str, checkpoint, split: str = "val", split_file=None) -> dict:
    """Scores (brain mask: MAE, PSNR, SSIM) of every correction for each subject of ``split``."""
    study_dir = Path(study_dir)
    split_file = Path(split_file) if split_file else study_dir / "split.json"
    sides = _split_subjects(study_dir, split_file)
    if not sides.get(split):
        raise InputError(f"{split_file} has no subjects on the '{split}' side")
    template = np.mean([quantile_function(case.reference, case.mask > 0)
                        for case in (evaluate.TestCase(s, direction) for s in sides["train"])], axis=0)
    rows = []
    for subject in sides[split]:
        case = evaluate.TestCase(subject, direction)
        synthetic, seconds = evaluate.predict(protocol.Method("checkpoint", "a trained checkpoint", "trained"),
                                              case, checkpoint)
        mask = case.mask > 0
        fitted, a, b = oracle_linear(synthetic, case.reference, mask)
        versions = {"as_is": synthetic, "renormalised": renormalise(synthetic, mask),
                    "histogram": histogram_map(synthetic, mask, template), "oracle_linear": fitted}
        scores = {name: {k: evaluate.score(case, volume, seconds)["mask"][k] for k in ("mae", "psnr", "ssim")}
                  for name, volume in versions.items()}
        low, median, high = np.percentile(synthetic[mask], [PERCENTILE_LOW, 50.0, PERCENTILE_HIGH])
        rows.append({"subject": subject.id, "source": subject.source, "scores": scores,
                     "oracle": {"a": a, "b": b},
                     "synthetic_percentiles": {"low": float(low), "median": float(median), "high": float(high)},
                     "reference_median": float(np.median(case.reference[mask]))})
    return {"direction": direction, "checkpoint": str(checkpoint), "split": split, "split_file": str(split_file),
            "template": template.tolist(), "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"### {result['direction']}, {result['split']} subjects of {result['split_file']}",
             f"checkpoint `{result['checkpoint']}`; inside the brain; MAE / PSNR dB / SSIM", "",
             "| subject | " + " | ".join(CORRECTIONS) + " | synthetic 0.5 / 50 / 99.5 % | reference median |",
             "|---|" + "---|" * (len(CORRECTIONS) + 2)]
    for row in result["rows"]:
        cells = [f"{s['mae']:.4f} / {s['psnr']:.2f} / {s['ssim']:.3f}" for s in (row["scores"][c] for c in CORRECTIONS)]
        p = row["synthetic_percentiles"]
        lines.append(f"| {row['subject']} | " + " | ".join(cells)
                     + f" | {p['low']:.3f} / {p['median']:.3f} / {p['high']:.3f} | {row['reference_median']:.3f} |")
    means = [" / ".join(f"{np.mean([r['scores'][c][k] for r in result['rows']]):{f}}"
                        for k, f in (("mae", ".4f"), ("psnr", ".2f"), ("ssim", ".3f"))) for c in CORRECTIONS]
    lines.append("| mean | " + " | ".join(means) + " | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.output_calibration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="runs/study", help="study folder (protocol.json, split.json)")
    parser.add_argument("--direction", required=True, choices=protocol.DIRECTIONS)
    parser.add_argument("--checkpoint", required=True, help="checkpoint to synthesise with")
    parser.add_argument("--split-file", default=None, help="subject split JSON (default: the study's split.json)")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"), help="side of the split to score")
    parser.add_argument("--out", default="runs/calibration", help="folder of the JSON result")
    return exit_status(_calibrate, parser.parse_args(argv))


def _calibrate(args) -> int:
    try:
        result = run(args.study, args.direction, args.checkpoint, args.split, args.split_file)
    except (OSError, ValueError) as error:  # a missing or malformed study file: the user's to fix
        raise InputError(first_line(error)) from error
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.split}-{args.direction}-{Path(args.checkpoint).stem}.json").write_text(json.dumps(result, indent=1, default=float))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
