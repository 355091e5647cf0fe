"""``docs/results.md``: protocol first, then tables, figures, speed, curves and the closing note."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path

from MRISynthesisLib.conventions import T1_TO_T2

from studies import subject_scoring as evaluate, comparison_figures as figures, comparison_protocol as protocol

ATTRIBUTION = (
    "Figures show only test subjects whose licence allows redistribution: **MSLUB** (Ljubljana MS lesion "
    "database, CC BY; Lesjak Ž. et al., *A novel public MR image dataset of multiple sclerosis patients with "
    "lesion segmentations based on multi-rater consensus*, Neuroinformatics 16:51-63, 2018) and **TCGA-LGG** "
    "(The Cancer Imaging Archive, CC BY; Pedano N. et al., Radiology Data from The Cancer Genome Atlas Low "
    "Grade Glioma [TCGA-LGG] collection, TCIA 2016, and Clark K. et al., J Digit Imaging 26:1045-1057, 2013). "
    "BraTS, CBICA and GLISTR subjects appear in numbers only.")
METRIC_TITLES = {"mae": "MAE", "mse": "MSE", "psnr": "PSNR (dB)", "ssim": "SSIM", "mi_bits": "MI (bits)"}
SHORT_TITLES = {"ceiling": "Real via model grid", "inverted": "Inverted source", "lookup": "Intensity lookup", "baseline1x1": "1x1-conv baseline",
                "supervised": "Supervised U-Net (L1)", "pix2pix": "Pix2Pix",
                "supervised_fg": "Supervised U-Net (L1 in brain)", "pix2pix_fg": "Pix2Pix (L1 in brain)",
                "cyclegan": "CycleGAN",
                "cyclegan_sn": "CycleGAN + SN", "cyclegan_s": "CycleGAN_s", "vae": "VAE", "unit": "UNIT"}
HIGHER_IS_BETTER = {"mae": False, "mse": False, "psnr": True, "ssim": True, "mi_bits": True}


def _cell(stat: dict, digits: int) -> str:
    if stat["mean"] is None:
        return "-"
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['sd']:.{digits}f}" if stat["sd"] is not None else "")


DIGITS = {"mae": 4, "mse": 5, "psnr": 2, "ssim": 3, "mi_bits": 3}


def protocol_section(settings: protocol.StudySettings, split: dict, subjects: dict, methods: dict) -> str:
    s = settings
    sides = "\n".join(f"| {side} | {len(ids)} | " + ", ".join(f"{i} ({subjects[i].source})" for i in ids) + " |"
                      for side, ids in split.items())
    rows = "\n".join(f"| `{m.name}` | {m.title} | {m.family or m.kind} | "
                     f"{', '.join(f'{k}={json.dumps(v)}' for k, v in m.overrides.items()) or '-'} |"
                     for m in methods.values())
    return f"""## Protocol (fixed before any model was trained)

- **Data**: the paired subjects of `{s.data}` ({len(subjects)} subjects, 5 sources), discovered by the
  training package; every pair's grid is checked.
- **Split** (`studies/comparison_protocol.py: study_split`, seed {s.split_seed}): for every source with at least
  two subjects one test subject, drawn with `numpy.random.default_rng({s.split_seed})` from its ids sorted by
  name; of the rest, {s.n_val} validation subjects chosen by the training package's stratified subject split
  (same seed), the others train. No subject is on two sides. Single-subject sources (GLISTR) only train.
  The split is written to `split.json` of the study folder.

| side | subjects | ids (source) |
|---|---|---|
{sides}

- **Preprocessing** (the core's, for every method): canonical axial slices; the source is normalised inside
  its own core `brain_mask` exactly as at inference (the reference inside the subject's brain-mask file
  if present, else its `brain_mask`); percentile normalisation 0.5..99.5 inside the mask to [0, 1] (model range [-1, 1]), in-plane resampling to **{s.pixel_spacing_mm:g} mm** pixels and
  centre padding to **{s.slice_size} x {s.slice_size}**; slices with under 5 % brain are not trained on.
  The baselines see the same normalised source.
- **Budget**: every trained run gets the same **{s.minutes_per_model:g} CPU minutes** of training
  (validations included) on this machine ({_machine()}), with {s.threads or 'default'} torch thread(s): CPU
  time of the training process, because the machine is shared and wall-clock time would depend on the other
  work running at the time (with one thread, one CPU minute is one wall-clock minute of an idle core). The
  step count that fits is measured per method before its run (`studies/training_budget.py`); the CPU and
  wall-clock seconds actually used are reported below. CycleGAN,
  its variants and UNIT train both directions in one run (one budget for both); the other methods train one
  run per direction. {s.validations} validation passes on the validation subjects per run; the checkpoint
  with the lowest validation MAE (brain) is tested. Batch {s.batch_size}, Adam 2e-4 (0.5, 0.999) unless a
  method says otherwise, augmentation {'on' if s.augment else 'off'}, seed {s.seed}.
- **Evaluation**: each test subject's whole volume goes through `Synthesizer.synthesize` (the inference path
  of the command line and the Slicer module; baselines: same normalisation, then their rule). Reference =
  the real target normalised like the inputs ([0, 1], 1 = its 99.5th percentile in the brain); synthetic
  values are compared as they are (`metrics.evaluate(normalisation='none')`, data range 1.0). MAE, MSE,
  PSNR (10 log10(1/MSE)), SSIM (2D Gaussian sigma 1.5 on axial slices, map averaged over the region) and MI
  (bits, 64-bin joint histogram) **inside the brain mask** (primary) and on **whole slices containing
  brain**; pooled per volume; then mean ± sample SD over subjects, per source and overall (a source with
  one test subject has no SD). GLCM contrast and dissimilarity (64 levels after per-image percentile
  normalisation in the region, distance 1, 4 angles, mean over slices) of real and synthetic images inside
  the brain and inside the lesion masks (CBICA `manual.mask`, MSLUB `GOLD_STANDARD`).

| method | what | family | settings |
|---|---|---|---|
{rows}
"""


def _machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPU cores shared, no GPU"


def _metric_table(results: dict, names: list, region: str, titles: dict) -> str:
    lines = ["| method | " + " | ".join(METRIC_TITLES[m] for m in evaluate.METRICS) + " |",
             "|---|" + "---|" * len(evaluate.METRICS)]
    for name in names:
        table = evaluate.aggregate(results[name]["subjects"], region)["overall"]
        lines.append(f"| {titles[name]} | " + " | ".join(_cell(table[m], DIGITS[m]) for m in evaluate.METRICS) + " |")
    return "\n".join(lines)


def _source_table(results: dict, names: list, titles: dict) -> str:
    sources = sorted({row["source"] for name in names for row in results[name]["subjects"]})
    lines = ["| method | " + " | ".join(f"{s}" for s in sources) + " |", "|---|" + "---|" * len(sources)]
    for name in names:
        table = evaluate.aggregate(results[name]["subjects"], "mask")
        cells = [" / ".join(_cell(table[s][m], DIGITS[m]) for m in ("mae", "psnr", "ssim")) for s in sources]
        lines.append(f"| {titles[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _texture_table(results: dict, names: list, titles: dict) -> str:
    lines = ["| method | brain contrast | brain dissimilarity | lesion contrast | lesion dissimilarity |",
             "|---|---|---|---|---|"]

    def stat(rows, region, who, prop):
        values = [r["texture"][region][who][prop] for r in rows
                  if r["texture"].get(region) and r["texture"][region][who] is not None]
        return _cell(evaluate.mean_sd(values), 2)

    first = results[names[0]]["subjects"]
    lines.append("| **real** | " + " | ".join(stat(first, region, "real", prop) for region in ("brain", "lesion")
                                              for prop in evaluate.GLCM_PROPERTIES) + " |")
    for name in names:
        rows = results[name]["subjects"]
        lines.append(f"| {titles[name]} | " + " | ".join(stat(rows, region, "synthetic", prop)
                                                         for region in ("brain", "lesion")
                                                         for prop in evaluate.GLCM_PROPERTIES) + " |")
    return "\n".join(lines)


def _speed_table(results_by_direction: dict, names: list, titles: dict, study) -> str:
    directions = list(results_by_direction)
    lines = ["| method | " + " | ".join(f"{d} slices per CPU-s" for d in directions) + " | checkpoint |",
             "|---|" + "---|" * (len(directions) + 1)]
    for name in names:
        cells = []
        for direction in directions:
            if name not in results_by_direction[direction]:
                cells.append("-")
                continue
            rows = results_by_direction[direction][name]["subjects"]
            total_slices = sum(r["slices"] for r in rows)
            total_seconds = sum(r["seconds"] for r in rows)
            cells.append(f"{total_slices / total_seconds:.0f}" if total_seconds > 0 else "-")
        method = study.methods[name]
        size = "-"
        if method.kind == "trained":
            path = study.checkpoint(method, [d for d in directions if name in results_by_direction[d]][0])
            if path.exists():
                size = f"{path.stat().st_size / 1e6:.2f} MB"
        lines.append(f"| {titles[name]} | " + " | ".join(cells) + f" | {size} |")
    return "\n".join(lines)


def _training_table(training: dict, titles: dict) -> str:
    lines = ["| method | trained for | steps | CPU s/step (calibration) | CPU s used | wall s used | best epoch | "
             "val MAE (best) |", "|---|---|---|---|---|---|---|---|"]
    seen = set()
    for (name, direction), summary in training.items():
        key = (name, summary.get("direction"))
        if key in seen:
            continue
        seen.add(key)
        best = summary.get("best") or {}
        lines.append(f"| {titles[name]} | {summary.get('direction')} | {summary.get('steps_done')} | "
                     f"{summary['calibration']['seconds_per_step']:.3f} | "
                     f"{summary.get('cpu_seconds_this_session', float('nan')):.0f} | {summary.get('seconds', 0):.0f} | "
                     f"{summary.get('best_epoch')} | {best.get('mae', float('nan')):.4f} |")
    return "\n".join(lines)


def _closing(results: dict, names: list, titles: dict, methods: dict) -> str:
    baselines = [n for n in names if methods[n].kind in ("inverted", "lookup") or methods[n].family == "baseline"]
    trained = [n for n in names if methods[n].kind == "trained" and n not in baselines]
    if not trained or not baselines:
        return ""
    overall = {n: evaluate.aggregate(results[n]["subjects"])["overall"] for n in names}
    best = min(trained, key=lambda n: overall[n]["mae"]["mean"])
    beats = []
    for metric in ("mae", "psnr", "ssim"):
        sign = 1 if HIGHER_IS_BETTER[metric] else -1
        ok = all(sign * (overall[best][metric]["mean"] - overall[b][metric]["mean"]) > 0 for b in baselines)
        beats.append(f"{METRIC_TITLES[metric]} {'beats' if ok else 'does NOT beat'} every baseline")
    numbers = "; ".join(f"{titles[n]}: MAE {overall[n]['mae']['mean']:.4f}, PSNR {overall[n]['psnr']['mean']:.2f} dB, "
                        f"SSIM {overall[n]['ssim']['mean']:.3f}" for n in [best] + baselines)
    return (f"Best trained method by brain MAE: **{titles[best]}** ({', '.join(beats)}, means over the test "
            f"subjects). In the brain mask: {numbers}.")


def write(study, training: dict, results: dict, results_path: Path, figures_dir: Path, command: str) -> dict:
    titles = {n: SHORT_TITLES.get(n, n) for n in study.methods}
    relative_figures = _relative(figures_dir, results_path.parent)
    parts = [
        "# Results: T1 -> T2 and T2 -> T1 synthesis on the shared paired subjects",
        "",
        f"Produced by one command (`{command}`) on {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        "numbers are regenerated by running it again (finished runs and evaluations are reused). "
        "Synthetic images are not for diagnosis.",
        "",
        protocol_section(study.settings, study.split, study.subjects, study.methods),
    ]
    if study.settings.quick:
        parts.append("> **Quick mode**: tiny networks, tiny budget: a smoke test of the tooling, not a result.\n")
    parts.append(f"> **How to read these numbers**: every trained method had {study.settings.minutes_per_model:g} CPU "
                 "minutes. The tables say what each method learns in that budget on this CPU, not how good it is "
                 "when trained to convergence; compare the trained rows with the *Real via model grid* row (the "
                 "ceiling of the grid) to see how far from converged they are. The shipped models are trained much "
                 "longer and have their own model cards in `Resources/Models/`.\n")
    for direction, by_method in results.items():
        by_method = dict(by_method)
        figure_cases = by_method.pop("_figure_cases")
        names = [n for n in study.methods if n in by_method]
        if not names:
            continue
        parts += [f"## {direction.upper().replace('-TO-', ' -> ')}", "",
                  "### Inside the brain mask (primary), mean ± SD over test subjects", "",
                  _metric_table(by_method, names, "mask", titles), "",
                  "### Per source (inside the brain): MAE / PSNR / SSIM", "",
                  _source_table(by_method, names, titles), "",
                  "### Whole slices containing brain (for comparison with unmasked papers)", "",
                  _metric_table(by_method, names, "whole_slice", titles), "",
                  "### GLCM texture, real vs synthetic (mean ± SD over test subjects; lesions: subjects with a "
                  "lesion mask)", "", _texture_table(by_method, names, titles), ""]
        closing = _closing(by_method, names, titles, study.methods)
        if closing:
            parts += [closing, ""]
        if figure_cases:
            subjects = []
            for subject_id, case in figure_cases.items():
                panels = {name: {"synthetic": p[f"{subject_id}/synthetic"], "relative_error": p[f"{subject_id}/relative_error"]}
                          for name in names for p in [study.panels(name, direction)] if f"{subject_id}/synthetic" in p}
                subjects.append({**case, "methods": panels})
            path = figures.comparison_grid(figures_dir / f"comparison-{direction}.png", subjects, titles,
                                           f"{direction}: test subjects (MSLUB, TCGA)")
            parts += [f"![{direction} comparison]({relative_figures}/{path.name})", "",
                      "Top rows: input | each method | real (all [0, 1], 1 = 99.5th percentile in the brain); "
                      "bottom rows: relative absolute error |synthetic - real| / (real + 0.01) inside the brain "
                      "(0 to 100 %, clipped).", ""]
            vae = by_method.get("vae", {}).get("uncertainty")
            if vae:
                subject_id = vae["subject"]
                p = study.panels("vae", direction)
                path = figures.uncertainty_figure(figures_dir / f"vae-uncertainty-{direction}.png",
                                                  figure_cases[subject_id], p[f"{subject_id}/synthetic"],
                                                  p[f"{subject_id}/std"], f"VAE {direction}, {vae['samples']} samples")
                corr = vae["std_error_correlation"]
                parts += [f"![VAE uncertainty {direction}]({relative_figures}/{path.name})", "",
                          f"VAE uncertainty ({vae['samples']} posterior samples, {subject_id}): mean SD in the brain "
                          f"{vae['mean_std_in_brain']:.4f}; correlation of SD with the absolute error "
                          f"{'-' if corr is None else f'{corr:.2f}'} (Pearson, brain voxels).", ""]
        runs = {}
        for (name, d), summary in training.items():
            if d != direction or (study.methods[name].two_way and direction != T1_TO_T2):
                continue  # a two-way run validates its t1-to-t2 generator: drawn with the t1-to-t2 runs
            run_dir = study.run_dir(study.methods[name], direction)
            if (run_dir / "metrics.jsonl").exists() and summary.get("steps_done"):
                runs[name] = {"curves": figures.read_curves(run_dir),
                              "seconds_per_step": summary.get("seconds", 0) / summary["steps_done"]}
        if runs:
            path = figures.training_curves(figures_dir / f"curves-{direction}.png", runs, titles,
                                           f"training curves ({direction} runs; two-way runs drawn under t1-to-t2)")
            parts += [f"![training curves {direction}]({relative_figures}/{path.name})", ""]
    names = [n for n in study.methods if any(n in by_method for by_method in results.values())]
    parts += ["## Inference speed (whole test volumes, CPU)", "",
              _speed_table(results, names, titles, study), "",
              "Foreground slices per CPU second of the process (whole volumes, including preprocessing and "
              f"resampling; batches of 8, float32, torch threads {study.settings.threads or 'default'}) on "
              f"{_machine()}. With one thread this is the wall-clock speed of one idle core.", ""]
    if training:
        parts += ["## Training runs", "", _training_table(training, titles), ""]
    parts += ["## Attribution", "", ATTRIBUTION, ""]
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text("\n".join(parts), encoding="utf-8")
    return results


def _relative(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
