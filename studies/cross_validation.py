"""k-fold cross-validation of training recipes over every paired subject (issue 25).

Every model choice is made on all subjects instead of one test split: the subjects are dealt
into ``k`` folds by *patient* (both sessions of a patient in one fold), stratified by source,
with a fixed seed; each fold is tested once by a model trained on the other folds. A run is one
(direction, recipe, fold); its last checkpoint (no validation subjects, so nothing is chosen on
the test fold) is scored on the fold's test subjects through the real inference path with the
study's evaluation (:mod:`studies.subject_scoring`: brain-masked MAE / PSNR / SSIM in model units,
per subject), then reported per subject, per source and overall.

Study folder layout (``--out``, outside the repository, e.g. ``/work/runs/cv``)::

    all.csv                      manifest of every subject (the trainer's input)
    folds.json                   the fold of each subject (with source and patient), seed, k
    fold<i>/split.json           train = the other folds, val = [], test = fold i
    cache/fold<i>-<direction>-ctx<c>/   slice caches (one per fold, direction and 2.5D context)
    runs/<direction>/<recipe>/fold<i>/  training run (resumable); scores.json when scored,
                                 scores-external.json when scored on subjects outside the plan
    shipped/<model id>/scores-unseen.json  a shipped model on the plan subjects it neither trained
                                 nor was validated on (``unseen``)
    queue.txt                    the runs of ``queue``, one ``direction recipe fold minutes`` a line

A recipe name alone (``v4``) is a run for a CPU-minute budget at a constant learning rate (the
short ranking runs: equal CPU time for every recipe). ``v4@4000`` is the same recipe trained as
it ships: its own learning-rate policy over 4000 optimisation steps, the decay stretched with the
run (v4's 16 of 40 epochs become the last 40 % of the steps), resumable state every 250 steps;
its ``minutes`` is then a CPU-minute cap (0 = none). Its runs are ``runs/<direction>/v4@4000/``.

Commands (run from the repository root)::

    python -m studies.cross_validation plan --out /work/runs/cv --data ../shared/data/paired --folds 5
    python -m studies.cross_validation queue --out /work/runs/cv        # train + score every queued run
    python -m studies.cross_validation table --out /work/runs/cv        # markdown tables
    python -m studies.cross_validation external --out /work/runs/cv --data PREPARED_PAIRS  # held out of every fold
    python -m studies.cross_validation unseen --out /work/runs/cv   # shipped models on plan subjects they never saw

``queue`` re-reads ``queue.txt`` after every run (edit it while the queue runs), skips scored runs
and resumes an interrupted run from its last saved state; each training and scoring is its own
subprocess with one torch thread, so its CPU time is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from MRISynthesisLib.atomic import atomic_path
from MRISynthesisLib.checkpoint import file_sha256
from MRISynthesisLib.errors import InputError, MRISynthesisError

DIRECTIONS = ("t1-to-t2", "t2-to-t1")
#: the recipe of today's default model of each direction: every other recipe is compared with it
DEFAULT_RECIPE = {"t1-to-t2": "v4", "t2-to-t1": "v2"}
#: optimisation steps of one epoch in a scheduled run (``recipe@steps``)
SCHEDULED_EPOCH_STEPS = 100
#: a scheduled run saves its resumable state this often (steps)
SCHEDULED_SAVE_EVERY = 250
REPO = Path(__file__).resolve().parent.parent

#: recipe name -> (config file, overrides, title). The CV overrides (split, budget, one thread; a
#: constant learning rate unless the run is scheduled, ``recipe@steps``) are applied on top of every recipe.
RECIPES = {
    "v5c": ("configs/supervised-v5-candidate.yaml", {},
            "v5 candidate: unet_256 ngf 32, whole slices, 2.5D +-1, L1 + SSIM in the brain, site aug, EMA"),
    "v5d": ("configs/supervised-v5-candidate-crops.yaml", {},
            "v5 candidate 2: unet_128 ngf 16 (5.2 MB fp16) on 128 px crops, 2.5D +-1, L1 + SSIM in the brain, site aug, EMA"),
    "v5e": ("configs/supervised-v5-candidate.yaml", {"model.generator_options": {"ngf": 16, "dropout": False}},
            "v5 candidate 3: unet_256 ngf 16 (6.8 MB fp16) on whole slices (the whole slice's lesion in view), "
            "2.5D +-1, L1 + SSIM in the brain, site aug, EMA"),
    "v4": ("configs/supervised-v4.yaml", {},
           "v4 (T1->T2 default): resunet ngf 16 on 128 px crops, L1 + SSIM, site aug without gamma, EMA"),
    "v2": ("configs/supervised-v2.yaml", {},
           "v2 (T2->T1 default): resunet ngf 16 (batch norm) on 128 px crops, L1 + SSIM, site aug, EMA"),
    "v1": ("configs/supervised.yaml", {"model.generator_options": {"ngf": 24, "dropout": False}},
           "v1: unet_256 ngf 24, whole slices, L1 in the brain, basic aug"),
}

#: external scores of a shipped model are reported under this prefix and its catalog id
SHIPPED_PREFIX = "shipped:"

#: a subject id ending in a session/study/timepoint number belongs to the patient before it
_SESSION = re.compile(r"^(?P<patient>.+?)[-_](?:study|ses|session|tp|timepoint|visit)[-_]?\d+$", re.IGNORECASE)


def patient_of(subject_id: str) -> str:
    """The patient a subject (one session) belongs to: the id without a trailing session suffix
    (``MSLUB-patient01-study2`` -> ``MSLUB-patient01``; ``sub-01_ses-2`` -> ``sub-01``)."""
    match = _SESSION.match(subject_id)
    return match.group("patient") if match else subject_id


def make_folds(subjects, k: int = 5, seed: int = 0) -> list[list[str]]:
    """Deal ``subjects`` (``(id, source)`` pairs or objects with ``.id``/``.source``) into ``k`` folds.

    Patients (:func:`patient_of`) are never split. Stratified by source: sources are dealt
    largest first; each patient goes to the fold with the fewest subjects of its source, then the
    fewest subjects overall, then a seeded random order, so a source with ``n`` patients lands in
    ``min(n, k)`` folds and fold sizes differ by little. Deterministic for a seed whatever the
    input order; returns the folds' sorted subject ids."""
    pairs = sorted((s, "other") if isinstance(s, str) else
                   ((s[0], s[1]) if isinstance(s, tuple) else (s.id, str(getattr(s, "source", "other"))))
                   for s in subjects)
    ids = [i for i, _ in pairs]
    if len(set(ids)) != len(ids):
        raise InputError("subject ids must be unique")
    if k < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {k}")
    patients: dict[str, list[str]] = {}
    source_of: dict[str, str] = {}
    for subject_id, source in pairs:
        patient = patient_of(subject_id)
        patients.setdefault(patient, []).append(subject_id)
        source_of.setdefault(patient, source)  # a patient's sessions share its first session's source
    if len(patients) < k:
        raise InputError(f"{len(patients)} patient(s) are too few for {k} folds")
    rng = np.random.default_rng(seed)
    by_source: dict[str, list[str]] = {}
    for patient in sorted(patients):
        by_source.setdefault(source_of[patient], []).append(patient)
    folds: list[list[str]] = [[] for _ in range(k)]
    per_source = {source: [0] * k for source in by_source}
    for source in sorted(by_source, key=lambda s: (-len(by_source[s]), s)):
        members = by_source[source]
        for index in rng.permutation(len(members)):
            patient = members[index]
            tie = rng.random(k)
            fold = min(range(k), key=lambda f: (per_source[source][f], len(folds[f]), tie[f]))
            folds[fold].extend(patients[patient])
            per_source[source][fold] += len(patients[patient])
    return [sorted(f) for f in folds]


def fold_splits(folds: list[list[str]]) -> list[dict]:
    """One split per fold: ``test`` = the fold, ``train`` = every other fold, ``val`` = [] (the
    last checkpoint is scored; nothing is selected on held-out subjects)."""
    return [{"train": sorted(i for j, other in enumerate(folds) if j != f for i in other), "val": [],
             "test": list(fold)} for f, fold in enumerate(folds)]


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1, default=float) + "\n", encoding="utf-8")


def _discover(roots):
    from Training.data import discover_subjects

    subjects = []
    for root in roots:
        subjects += discover_subjects(root).subjects
    seen = set()
    for s in subjects:
        if s.id in seen:
            raise InputError(f"subject id {s.id} found in two data folders")
        seen.add(s.id)
    return subjects


#: ``plan --precision``: the training precision of every run of a study
PLAN_PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str) -> str:
    """``auto``: bf16 autocast (with channels-last) where the CPU has native bf16 (avx512_bf16 /
    amx_bf16), else fp32 (PyTorch emulates bf16 about 10x slower on other CPUs)."""
    if precision not in PLAN_PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PLAN_PRECISIONS)}")
    from MRISynthesisLib.device import CpuDevice, resolve_precision as inference_precision

    return inference_precision(precision, CpuDevice()).name  # the project's one rule for 'auto' on a CPU


def plan_precision(out: Path) -> str:
    """The study's training precision (plans written before it existed trained in fp32)."""
    return json.loads((out / "folds.json").read_text()).get("precision", "fp32")


def plan(out: Path, roots, k: int, seed: int, precision: str = "fp32") -> dict:
    """Write ``all.csv``, ``folds.json`` and ``fold<i>/split.json``; refuses to change an existing
    plan (its subjects, folds or training precision)."""
    from Training.data import check_pair, write_split
    from studies import comparison_protocol as protocol

    precision = resolve_precision(precision)
    subjects = _discover(roots)
    for subject in subjects:
        check_pair(subject)
    folds = make_folds(subjects, k, seed)
    source = {s.id: s.source for s in subjects}
    data = {"k": k, "seed": seed, "data": [str(r) for r in roots], "precision": precision,
            "folds": [[{"id": i, "source": source[i], "patient": patient_of(i)} for i in fold] for fold in folds]}
    path = out / "folds.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["folds"] != data["folds"] or saved.get("precision", "fp32") != precision:
            raise InputError(f"{path} holds other folds or another training precision "
                             f"({saved.get('precision', 'fp32')}); use a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    protocol.write_manifest(subjects, out / "all.csv")
    for f, split in enumerate(fold_splits(folds)):
        (out / f"fold{f}").mkdir(exist_ok=True)
        write_split(split, out / f"fold{f}" / "split.json")
    _write_json(path, data)
    return data


def parse_recipe(name: str) -> tuple[str, int | None]:
    """``'v4'`` -> ``('v4', None)`` (a CPU-minute budget, constant learning rate); ``'v4@4000'`` ->
    ``('v4', 4000)`` (the recipe's own schedule over 4000 steps). Refuses unknown recipes."""
    recipe, at, steps = name.partition("@")
    if recipe not in RECIPES:
        raise InputError(f"unknown recipe {recipe!r}; one of {', '.join(RECIPES)} (optionally @STEPS)")
    if not at:
        return recipe, None
    if not steps.isdigit() or int(steps) <= 0 or int(steps) % SCHEDULED_EPOCH_STEPS:
        raise InputError(f"{name!r}: the steps after '@' must be a positive multiple of {SCHEDULED_EPOCH_STEPS}")
    return recipe, int(steps)


def schedule_overrides(config, steps: int) -> dict:
    """Overrides that train ``config``'s recipe for ``steps`` steps with its own learning-rate
    policy, the decay (``optim.decay_epochs`` of ``train.epochs``) stretched to the same fraction."""
    epochs = steps // SCHEDULED_EPOCH_STEPS
    decay = max(1, round(config.optim.decay_epochs * epochs / max(1, config.train.epochs)))
    return {"train.epochs": epochs, "train.steps_per_epoch": SCHEDULED_EPOCH_STEPS,
            "optim.decay_epochs": min(decay, epochs), "train.checkpoint_every": SCHEDULED_SAVE_EVERY}


def run_dir(out: Path, direction: str, recipe: str, fold: int) -> Path:
    return out / "runs" / direction / recipe / f"fold{fold}"


def training_command(out: Path, direction: str, recipe: str, fold: int, minutes: float) -> list[str]:
    """``python -m Training`` for a run: resume when a state exists, else start with the recipe.
    ``recipe@steps`` (:func:`parse_recipe`) keeps the recipe's schedule; ``minutes`` then caps it."""
    from Training.config import load_config
    from Training.run_folder import RunFolder

    folder = run_dir(out, direction, recipe, fold)
    if RunFolder(folder).state.exists():  # the queue's budget wins over the one the run started with
        return [sys.executable, "-m", "Training", "--resume", str(folder), f"train.max_cpu_minutes={minutes}"]
    base, steps = parse_recipe(recipe)
    config_file, extra, _ = RECIPES[base]
    config = load_config(str(REPO / config_file), [])
    context = config.data.context_slices
    budget = (schedule_overrides(config, steps) if steps else
              {"optim.lr_policy": "constant", "train.epochs": 100000, "train.steps_per_epoch": 25,
               "train.checkpoint_every": 0})
    values = {"name": folder.name, "output_dir": str(folder.parent), "device": "cpu", "seed": 0,
              "data.manifest": str(out / "all.csv"), "data.split_file": str(out / f"fold{fold}" / "split.json"),
              "data.direction": direction, "data.cache_dir": str(out / "cache" / f"fold{fold}-{direction}-ctx{context}"),
              **budget, "train.threads": 1, "train.max_cpu_minutes": minutes,
              **precision_overrides(plan_precision(out)), **extra}
    return [sys.executable, "-m", "Training", "--config", str(REPO / config_file),
            *[f"{key}={json.dumps(value)}" for key, value in values.items()]]


def precision_overrides(precision: str) -> dict:
    """Training settings of a study precision: bf16 autocast always with channels-last (the fast
    path of CPUs with native bf16); fp32 keeps each recipe's own memory format."""
    if precision == "bf16":
        return {"train.precision": "bf16", "train.channels_last": True}
    return {"train.precision": "fp32"}


def score_run(out: Path, direction: str, recipe: str, fold: int) -> dict:
    """Score a finished run's last checkpoint on its fold's test subjects; writes ``scores.json``."""
    from Training.data import read_split

    folder = run_dir(out, direction, recipe, fold)
    by_id = {s.id: s for s in _manifest_subjects(out)}
    test = [by_id[i] for i in read_split(out / f"fold{fold}" / "split.json")["test"]]
    rows = _score_subjects(_checkpoint(folder, direction), test, direction, f"{recipe} {direction} fold{fold}")
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else {}
    result = {"direction": direction, "recipe": recipe, "fold": fold, "checkpoint": str(_checkpoint(folder, direction)),
              "steps": _steps(folder), "train_cpu_minutes": _train_minutes(folder),
              "precision": plan_precision(out), "rows": rows, **summary}
    _write_json(folder / "scores.json", result)
    return result


def external_subjects(out: Path, roots) -> list:
    """The paired subjects of ``roots``, refused when any is in the plan (it would be a training
    subject of every other fold): these are held out of every fold."""
    subjects = _discover(roots)
    planned = {s.id for s in _manifest_subjects(out)}
    planned_files = {str(Path(s.t1).resolve()) for s in _manifest_subjects(out)}
    for s in subjects:
        if s.id in planned or str(Path(s.t1).resolve()) in planned_files:
            raise InputError(f"{s.id} is in the plan's subjects ({out / 'all.csv'}): external subjects must be "
                             "held out of every fold")
    return subjects


def score_external(out: Path, roots, shipped: bool = False) -> list[Path]:
    """Score every scored run's last checkpoint on the paired subjects of ``roots`` (subjects outside
    the plan, e.g. pairs prepared after it, so held out of every fold); writes
    ``scores-external.json`` beside ``scores.json``. With ``shipped``, also every shipped model of
    the catalog (trained on subjects of the plan's data, never on these), into
    ``shipped/<model id>/scores-external.json``. Resumable: a checkpoint (by hash) already scored on
    the same subjects is skipped; a run trained further since is scored again."""
    from MRISynthesisLib.catalog import list_models

    subjects = external_subjects(out, roots)
    jobs = []  # (target, direction, recipe, fold, checkpoint, steps)
    for path in sorted((out / "runs").glob("*/*/fold*/scores.json")):
        run = json.loads(path.read_text())
        jobs.append((path.parent / "scores-external.json", run["direction"], run["recipe"], run["fold"],
                     _checkpoint(path.parent, run["direction"]), run.get("steps")))
    if shipped:
        for model in list_models():
            if not model.is_users:
                jobs.append((out / "shipped" / model.id / "scores-external.json", model.direction,
                             SHIPPED_PREFIX + model.id, None, model.path(), None))
    ids = sorted(s.id for s in subjects)
    written = []
    for target, direction, recipe, fold, checkpoint, steps in jobs:
        sha256 = file_sha256(checkpoint)
        if _scored_already(target, sha256, ids):
            continue
        where = f"fold{fold}" if fold is not None else "(trained on the plan's data)"
        rows = _score_subjects(checkpoint, subjects, direction, f"{recipe} {direction} {where} (external)")
        _write_json(target, {"direction": direction, "recipe": recipe, "fold": fold, "sha256": sha256,
                             "steps": steps, "data": [str(r) for r in roots], "rows": rows})
        written.append(target)
    return written


def unseen_subjects(out: Path, metadata) -> list:
    """The plan's subjects a shipped model neither trained nor was validated on (the subject ids its
    checkpoint lists in ``training_data``); refused when it lists none (nothing to trust)."""
    data = metadata.training_data or {}
    seen = set(data.get("train_subject_ids") or []) | set(data.get("val_subject_ids") or [])
    if not data.get("train_subject_ids"):
        raise InputError(f"{metadata.model_id or 'the model'} lists no training subjects: its unseen subjects are unknown")
    return [s for s in _manifest_subjects(out) if s.id not in seen]


def score_unseen(out: Path, models=None) -> list[Path]:
    """Score each shipped model of the catalog (or ``models``: ``(id, direction, path)``) on the plan's
    subjects it never saw (:func:`unseen_subjects`), into ``shipped/<model id>/scores-unseen.json``:
    today's models compared, subject by subject, with the recipes' fold models, which never saw those
    subjects either. Resumable: a model already scored (same file hash, same subjects) is skipped."""
    from MRISynthesisLib.catalog import list_models
    from MRISynthesisLib.checkpoint import read_metadata

    if models is None:
        models = [(m.id, m.direction, m.path()) for m in list_models() if not m.is_users]
    written = []
    for model_id, direction, path in models:
        metadata = read_metadata(path)
        subjects = unseen_subjects(out, metadata)
        target = out / "shipped" / model_id / "scores-unseen.json"
        sha256 = file_sha256(path)
        if _scored_already(target, sha256, sorted(s.id for s in subjects)):
            continue
        rows = _score_subjects(path, subjects, direction, f"{model_id} (shipped; never saw these)")
        _write_json(target, {"direction": direction, "recipe": SHIPPED_PREFIX + model_id, "sha256": sha256,
                             "rows": rows})
        written.append(target)
    return written


def _scored_already(target: Path, sha256: str, ids: list[str]) -> bool:
    """Whether ``target`` holds the scores of the file with ``sha256`` on exactly the subjects ``ids`` (sorted)."""
    if not target.exists():
        return False
    done = json.loads(target.read_text())
    return done.get("sha256") == sha256 and sorted(r["subject"] for r in done["rows"]) == ids


def _checkpoint(folder: Path, direction: str) -> Path:
    checkpoint = folder / "checkpoints" / f"last-{direction}.safetensors"
    if not checkpoint.exists():
        raise InputError(f"{checkpoint} does not exist: train the run first")
    return checkpoint


def _score_subjects(checkpoint: Path, subjects, direction: str, label: str) -> list[dict]:
    """One row per subject: the checkpoint through the Synthesizer, scored inside the brain."""
    import torch

    from studies import subject_scoring as evaluate, comparison_protocol as protocol

    torch.set_num_threads(1)
    method = protocol.Method("checkpoint", "a trained checkpoint", "trained")
    rows = []
    for subject in subjects:
        case = evaluate.TestCase(subject, direction)
        synthetic, seconds = evaluate.predict(method, case, checkpoint)
        row = evaluate.score(case, synthetic, seconds)
        rows.append({k: row[k] for k in ("subject", "source", "mask", "slices", "seconds", "slices_per_second")})
        print(f"  {label} {subject.id}: PSNR {row['mask']['psnr']:.2f} "
              f"SSIM {row['mask']['ssim']:.4f} MAE {row['mask']['mae']:.4f}", flush=True)
    return rows


def _manifest_subjects(out: Path):
    from Training.data.discovery import read_manifest

    return read_manifest(out / "all.csv").subjects


def _state(folder: Path) -> dict:
    from Training.run_folder import RunFolder
    from Training.state import load_state

    path = RunFolder(folder).state
    return load_state(path, map_location="cpu") if path.exists() else {}


def _steps(folder: Path) -> int:
    return int(_state(folder).get("global_step", 0))


def _train_minutes(folder: Path) -> float:
    return float(_state(folder).get("train_cpu_seconds", 0.0)) / 60.0


def read_queue(out: Path, name: str = "queue.txt") -> list[tuple[str, str, int, float]]:
    """``queue.txt`` (or another file of the study folder): ``direction recipe fold minutes`` per
    line; '#' starts a comment."""
    entries = []
    path = out / name
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].split()
        if not line:
            continue
        if len(line) != 4 or line[0] not in DIRECTIONS:
            raise InputError(f"{path}:{number}: expected 'direction recipe fold minutes', got {' '.join(line)!r}")
        try:
            parse_recipe(line[1])
        except InputError as error:
            raise InputError(f"{path}:{number}: {error}") from None
        entries.append((line[0], line[1], int(line[2]), float(line[3])))
    return entries


def run_queue(out: Path, name: str = "queue.txt") -> None:
    """Train and score every queued run in order (re-reading the queue after each); resumable.
    Two queues of one study folder (``--queue``) run side by side, one thread each, when no run is in both."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done: set = set()
    while True:
        pending = [e for e in read_queue(out, name) if e[:3] not in done
                   and not (run_dir(out, *e[:3]) / "scores.json").exists()]
        if not pending:
            print("queue empty", flush=True)
            return
        direction, recipe, fold, minutes = pending[0]
        folder = run_dir(out, direction, recipe, fold)
        print(f"== {direction} {recipe} fold{fold} ({minutes:g} CPU min)", flush=True)
        if _needs_training(folder, recipe, minutes):
            code = subprocess.run(training_command(out, direction, recipe, fold, minutes), cwd=REPO, env=env).returncode
            if code != 0:
                print(f"training failed ({code}); skipping {direction} {recipe} fold{fold}", flush=True)
                done.add((direction, recipe, fold))
                continue
        code = subprocess.run([sys.executable, "-m", "studies.cross_validation", "score", "--out", str(out),
                               "--direction", direction, "--recipe", recipe, "--fold", str(fold)],
                              cwd=REPO, env=env).returncode
        if code != 0:
            print(f"scoring failed ({code})", flush=True)
        done.add((direction, recipe, fold))


def _needs_training(folder: Path, recipe: str, minutes: float) -> bool:
    """An unfinished run (no report.md) trains on; a finished one trains further when the queue gives
    it more CPU minutes (a minute budget, or a scheduled run stopped by its cap before its steps)."""
    if not (folder / "report.md").exists():
        return True
    more_minutes = _train_minutes(folder) < minutes - 0.05
    steps = parse_recipe(recipe)[1]
    if steps is None:
        return more_minutes
    return _steps(folder) < steps and (minutes == 0 or more_minutes)


# -- tables -------------------------------------------------------------------------------------

def collect(out: Path) -> dict:
    """``{direction: {recipe: [scores.json of each fold]}}`` of every scored run."""
    found: dict = {}
    for path in sorted((out / "runs").glob("*/*/fold*/scores.json")):
        data = json.loads(path.read_text())
        found.setdefault(data["direction"], {}).setdefault(data["recipe"], []).append(data)
    return found


def _fmt(values, digits):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def table(out: Path) -> str:
    """Markdown: per direction, per subject (recipes side by side), per source and overall, the
    paired difference of each recipe to the direction's default recipe, and the runs (steps, CPU minutes)."""
    folds = json.loads((out / "folds.json").read_text())
    lines = []
    for direction, recipes in sorted(collect(out).items()):
        names = _ordered(recipes, direction)
        rows = {r: {row["subject"]: row for run in recipes[r] for row in run["rows"]} for r in names}
        fold_of = {s["id"]: f for f, fold in enumerate(folds["folds"]) for s in fold}
        source = {s["id"]: s["source"] for fold in folds["folds"] for s in fold}
        subjects = sorted(set().union(*[set(v) for v in rows.values()]), key=lambda i: (source[i], i))
        lines += [f"### {direction}: PSNR dB / SSIM inside the brain, per held-out subject", "",
                  "| subject | source | fold | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
        for i in subjects:
            cells = [f"{rows[r][i]['mask']['psnr']:.2f} / {rows[r][i]['mask']['ssim']:.3f}" if i in rows[r] else "–"
                     for r in names]
            lines.append(f"| {i} | {source[i]} | {fold_of[i]} | " + " | ".join(cells) + " |")
        lines += ["", f"{direction}: mean ± SD over subjects (PSNR dB / SSIM / MAE); n = scored subjects", "",
                  "| group | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for group in sorted({source[i] for i in subjects}) + ["overall"]:
            cells = []
            for r in names:
                members = [row for i, row in rows[r].items() if group == "overall" or source[i] == group]
                cells.append(" / ".join(_fmt([m["mask"][k] for m in members], d) for k, d in
                                        (("psnr", 2), ("ssim", 3), ("mae", 4))) + f" (n={len(members)})")
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
        pairs = [(r, base) for r in names for base in [_baseline(r, names, direction)] if base and base != r]
        if pairs:
            lines += ["", f"{direction}: paired difference to the default's recipe (a scheduled run to the "
                          "default's longest scheduled run) on the subjects both scored (mean ± SD)", "",
                      "| recipe | n | ΔPSNR dB | ΔSSIM | worst source ΔPSNR |", "|---|---|---|---|---|"]
            for r, base in pairs:
                common = sorted(set(rows[r]) & set(rows[base]))
                if not common:
                    continue
                dp = [rows[r][i]["mask"]["psnr"] - rows[base][i]["mask"]["psnr"] for i in common]
                ds = [rows[r][i]["mask"]["ssim"] - rows[base][i]["mask"]["ssim"] for i in common]
                lines.append(f"| {r} − {base} | {len(common)} | {_fmt(dp, 2)} | {_fmt(ds, 3)} | "
                             f"{_worst_source(dp, [source[i] for i in common])} |")
        lines += ["", f"{direction}: runs (training precision, optimisation steps, training CPU minutes, "
                      "scoring slices per CPU-s)", "",
                  "| recipe | fold | precision | steps | train CPU min | slices / CPU-s |", "|---|---|---|---|---|---|"]
        for r in names:
            for run in sorted(recipes[r], key=lambda x: x["fold"]):
                speed = [row["slices_per_second"] for row in run["rows"] if row.get("slices_per_second")]
                lines.append(f"| {r} | {run['fold']} | {run.get('precision', 'fp32')} | {run['steps']} | "
                             f"{run['train_cpu_minutes']:.1f} | "
                             f"{_fmt(speed, 1)} |")
        lines.append("")
    return "\n".join(lines + external_table(out) + unseen_table(out))


def _worst_source(differences, sources) -> str:
    """'SOURCE +x.xx': the source with the lowest mean of ``differences`` (one per subject, with its source)."""
    per_source: dict = {}
    for source, d in zip(sources, differences):
        per_source.setdefault(source, []).append(d)
    worst = min(per_source, key=lambda k: np.mean(per_source[k]))
    return f"{worst} {np.mean(per_source[worst]):+.2f}"


def _ordered(recipes, direction: str) -> list[str]:
    """The run names of ``recipes`` in table order: by recipe as in RECIPES, the default's first;
    each recipe's minute-budget runs before its scheduled runs (by steps)."""
    order = list(RECIPES)
    def key(name):
        base, steps = parse_recipe(name)
        return (base != DEFAULT_RECIPE[direction], order.index(base), steps or 0)
    def known(name):
        try:
            return not name.startswith(SHIPPED_PREFIX) and bool(parse_recipe(name))
        except InputError:  # a recipe no longer in RECIPES
            return False
    return sorted(filter(known, recipes), key=key)


def _baseline(name: str, names, direction: str) -> str | None:
    """What a run is compared with: the default's minute-budget recipe for a minute-budget run, the
    default's longest scheduled run for a scheduled one (None when that is not in ``names``)."""
    default = DEFAULT_RECIPE[direction]
    if parse_recipe(name)[1] is None:
        return default if default in names else None
    scheduled = [r for r in names if parse_recipe(r)[0] == default and parse_recipe(r)[1]]
    return max(scheduled, key=lambda r: parse_recipe(r)[1]) if scheduled else None


def external_table(out: Path) -> list[str]:
    """Markdown lines for the runs' ``scores-external.json``: per external subject, each recipe's
    mean over its fold models (every fold's model is an independent model that never saw the
    subject), and the paired difference to the default recipe over the folds both scored."""
    found: dict = {}
    paths = sorted((out / "runs").glob("*/*/fold*/scores-external.json")) + sorted(
        (out / "shipped").glob("*/scores-external.json"))
    for path in paths:
        data = json.loads(path.read_text())
        for row in data["rows"]:
            found.setdefault(data["direction"], {}).setdefault(data["recipe"], {}).setdefault(
                row["subject"], {})[data["fold"]] = row["mask"]
    lines = []
    for direction, recipes in sorted(found.items()):
        names = _ordered(recipes, direction)
        names += sorted(r for r in recipes if r.startswith(SHIPPED_PREFIX))  # one model each, no fold pairs
        if not names:
            continue
        subjects = sorted(set().union(*[set(v) for v in recipes.values()]))
        lines += [f"### {direction}: subjects held out of every fold (PSNR dB / SSIM inside the brain, "
                  "mean over the fold models; n = models)", "",
                  "| subject | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for i in subjects:
            cells = []
            for r in names:
                scores = list(recipes[r].get(i, {}).values())
                cells.append(f"{_fmt([m['psnr'] for m in scores], 2)} / {_fmt([m['ssim'] for m in scores], 3)} "
                             f"(n={len(scores)})" if scores else "–")
            lines.append(f"| {i} | " + " | ".join(cells) + " |")
        for r in names:
            base = None if r.startswith(SHIPPED_PREFIX) else _baseline(r, names, direction)
            if base is None or base == r:
                continue
            dp, ds = [], []
            for i in subjects:  # per subject: the mean over the folds both recipes scored
                both = sorted(set(recipes[r].get(i, {})) & set(recipes[base].get(i, {})))
                if both:
                    dp.append(np.mean([recipes[r][i][f]["psnr"] - recipes[base][i][f]["psnr"] for f in both]))
                    ds.append(np.mean([recipes[r][i][f]["ssim"] - recipes[base][i][f]["ssim"] for f in both]))
            if dp:
                lines += ["", f"{r} − {base} over {len(dp)} subjects (each the mean over the folds both scored): "
                              f"ΔPSNR {_fmt(dp, 2)} dB, ΔSSIM {_fmt(ds, 3)}"]
        lines.append("")
    return lines


def unseen_table(out: Path) -> list[str]:
    """Markdown lines: each shipped model (``scores-unseen.json``) against every recipe's fold models on
    the plan subjects the shipped model never saw; the paired difference recipe − shipped model."""
    runs = collect(out)
    lines = []
    for path in sorted((out / "shipped").glob("*/scores-unseen.json")):
        shipped = json.loads(path.read_text())
        direction, name = shipped["direction"], shipped["recipe"]
        theirs = {row["subject"]: row["mask"] for row in shipped["rows"]}
        recipes = runs.get(direction, {})
        lines += [f"### {direction}: {name.removeprefix(SHIPPED_PREFIX)} (shipped) against the recipes on the "
                  f"{len(theirs)} plan subjects it never saw", "",
                  "| recipe | n | recipe PSNR dB / SSIM | shipped PSNR dB / SSIM | Δ PSNR dB | Δ SSIM | worst source Δ PSNR |",
                  "|---|---|---|---|---|---|---|"]
        for recipe in _ordered(recipes, direction):
            ours = {row["subject"]: (row["mask"], row["source"]) for run in recipes[recipe] for row in run["rows"]}
            common = sorted(set(ours) & set(theirs))
            if not common:
                continue
            dp = [ours[i][0]["psnr"] - theirs[i]["psnr"] for i in common]
            ds = [ours[i][0]["ssim"] - theirs[i]["ssim"] for i in common]
            lines.append(f"| {recipe} | {len(common)} | {_fmt([ours[i][0]['psnr'] for i in common], 2)} / "
                         f"{_fmt([ours[i][0]['ssim'] for i in common], 3)} | {_fmt([theirs[i]['psnr'] for i in common], 2)} / "
                         f"{_fmt([theirs[i]['ssim'] for i in common], 3)} | {_fmt(dp, 2)} | {_fmt(ds, 3)} | "
                         f"{_worst_source(dp, [ours[i][1] for i in common])} |")
        lines.append("")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.cross_validation", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="fold the subjects and write the split files")
    p.add_argument("--out", required=True)
    p.add_argument("--data", nargs="+", default=["../shared/data/paired"], help="folders of paired subject folders")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=PLAN_PRECISIONS, default="auto",
                   help="training precision of every run: auto = bf16 + channels-last where the CPU has "
                        "native bf16, else fp32")
    for name in ("queue", "table"):
        sub.add_parser(name).add_argument("--out", required=True)
    sub.choices["queue"].add_argument("--queue", default="queue.txt",
                                      help="the queue file in the study folder (a second driver: its own file)")
    p = sub.add_parser("external", help="score every scored run on paired subjects outside the plan")
    p.add_argument("--out", required=True)
    p.add_argument("--data", nargs="+", required=True, help="folders of paired subject folders, none in the plan")
    p.add_argument("--shipped", action="store_true", help="also score every shipped model on them")
    sub.add_parser("unseen", help="score every shipped model on the plan subjects it never trained or "
                                  "was validated on").add_argument("--out", required=True)
    for name in ("train", "score"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True)
        p.add_argument("--direction", choices=DIRECTIONS, required=True)
        p.add_argument("--recipe", required=True,
                       help=f"one of {', '.join(RECIPES)}; RECIPE@STEPS: its own learning-rate schedule over STEPS steps")
        p.add_argument("--fold", type=int, required=True)
        if name == "train":
            p.add_argument("--minutes", type=float, default=4.0,
                           help="CPU minutes of training steps (a cap for RECIPE@STEPS; 0 = none)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if args.command in ("train", "score"):
            parse_recipe(args.recipe)  # refuses an unknown recipe or step count before anything runs
        if args.command == "plan":
            data = plan(out, [Path(d) for d in args.data], args.folds, args.seed, args.precision)
            print(f"training precision: {data['precision']}")
            for f, fold in enumerate(data["folds"]):
                print(f"fold {f}: " + ", ".join(f"{s['id']} [{s['source']}]" for s in fold))
        elif args.command == "queue":
            run_queue(out, args.queue)
        elif args.command == "external":
            for path in score_external(out, [Path(d) for d in args.data], args.shipped):
                print(f"wrote {path}")
        elif args.command == "unseen":
            for path in score_unseen(out):
                print(f"wrote {path}")
        elif args.command == "table":
            print(table(out))
        elif args.command == "train":
            return subprocess.run(training_command(out, args.direction, args.recipe, args.fold, args.minutes),
                                  cwd=REPO).returncode
        else:
            score_run(out, args.direction, args.recipe, args.fold)
    except MRISynthesisError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
