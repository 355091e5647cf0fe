"""Score shipped checkpoints side by side on the study's subjects: tables, texture, baselines, a figure.

    python -m studies.final_scoring --study runs/study --direction t2-to-t1 \\
        --model v1=Resources/Models/t2-to-t1-unet-l1-v1.safetensors \\
        --model v2=Resources/Models/t2-to-t1-resunet-v2.safetensors \\
        [--split test|val] [--tta v2] [--figure docs/figures/v1-v2-t2-to-t1.png] [--out runs/final]

Every model synthesises each subject's whole volume through the Synthesizer (fp32 on the CPU, no
mask given, as a user would run it) and is scored by :func:`studies.subject_scoring.score`: brain
mask and whole-slice metrics, GLCM texture of the real and synthetic images, CPU seconds. With
``--tta NAME`` that model is also run with left-right flip averaging. The test side is meant to
be scored once, at the end; model choices are made on ``--split val``. The study's baselines
(``<study>/eval/<direction>/{inverted,lookup,baseline1x1}.json``) are read for the per-subject
"beats every baseline" check. Writes ``<out>/<split>-<direction>.json`` and ``.md``; the figure
shows only subjects whose licence allows it (MSLUB, TCGA).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from MRISynthesisLib.cli import exit_status
from MRISynthesisLib.errors import InputError, first_line

from studies import subject_scoring as evaluate, comparison_figures as figures, comparison_protocol as protocol

BASELINES = ("inverted", "lookup", "baseline1x1")
TRAINED = protocol.Method("checkpoint", "a trained checkpoint", "trained")
HIGHER = {"mae": False, "psnr": True, "ssim": True}


def _subjects(study_dir: Path, split: str):
    from Training.data import discover_subjects

    saved = json.loads((study_dir / "protocol.json").read_text())
    subjects = {s.id: s for s in discover_subjects(saved["settings"]["data"]).subjects}
    ids = json.loads((study_dir / "split.json").read_text())[split]
    return [subjects[i] for i in ids]


def run(study_dir, direction: str, models: dict, split: str = "test", tta=(), figure=None) -> dict:
    study_dir = Path(study_dir)
    rows: dict = {}
    panels = []
    for subject in _subjects(study_dir, split):
        case = evaluate.TestCase(subject, direction)
        subject_panels = {"id": subject.id, "source": subject.source, **evaluate.case_panels(case), "methods": {}}
        for name, checkpoint in models.items():
            for flip in ((False, True) if name in tta else (False,)):
                label = f"{name}+tta" if flip else name
                synthetic, seconds = evaluate.predict(TRAINED, case, checkpoint, flip_tta=flip)
                rows.setdefault(label, []).append(evaluate.score(case, synthetic, seconds))
                if not flip:
                    subject_panels["methods"][name] = evaluate.figure_panels(case, synthetic)
        panels.append(subject_panels)
    baselines = {}
    for name in BASELINES:
        path = study_dir / "eval" / direction / f"{name}.json"
        if path.exists():
            baselines[name] = {r["subject"]: r for r in json.loads(path.read_text())["subjects"]}
    result = {"direction": direction, "split": split, "rows": rows, "baselines": baselines,
              "beats_baselines": _beats(rows, baselines)}
    if figure:
        shown = [p for p in panels if p["source"] in protocol.FIGURE_SOURCES]
        if shown:
            titles = {name: name for name in models}
            figures.comparison_grid(figure, shown, titles, f"{direction}: input | " + " | ".join(models) +
                                    " | real (relative |error| inside the brain below)")
            result["figure"] = str(figure)
    return result


def _beats(rows: dict, baselines: dict) -> dict:
    """Per model: the (subject, metric, baseline) triples where it does not beat a baseline on MAE, PSNR
    or SSIM (brain mask); None when no baseline was scored on these subjects (e.g. validation side)."""
    verdict = {}
    for name, model_rows in rows.items():
        failures, compared = [], 0
        for row in model_rows:
            for baseline, by_subject in baselines.items():
                other = by_subject.get(row["subject"])
                if other is None:
                    continue
                compared += 1
                for metric, higher in HIGHER.items():
                    mine, theirs = row["mask"][metric], other["mask"][metric]
                    if (mine <= theirs) if higher else (mine >= theirs):
                        failures.append(f"{row['subject']} {metric} vs {baseline}")
        verdict[name] = failures if compared else None
    return verdict


def markdown(result: dict) -> str:
    rows, direction = result["rows"], result["direction"]
    lines = [f"### {direction}, {result['split']} subjects", "",
             "| model | subject | source | MAE | PSNR dB | SSIM | MI bits | slices/CPU-s |", "|---|---|---|---|---|---|---|---|"]
    for name, model_rows in rows.items():
        for r in model_rows:
            m = r["mask"]
            lines.append(f"| {name} | {r['subject']} | {r['source']} | {m['mae']:.4f} | {m['psnr']:.2f} | {m['ssim']:.3f} | "
                         f"{m['mi_bits']:.3f} | {r['slices_per_second']:.2f} |")
    lines += ["", "| model | MAE | PSNR dB | SSIM | beats every baseline on every subject |", "|---|---|---|---|---|"]
    for name, model_rows in rows.items():
        stat = evaluate.aggregate(model_rows)["overall"]
        failures = result["beats_baselines"][name]
        verdict = ("no baseline scores for these subjects" if failures is None else
                   "yes" if not failures else f"no: {', '.join(failures)}")
        lines.append(f"| {name} | {stat['mae']['mean']:.4f} | {stat['psnr']['mean']:.2f} | {stat['ssim']['mean']:.3f} | "
                     f"{verdict} |")
    lines += ["", "GLCM texture inside the brain (contrast / dissimilarity, mean over subjects; real images first):", "",
              "| image | contrast | dissimilarity |", "|---|---|---|"]
    first = next(iter(rows.values()))
    for label, pick in [("real", lambda r: r["texture"]["brain"]["real"])] + [
            (name, (lambda r: r["texture"]["brain"]["synthetic"])) for name in rows]:
        source_rows = first if label == "real" else rows[label]
        values = [pick(r) for r in source_rows if pick(r)]
        if values:
            lines.append(f"| {label} | {np.mean([v['contrast'] for v in values]):.3f} | "
                         f"{np.mean([v['dissimilarity'] for v in values]):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.final_scoring", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="runs/study", help="study folder (protocol.json, split.json, baselines)")
    parser.add_argument("--direction", required=True, choices=protocol.DIRECTIONS)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT")
    parser.add_argument("--split", default="test", choices=("test", "val"))
    parser.add_argument("--tta", action="append", default=[], metavar="NAME", help="also score NAME with flip TTA")
    parser.add_argument("--figure", default=None, help="PNG of input | models | real with error maps")
    parser.add_argument("--out", default="runs/final", help="folder of the JSON and markdown results")
    return exit_status(_score, parser.parse_args(argv))


def _score(args) -> int:
    try:
        models = dict(item.split("=", 1) for item in args.model)
        result = run(args.study, args.direction, models, args.split, tuple(args.tta), args.figure)
    except (OSError, ValueError) as error:  # NAME=CHECKPOINT malformed, a missing or malformed study file
        raise InputError(first_line(error)) from error
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.split}-{args.direction}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=float))
    text = markdown(result)
    (out / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
