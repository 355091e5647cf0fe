"""Model card of a checkpoint, with its numbers measured on the study's test subjects.

    python -m studies.model_card_metrics CHECKPOINT --study runs/study --out Resources/Models/NAME.md \\
        [--cpu-hours H] [--title TITLE]

The checkpoint is scored exactly like the study's methods (:mod:`studies.subject_scoring`:
whole test volumes through the Synthesizer, brain-mask metrics, same conventions) on the test
subjects of the study folder's ``split.json``, next to the study's baselines for that direction.
Its float16 copy is scored too (outputs compared with float32), so the lead can decide whether
to ship half-size weights. The card ends with a JSON block of the per-subject brain-mask PSNR and
SSIM that a regression test can read back (:func:`read_card_metrics`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from MRISynthesisLib.atomic import atomic_path
from MRISynthesisLib.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from MRISynthesisLib.cli import exit_status
from MRISynthesisLib.errors import MRISynthesisError

from studies import subject_scoring as evaluate, comparison_protocol as protocol
from studies.comparison_protocol import Method

CARD_METRICS_TAG = "card-test-metrics"
LICENCES = {
    "BraTS": "BraTS data-use terms (research use; cite the BraTS papers); no redistribution",
    "TCGA": "TCIA TCGA-LGG, CC BY 3.0/4.0 (citation required)",
    "MSLUB": "Ljubljana MS database, CC BY (Lesjak et al., Neuroinformatics 2018)",
    "CBICA": "UPenn CBICA tutorial sample, no licence stated (internal use)",
    "GLISTR": "UPenn GLISTR example data, SBIA licence (research use)",
}


def score_checkpoint(checkpoint, study_dir) -> dict:
    """Per-subject scores of ``checkpoint`` (and of its float16 copy) on the study's test subjects."""
    from studies.comparison_runner import Study

    metadata = read_metadata(checkpoint)
    saved = json.loads((Path(study_dir) / "protocol.json").read_text())
    settings = protocol.StudySettings(**saved["settings"])
    study = Study(settings, ["inverted"], [metadata.direction], log=lambda *a: None)
    study.prepare()
    method = Method("checkpoint", metadata.title or metadata.model_id, "trained")
    cases = {i: evaluate.TestCase(study.subjects[i], metadata.direction) for i in study.split["test"]}
    rows, half_rows, differences = [], [], []
    already_half = metadata.weights_dtype == "float16"  # its float16 copy is the file itself
    with tempfile.TemporaryDirectory() as tmp:
        model, half_metadata = load_checkpoint(checkpoint)
        half = None if already_half else save_checkpoint(Path(tmp) / "half.safetensors", model, half_metadata,
                                                         half=True)
        for case in cases.values():
            full, seconds = evaluate.predict(method, case, checkpoint)
            rows.append(evaluate.score(case, full, seconds))
            if half is not None:
                halved, seconds = evaluate.predict(method, case, half)
                half_rows.append(evaluate.score(case, halved, seconds))
                differences.append(float(np.abs(full - halved)[case.mask].max()))
    if already_half:
        half_rows, differences = rows, [0.0]
    baselines = {}
    for name in ("inverted", "lookup", "baseline1x1"):
        path = Path(study_dir) / "eval" / metadata.direction / f"{name}.json"
        if path.exists():
            baselines[name] = json.loads(path.read_text())["subjects"]
    return {"metadata": metadata, "study": study, "rows": rows, "half_rows": half_rows,
            "fp16_max_abs_difference": max(differences), "baselines": baselines,
            "size_mb": Path(checkpoint).stat().st_size / 1e6}


def _overall(rows, metric):
    digits = {"mae": 4, "psnr": 2, "ssim": 3}[metric]
    stat = evaluate.aggregate(rows)["overall"][metric]
    return f"{stat['mean']:.{digits}f}" + (f" ± {stat['sd']:.{digits}f}" if stat["sd"] is not None else "")


def card_text(result: dict, title: str, cpu_hours: float | None) -> str:
    metadata, rows = result["metadata"], result["rows"]
    training = metadata.training_data
    sources = sorted(set(training.get("train_sources", [])))
    by_subject = sorted(rows, key=lambda r: r["mask"]["ssim"])
    weakest = by_subject[0]
    metrics_rows = "\n".join(
        f"| {r['subject']} | {r['source']} | {r['mask']['mae']:.4f} | {r['mask']['psnr']:.2f} | {r['mask']['ssim']:.3f} | "
        f"{r['whole_slice']['psnr']:.2f} | {r['whole_slice']['ssim']:.3f} |" for r in rows)
    compare = [("this model", rows), ("this model, float16 weights", result["half_rows"])]
    compare += [(name, r) for name, r in result["baselines"].items()]
    compare_rows = "\n".join(f"| {name} | {_overall(r, 'mae')} | {_overall(r, 'psnr')} | {_overall(r, 'ssim')} |"
                             for name, r in compare)
    regression = {r["subject"]: {"psnr": round(r["mask"]["psnr"], 3), "ssim": round(r["mask"]["ssim"], 4)}
                  for r in rows}
    norm = metadata.normalisation
    return f"""# {title}

**Not for diagnosis.** A synthetic {metadata.target_contrast} computed from a {metadata.source_contrast}; it
can look plausible and still be wrong, especially in lesions. Research and visualisation use only.

| | |
|---|---|
| model id | `{metadata.model_id}` |
| direction | {metadata.direction} |
| architecture | `{metadata.architecture}` {json.dumps(metadata.config)} |
| weights | {metadata.weights_dtype}, {result['size_mb']:.2f} MB, content sha256 `{metadata.content_sha256[:16]}…` |
| training | {training.get('steps', '?')} steps, {training.get('epochs', '?')} epochs{f', {cpu_hours:g} CPU hours' if cpu_hours else ''} |

## Training data and licences
{training.get('train_subjects', '?')} training subjects ({', '.join(training.get('train_subject_ids', []))}) and
{training.get('val_subjects', '?')} validation subjects ({', '.join(training.get('val_subject_ids', []))}) of
`../shared/data/paired`, all patients (glioma, multiple sclerosis, white-matter lesions); none healthy.
Sources and their terms:

{chr(10).join(f'- {s}: {LICENCES.get(s, "see ../shared/data/README.md")}' for s in sources)}

The weights are the project's own output; no image data is included in this repository.

## Preprocessing (stored in the checkpoint, applied by the Synthesizer)
Canonical axial slices; brain mask; percentile normalisation {norm.get('low')}..{norm.get('high')} inside the
mask to [0, 1] (model range [-1, 1]); in-plane resampling to {metadata.pixel_spacing_mm} mm, centred in
{metadata.slice_size} x {metadata.slice_size} pixels; {metadata.context_slices} context slice(s) on each side.
Output: 0 background, 1 = the 99.5th percentile of the target contrast in the brain.

## Intended use
Filling in a missing T1-weighted or T2-weighted series for visualisation, registration or as an input to
tools that need both contrasts, on skull-stripped adult brain MRI. The model has only seen skull-stripped
brains: a whole-head scan is brain-extracted automatically first (`--brain-mask auto`, the default; deepbet,
less accurate on T2w than on T1w input) and the output is 0 outside the brain. Check the mask
(`--save-mask`) and pass a corrected or your own one with `--brain-mask FILE`. Not for measuring lesions, not
for diagnosis, not validated on children, other organs or other contrasts.

## Test metrics
Test subjects of the study split (`docs/results.md`), never seen in training or validation; whole volumes
through the Synthesizer; reference = real target normalised like the input; inside the brain mask
(primary) and on whole slices containing brain; conventions as in `docs/results.md`.

| subject | source | MAE (brain) | PSNR dB (brain) | SSIM (brain) | PSNR dB (slices) | SSIM (slices) |
|---|---|---|---|---|---|---|
{metrics_rows}

Mean ± SD over the test subjects, inside the brain, next to the baselines of the study:

| | MAE | PSNR (dB) | SSIM |
|---|---|---|---|
{compare_rows}

Float16 weights: largest absolute output difference to float32 inside the brain
{result['fp16_max_abs_difference']:.2e} (output units 0..1).

## Known failure modes seen on the test subjects
- Lowest brain SSIM on {weakest['subject']} ({weakest['source']}): SSIM {weakest['mask']['ssim']:.3f},
  PSNR {weakest['mask']['psnr']:.2f} dB. Compare the figures in `docs/results.md`.
- Trained on {training.get('train_subjects', '?')} patients from {len(sources)} sources: other sites, field
  strengths, orientations and slice thicknesses are outside what it has seen; check the output against the
  input before using it.

<!-- {CARD_METRICS_TAG}
{json.dumps(regression, indent=1)}
-->
"""


def read_card_metrics(path) -> dict:
    """``{subject: {'psnr', 'ssim'}}`` of a card written by this module (for regression tests)."""
    text = Path(path).read_text(encoding="utf-8")
    match = re.search(rf"<!-- {CARD_METRICS_TAG}\n(.*?)\n-->", text, re.S)
    if match is None:
        raise MRISynthesisError(f"{path} has no {CARD_METRICS_TAG} block")
    return json.loads(match.group(1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.model_card_metrics", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--study", default="runs/study", help="study folder (its split.json and baselines)")
    parser.add_argument("--out", required=True, help="model card to write (Resources/Models/NAME.md)")
    parser.add_argument("--title", default="", help="card title (default: the checkpoint's title)")
    parser.add_argument("--cpu-hours", type=float, default=None, help="CPU hours the model was trained for")
    args = parser.parse_args(argv)

    def write_card() -> int:
        result = score_checkpoint(args.checkpoint, args.study)
        title = args.title or result["metadata"].title or result["metadata"].model_id
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp:  # a shipped resource: never half-written
            Path(tmp).write_text(card_text(result, title, args.cpu_hours), encoding="utf-8")
        print(f"wrote {args.out}")
        return 0

    return exit_status(write_card)


if __name__ == "__main__":
    sys.exit(main())
