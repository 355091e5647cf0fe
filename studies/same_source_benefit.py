"""Does a subject of the same source in training help an unseen subject? (a diagnostic, not a model)

The models are weakest on the sources they have few or no training subjects of. This study asks how
much of that gap more data from the same sources would close, with the number of training subjects
held fixed. The validation subjects are the other-sites subjects of :mod:`studies.recipe_ablation`
(one training subject of each source other than the study's validation side: BraTS20, MSLUB07,
TCGA-FG here). Training sets of equal size are compared:

- ``unseen``: the other-sites training set (the CBICA subjects and GLISTR): no subject of the
  validation subjects' sources;
- ``seen``: the same set with as many CBICA subjects swapped for the other subject of each
  validation subject's source (BraTS-GLI-00001-000, MSLUB-patient19, TCGA-DU-7294 here);
- ``without_<source>``: as ``seen`` without the subject of that source: for that source's
  validation subject, more *other* sources (what a new site gets from a more varied training set).

Those other subjects are the study's *test* subjects: here they are only trained on, never scored,
and nothing trained here is shipped or used to choose a model. Every run is the v4 recipe's
ingredients (``no_norm_strong`` without gamma) for the same CPU minutes, one thread.

    python -m studies.same_source_benefit --out runs/sources --direction t1-to-t2 --minutes 8 --seeds 0
    python -m studies.same_source_benefit --out runs/sources --direction t1-to-t2 --minutes 8 \\
        --seeds 0 1 --conditions unseen seen

The first command runs every condition once; the second adds a second seed of ``unseen`` and
``seen`` (finished runs are not repeated). Each run's last checkpoint is scored per validation
subject (:func:`score`); the tables cover every finished run of the direction in ``--out``: one
row per run, and per validation subject the three conditions side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from MRISynthesisLib.errors import InputError, MRISynthesisError
from Training.data import discover_subjects, read_split, write_split

from studies import output_calibration as calibration, comparison_protocol as protocol
from studies.recipe_ablation import STRONG, add_run_arguments, run_overrides, run_records, write_other_sites_split

#: one validation, at the end (validating whole volumes costs about as much as 50 steps)
RECIPE = {**STRONG, "data.augment_off": ["gamma"], "validation.raw_too": False}
_ORDER = {"unseen": 0, "seen": 2}  # table order; without_<source> between them


def _condition(run_name: str) -> str:
    """The condition of a run folder named ``<direction>-<condition>-seed<n>``."""
    return run_name.split("-")[-2]


def splits(subjects, out: Path) -> dict[str, Path]:
    """The split files, by condition: ``unseen``, ``seen`` and ``without_<source>`` for each
    validation subject's source (same validation subjects, training sets of equal size)."""
    split = protocol.study_split(subjects, 42, 2)
    by_id = {s.id: s for s in subjects}
    files = {"unseen": write_other_sites_split(split, by_id, out / "split-unseen.json")}
    base = read_split(files["unseen"])
    val_sources = sorted({by_id[i].source for i in base["val"]})
    cbica = sorted(i for i in base["train"] if by_id[i].source == "CBICA")
    for condition, sources in [("seen", val_sources)] + [(f"without_{s}", [o for o in val_sources if o != s])
                                                           for s in val_sources]:
        siblings = sorted(i for i in split["test"] if by_id[i].source in sources)
        # swap out the CBICA subjects last in sorted order: as many as there are siblings
        dropped = cbica[len(cbica) - len(siblings):] if siblings else []
        train = sorted([i for i in base["train"] if i not in dropped] + siblings)
        rest = sorted([i for i in split["test"] if i not in siblings] + dropped)
        files[condition] = write_split({"train": train, "val": base["val"], "test": rest},
                                       out / f"split-{condition}.json")
    return files


def run(args) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    subjects = discover_subjects(args.data).subjects
    files = splits(subjects, out)
    manifest = protocol.write_manifest(subjects, out / "all.csv")
    unknown = sorted(set(args.conditions or ()) - set(files))
    if unknown:
        raise InputError(f"unknown condition(s) {', '.join(unknown)}; choose from {', '.join(files)}")
    for seed in args.seeds:
        for condition in args.conditions or files:
            name = f"{args.direction}-{condition}-seed{seed}"
            run_dir = out / name
            if not (run_dir / "report.md").exists():
                if run_dir.exists():
                    command = [sys.executable, "-m", "Training", "--resume", str(run_dir)]
                else:
                    extra = {**RECIPE, "seed": seed, "data.cache_dir": str(out / f"cache-{condition}")}
                    overrides = run_overrides(name, extra, args, manifest, len(subjects), args.steps_per_point,
                                           files[condition])
                    command = [sys.executable, "-m", "Training", *overrides]
                print(f"== {name}", flush=True)
                subprocess.run(command, check=True)
    # every finished run of this direction in the folder, those of earlier commands too
    finished = sorted((p for p in out.glob(f"{args.direction}-*-seed*") if (p / "report.md").exists()),
                      key=lambda p: (int(p.name.rsplit("seed", 1)[1]), _ORDER.get(_condition(p.name), 1), p.name))
    if not finished:
        raise InputError(f"no finished {args.direction} run in {out}")
    return [{"name": p.name, "records": run_records(p)} for p in finished]


def score(rows, args) -> list[dict]:
    """Each run's last checkpoint (equal CPU time; no choice on the validation subjects) scored per
    validation subject through the Synthesizer, as it is and with the oracle per-volume scale of
    :mod:`studies.output_calibration` (cached in ``<run>/sources-score.json``)."""
    for row in rows:
        run_dir = Path(args.out) / row["name"]
        path = run_dir / "sources-score.json"
        if not path.exists():
            condition = _condition(row["name"])
            checkpoint = run_dir / "checkpoints" / f"last-{args.direction}.safetensors"
            result = calibration.run(args.study, args.direction, checkpoint, "val",
                                     Path(args.out) / f"split-{condition}.json")
            path.write_text(json.dumps(result["rows"], indent=1, default=float))
        row["scores"] = json.loads(path.read_text())
    return rows


def table(rows, direction: str) -> str:
    """Markdown table: per run, the mean and each validation subject, as is and with the oracle scale."""
    lines = [f"Direction {direction}; other-sites validation subjects; inside the brain; EMA weights of the last "
             "step; PSNR dB / SSIM as is (with the oracle per-volume scale and offset in brackets).", "",
             "| run | CPU min | steps | MAE | mean | " + " | ".join(r["subject"] for r in rows[0]["scores"]) + " |",
             "|---|---|---|---|---|" + "---|" * len(rows[0]["scores"])]

    def cell(items):
        mean = {c: {k: float(np.mean([i[c][k] for i in items])) for k in ("psnr", "ssim")}
                for c in ("as_is", "oracle_linear")}
        return (f"{mean['as_is']['psnr']:.2f} / {mean['as_is']['ssim']:.3f} "
                f"({mean['oracle_linear']['psnr']:.2f} / {mean['oracle_linear']['ssim']:.3f})")

    for row in rows:
        last = row["records"]["val"][-1]
        items = [r["scores"] for r in row["scores"]]
        mae = np.mean([i["as_is"]["mae"] for i in items])
        minutes = last.get("train_cpu_minutes", float("nan"))
        lines.append(f"| {row['name']} | {minutes:.1f} | {last['step']} | {mae:.4f} | {cell(items)} | "
                     + " | ".join(cell([i]) for i in items) + " |")
    return "\n".join(lines) + "\n"


def ladder(rows) -> str:
    """Per validation subject: PSNR / SSIM as is, mean over seeds, for no subject of its source or
    of the other validation sources (``unseen``), the other sources only (``without_<its source>``)
    and its source too (``seen``)."""
    columns = ("unseen", "without own source", "seen")
    lines = ["| validation subject | " + " | ".join(columns) + " |", "|---|---|---|---|"]
    for subject, source in [(r["subject"], r["source"]) for r in rows[0]["scores"]]:
        cells = []
        for condition in ("unseen", f"without_{source}", "seen"):
            values = [r["scores"] for row in rows if _condition(row["name"]) == condition
                      for r in row["scores"] if r["subject"] == subject]
            cells.append(" / ".join(f"{np.mean([v['as_is'][k] for v in values]):{f}}"
                                    for k, f in (("psnr", ".2f"), ("ssim", ".3f")))
                         + f" ({len(values)})" if values else "not run")
        lines.append(f"| {subject} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.same_source_benefit", description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, out="runs/sources", minutes=8.0, what="run", steps_per_point=100000,
                      steps_help="optimisation steps between validations (default: validate once, at the end)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per condition and seed")
    parser.add_argument("--conditions", nargs="+", help="run only these conditions (unseen, seen, without_<source>)")
    parser.add_argument("--study", default="runs/study", help="study folder (protocol.json, split.json) for scoring")
    args = parser.parse_args(argv)
    try:
        rows = score(run(args), args)
    except (MRISynthesisError, OSError, ValueError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = table(rows, args.direction) + "\nPSNR dB / SSIM as is, mean over (n) seeds:\n\n" + ladder(rows)
    (Path(args.out) / f"table-{args.direction}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
