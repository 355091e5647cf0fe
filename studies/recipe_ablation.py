"""Budget study of the v2 recipe: what each ingredient buys for the same CPU time, on validation subjects.

Each row adds one ingredient to the row above it (the first row is the v1 recipe); every run
trains for the same number of CPU minutes of training steps (``train.max_cpu_minutes``, one
torch thread, validation excluded) at a constant learning rate and is validated every
``minutes / points`` CPU minutes on the study's validation subjects only (the test subjects are
never used here). The result is a learning-curve table: validation MAE / PSNR / SSIM inside the
brain against CPU minutes. Conventions are those of :mod:`Training.validation`.

    python -m studies.recipe_ablation --data ../shared/data/paired --out runs/ingredients \\
        --direction t1-to-t2 --minutes 6 --points 4

Runs are subprocesses of ``python -m Training`` (each its own process, so its CPU time is its
own); a finished run (``report.md`` present) is not repeated, so the command resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from Training.data import discover_subjects, write_split

from studies import comparison_protocol as protocol

#: (name, title, overrides): each row adds one ingredient to the one before.
V1 = {"model.generator": "unet_256", "model.generator_options": {"ngf": 24, "dropout": False},
      "loss.foreground_l1": True, "optim.lr": 1e-3, "data.augment_preset": "basic", "train.ema_decay": 0.0}
RESUNET = {"model.generator": "resunet", "model.generator_options": {"ngf": 16, "levels": 4, "blocks": 1},
           "data.crop_size": 128, "optim.beta1": 0.9, "train.ema_decay": 0.998, "validation.raw_too": True}
NO_NORM = {"ngf": 16, "levels": 4, "blocks": 1, "norm": "none"}
#: the no_norm_strong row: the base of the site-augmentation ablation below
STRONG = {**V1, **RESUNET, "loss.ssim": 1.0, "model.generator_options": NO_NORM, "data.augment_preset": "strong"}
INGREDIENTS = [
    ("v1", "v1 recipe: unet_256 ngf 24, whole 256 px slices, L1 in the brain", V1),
    ("resunet_crops", "+ residual U-Net (4 levels, ngf 16) on 128 px crops, EMA 0.998", {**V1, **RESUNET}),
    ("ssim", "+ SSIM term (L1 + 1 - SSIM in the brain)", {**V1, **RESUNET, "loss.ssim": 1.0}),
    ("strong_aug", "+ site augmentation (contrast curves, noise, blur, resolution, thick slices)",
     {**V1, **RESUNET, "loss.ssim": 1.0, "data.augment_preset": "strong"}),
    ("context", "+ 2.5D input (one neighbouring slice on each side)",
     {**V1, **RESUNET, "loss.ssim": 1.0, "data.augment_preset": "strong", "data.context_slices": 1}),
    # Not cumulative: the "ssim" row without batch normalisation, with and without site augmentation.
    ("no_norm", "ssim row without batch normalisation (residual branches start at zero)",
     {**V1, **RESUNET, "loss.ssim": 1.0, "model.generator_options": NO_NORM}),
    ("no_norm_strong", "no_norm + site augmentation", STRONG),
]
#: Ablation of the site augmentation, not cumulative: no_norm_strong with one part switched off
#: (``data.augment_off``), and no_norm_strong again with another seed, for the run-to-run noise.
AUGMENT_PART_TITLES = {"gamma": "gamma", "bias": "bias field", "curve": "contrast curves",
                       "jitter": "percentile jitter", "blur": "blur", "lowres": "lower in-plane resolution",
                       "thick": "thick slices", "noise": "noise"}
INGREDIENTS += [(f"strong_no_{part}", f"no_norm_strong without {title}", {**STRONG, "data.augment_off": [part]})
                for part, title in AUGMENT_PART_TITLES.items()]
INGREDIENTS.append(("strong_seed1", "no_norm_strong, seed 1 (run-to-run noise)", {**STRONG, "seed": 1}))


def write_other_sites_split(split, by_id, path) -> Path:
    """Validate on other sites than the study's validation side: the training subjects of every
    source other than the validation subjects' (one per source), training on the rest (the study's
    validation subjects included). The test subjects stay out of it."""
    val_sources = {by_id[i].source for i in split["val"]}
    held, seen = [], set()
    for subject_id in sorted(split["train"]):
        source = by_id[subject_id].source
        if source not in val_sources and source not in seen and \
                sum(by_id[i].source == source for i in split["train"] + split["test"]) > 1:
            held.append(subject_id)
            seen.add(source)
    train = [i for i in split["train"] + split["val"] if i not in held]
    return write_split({"train": train, "val": held, "test": list(split["test"])}, path)


def _suffix(args) -> str:
    """Run-folder and table suffix of the --other-sites variant."""
    return "-other-sites" if args.other_sites else ""


def run_overrides(name, extra, args, manifest, n_trainval, steps_per_epoch, split_file=None):
    values = {"name": name, "output_dir": str(args.out), "family": "supervised", "device": "cpu", "seed": 0,
              "data.manifest": str(manifest), "data.direction": args.direction,
              "data.split": protocol.validation_fractions(n_trainval, 2), "data.split_seed": 42,
              "data.slice_size": 256, "data.pixel_spacing_mm": 1.0, "data.batch_size": 8,
              "data.cache_dir": str(Path(args.out) / "cache"), "optim.lr_policy": "constant",
              "train.epochs": 100000, "train.steps_per_epoch": steps_per_epoch, "train.checkpoint_every": 0,
              "train.threads": 1, "train.max_cpu_minutes": args.minutes, "train.precision": "fp32",
              "validation.metric": "ssim"}
    if split_file:
        values["data.split_file"] = str(split_file)
    values.update(extra)
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def run(args) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    subjects = discover_subjects(args.data).subjects
    split = protocol.study_split(subjects, 42, 2)
    by_id = {s.id: s for s in subjects}
    trainval = [by_id[i] for i in split["train"] + split["val"]]
    split_file = None
    if args.other_sites:
        split_file = write_other_sites_split(split, by_id, out / "split-other-sites.json")
    manifest = protocol.write_manifest(trainval, out / "trainval.csv")
    rows = []
    for name, title, extra in INGREDIENTS:
        if args.only and name not in args.only:
            continue
        run_dir = out / f"{args.direction}-{name}{_suffix(args)}"
        if not (run_dir / "report.md").exists():  # written when a run ends
            # whole slices cost ~4x a 128 px crop per step: fewer steps between validations
            steps = args.steps_per_point if extra.get("data.crop_size") else max(2, args.steps_per_point // 3)
            command = [sys.executable, "-m", "Training", *run_overrides(run_dir.name, extra, args, manifest,
                                                                       len(trainval), steps, split_file)]
            if run_dir.exists():
                command = [sys.executable, "-m", "Training", "--resume", str(run_dir)]
            print(f"== {name}: {title}", flush=True)
            subprocess.run(command, check=True)
        rows.append({"name": name, "title": title, "records": run_records(run_dir)})
    return rows


def run_records(run_dir: Path) -> dict:
    records = {"val": [], "val_raw": []}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] in records:
            records[record["kind"]].append(record)
    return records


def table(rows, direction: str) -> str:
    """Markdown learning-curve table: one line per (ingredient, validation point)."""
    lines = [f"Direction {direction}; validation subjects only; inside the brain; MAE / PSNR dB / SSIM "
             "(EMA weights where the row uses them; raw weights in brackets at the last point).", "",
             "| ingredient | CPU min | steps | MAE | PSNR | SSIM |", "|---|---|---|---|---|---|"]
    for row in rows:
        raw = {r["step"]: r for r in row["records"]["val_raw"]}
        for record in row["records"]["val"]:
            minutes = record.get("train_cpu_minutes", float("nan"))
            text = f"{record['mae']:.4f} | {record['psnr']:.2f} | {record['ssim']:.3f}"
            if record is row["records"]["val"][-1] and record["step"] in raw:
                r = raw[record["step"]]
                text = (f"{record['mae']:.4f} ({r['mae']:.4f}) | {record['psnr']:.2f} ({r['psnr']:.2f}) | "
                        f"{record['ssim']:.3f} ({r['ssim']:.3f})")
            lines.append(f"| {row['name']} | {minutes:.1f} | {record['step']} | {text} |")
    return "\n".join(lines) + "\n"


def add_run_arguments(parser, *, out: str, minutes: float, what: str, steps_per_point: int, steps_help: str) -> None:
    """The options every equal-budget study of this kind takes (data, study folder, direction, budget)."""
    parser.add_argument("--data", default="../shared/data/paired", help="folder of paired subject folders")
    parser.add_argument("--out", default=out, help="study folder (runs and table)")
    parser.add_argument("--direction", default=protocol.DIRECTIONS[0], choices=protocol.DIRECTIONS)
    parser.add_argument("--minutes", type=float, default=minutes, help=f"CPU minutes of training per {what}")
    parser.add_argument("--steps-per-point", type=int, default=steps_per_point, help=steps_help)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.recipe_ablation", description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, out="runs/ingredients", minutes=6.0, what="ingredient", steps_per_point=40,
                      steps_help="optimisation steps between validations (crop rows; whole-slice rows a third)")
    parser.add_argument("--only", nargs="*", help="run only these ingredients")
    parser.add_argument("--other-sites", action="store_true",
                        help="validate on one training subject of each other source than the validation side's "
                             "(BraTS, MSLUB, TCGA here) and train on the rest: what an ingredient buys on other sites")
    args = parser.parse_args(argv)
    rows = run(args)
    text = table(rows, args.direction)
    (Path(args.out) / f"table-{args.direction}{_suffix(args)}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
