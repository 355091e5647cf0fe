"""How much bf16 (or fp16) inference changes a model's output on the study's test subjects.

    python benchmarks/precision_quality.py --model t2-to-t1-unet-l1-v1 [--precision bf16]
        [--data ../shared/data/paired] [--split-seed 42] [--n-val 2] [--device cpu] [--json out.json]

The test subjects are the study's (``studies.comparison_protocol.study_split``: one per source with at
least two subjects, seeded; the same 4 as the model cards with the default data and seeds). Each
subject's whole source volume goes through ``Synthesizer.synthesize`` twice, in float32 and in the
chosen precision (as a user would: no mask given), and is scored exactly as the study scores it
(``studies.subject_scoring.score``: reference = real target normalised in its brain mask, inside
the brain mask, data range 1). Printed per subject and as the mean: the largest and the mean
absolute difference between the two outputs inside the brain (normalised units, 1 = the target's
99.5th percentile), PSNR and SSIM of both, and their change. On a CPU without native bfloat16
the bf16 pass is emulated and slow (minutes per subject).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from MRISynthesisLib import catalog  # noqa: E402
from MRISynthesisLib.checkpoint import read_metadata  # noqa: E402
from MRISynthesisLib.synthesis import Synthesizer  # noqa: E402


def test_subjects(data: Path, split_seed: int, n_val: int):
    from Training.data import discover_subjects
    from studies.comparison_protocol import study_split

    subjects = discover_subjects(data).subjects
    test = set(study_split(subjects, split_seed, n_val)["test"])
    return [s for s in subjects if s.id in test]


def compare(case, synthesizers) -> dict:
    from studies.subject_scoring import score

    outputs, scores = {}, {}
    for name, synthesizer in synthesizers.items():
        started = time.process_time()
        outputs[name] = synthesizer.synthesize(case.source).array
        scores[name] = score(case, outputs[name], time.process_time() - started)["mask"]
    reference_name, other = list(synthesizers)
    difference = np.abs(outputs[other] - outputs[reference_name])[case.mask]
    return {"subject": case.subject.id, "source": case.subject.source,
            "max_abs_difference": float(difference.max()), "mean_abs_difference": float(difference.mean()),
            **{f"{metric}_{name}": float(scores[name][metric]) for name in synthesizers for metric in ("psnr", "ssim")}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="catalog id or .safetensors checkpoint")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16"), help="compared with fp32 (default bf16)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "paired")
    parser.add_argument("--split-seed", type=int, default=42)
    parser.add_argument("--n-val", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)

    from studies.subject_scoring import TestCase

    model = catalog.resolve_model(args.model, None)
    metadata = read_metadata(model)
    synthesizers = {name: Synthesizer(model, device=args.device, precision=name) for name in ("fp32", args.precision)}
    other = args.precision
    print(f"model {metadata.model_id} ({metadata.direction}); fp32 vs {synthesizers[other].precision.describe()} "
          f"on {synthesizers[other].device}; brain mask, normalised units, study conventions")
    print(f"{'subject':<22}{'source':<8}{'max|diff|':>10}{'mean|diff|':>11}{'PSNR fp32':>10}{f'PSNR {other}':>10}"
          f"{'dPSNR':>8}{'SSIM fp32':>10}{f'SSIM {other}':>10}{'dSSIM':>9}")
    rows = []
    for subject in test_subjects(args.data, args.split_seed, args.n_val):
        row = compare(TestCase(subject, metadata.direction), synthesizers)
        rows.append(row)
        print(_line(row["subject"], row["source"], row, other), flush=True)
    mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key not in ("subject", "source")}
    mean["max_abs_difference"] = max(r["max_abs_difference"] for r in rows)
    print(_line("all (mean; max of max)", "", mean, other))
    if args.json:
        args.json.write_text(json.dumps({"model": metadata.model_id, "precision": other, "subjects": rows,
                                         "summary": mean}, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _line(name, source, row, other) -> str:
    return (f"{name:<22}{source:<8}{row['max_abs_difference']:>10.4f}{row['mean_abs_difference']:>11.5f}"
            f"{row['psnr_fp32']:>10.3f}{row[f'psnr_{other}']:>10.3f}{row[f'psnr_{other}'] - row['psnr_fp32']:>+8.3f}"
            f"{row['ssim_fp32']:>10.4f}{row[f'ssim_{other}']:>10.4f}{row[f'ssim_{other}'] - row['ssim_fp32']:>+9.4f}")


if __name__ == "__main__":
    sys.exit(main())
