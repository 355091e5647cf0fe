"""The study from data folder to ``docs/results.md``: split, train, evaluate, draw, write.

Study folder layout (``settings.out``)::

    protocol.json, split.json     the protocol, written before anything is trained
    trainval.csv                  manifest of the training + validation subjects (the trainer's input)
    calibration.json              measured seconds per step / validation per run (budget -> steps)
    cache/                        slice caches shared by all runs of a direction
    runs/<direction>/<method>/    training run folders (two-way methods: under t1-to-t2 only)
    runs/.../study_done.json      written when a run finished; such runs are never retrained
    lookup-<direction>.json       the fitted intensity lookup table
    eval/<direction>/<method>.json, .npz   per-subject scores, figure slices (reused when the
                                  checkpoint has not changed)

Every step is skipped when its output exists, so an interrupted study continues where it
stopped (an interrupted training run resumes from its last saved state).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from MRISynthesisLib.conventions import T1_TO_T2
from MRISynthesisLib.errors import InputError
from Training.data import check_pair, discover_subjects

from studies import training_budget as budget, subject_scoring as evaluate, comparison_protocol as protocol
from Training.baselines import IntensityLookup

#: Bumped when the scoring of a cached evaluation changes (3: automatic masks fill the small holes of
#: each slice at inference, so trained methods are scored again).
EVAL_VERSION = 3


def _json_safe(value):
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


class Study:
    def __init__(self, settings: protocol.StudySettings, method_names=None, directions=protocol.DIRECTIONS,
                 log=print):
        self.settings = settings
        self.out = Path(settings.out)
        all_methods = protocol.methods(settings.quick)
        unknown = [m for m in (method_names or []) if m not in all_methods]
        if unknown:
            raise InputError(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(all_methods)}")
        self.methods = {n: m for n, m in all_methods.items() if not method_names or n in method_names}
        bad = [d for d in directions if d not in protocol.DIRECTIONS]
        if bad:
            raise InputError(f"unknown direction(s) {', '.join(bad)}; valid: {', '.join(protocol.DIRECTIONS)}")
        self.directions = list(directions)
        self.log = log

    # -- protocol ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Discover subjects, fix the split and write the protocol (before any training)."""
        report = discover_subjects(self.settings.data)
        subjects = report.subjects
        if self.settings.subjects:
            wanted = set(self.settings.subjects)
            subjects = [s for s in subjects if s.id in wanted]
            missing = wanted - {s.id for s in subjects}
            if missing:
                raise InputError(f"subject(s) not found in {self.settings.data}: {', '.join(sorted(missing))}")
        for subject in subjects:
            check_pair(subject)
        self.subjects = {s.id: s for s in subjects}
        self.split = protocol.study_split(subjects, self.settings.split_seed, self.settings.n_val)
        split_path = self.out / "split.json"
        if split_path.exists():
            saved = json.loads(split_path.read_text())
            if {k: sorted(v) for k, v in saved.items()} != self.split:
                raise InputError(f"{split_path} holds a different split than the protocol gives for these subjects "
                                 "and settings; use a new --out folder")
        self._check_settings()
        protocol.write_protocol(self.settings, self.split, subjects, self.out)
        self.trainval = [self.subjects[i] for i in self.split["train"] + self.split["val"]]
        self.manifest = protocol.write_manifest(self.trainval, self.out / "trainval.csv")
        self.log(f"split: train {self.split['train']}\n       val {self.split['val']}\n       test {self.split['test']}")

    def _check_settings(self) -> None:
        """Finished runs are reused, so a study folder must keep the settings it started with."""
        path = self.out / "protocol.json"
        if not path.exists():
            return
        saved = json.loads(path.read_text())["settings"]
        current = self.settings.to_dict()
        changed = [k for k in protocol.FIXED_SETTINGS if saved.get(k) != current.get(k)]
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
            raise InputError(f"{self.out} was started with other settings ({details}); its finished runs would not "
                             "match: use a new --out folder or the original settings")

    # -- training ---------------------------------------------------------------------------

    def run_dir(self, method, direction: str) -> Path:
        train_direction = T1_TO_T2 if method.two_way else direction
        return self.out / "runs" / train_direction / method.name

    def training_config(self, method, direction: str, steps_per_epoch: int):
        from Training.config import load_config

        run_dir = self.run_dir(method, direction)
        return load_config(None, protocol.training_overrides(
            method, self.settings, run_dir.parent.name, self.manifest, run_dir.name, run_dir.parent,
            self.out / "cache", steps_per_epoch, len(self.trainval)))

    def calibrate(self, method, direction: str) -> dict:
        path = self.out / "calibration.json"
        calibrations = json.loads(path.read_text()) if path.exists() else {}
        key = f"{self.run_dir(method, direction).parent.name}/{method.name}"
        if key not in calibrations:
            config = self.training_config(method, direction, budget.MIN_STEPS_PER_EPOCH)
            calibrations[key] = budget.measure(config, self.out / "calibration" / method.name, log=self.log)
            path.write_text(json.dumps(calibrations, indent=2) + "\n")
        return calibrations[key]

    def train(self, method, direction: str) -> dict:
        """Train ``method`` for ``direction`` within the budget unless already done; the run summary."""
        from Training.run_folder import RunFolder
        from Training.train import train as train_run

        run_dir = self.run_dir(method, direction)
        done = run_dir / "study_done.json"
        if done.exists():
            return json.loads(done.read_text())
        calibration = self.calibrate(method, direction)
        steps = budget.steps_per_epoch(calibration, self.settings.minutes_per_model, self.settings.validations)
        config = self.training_config(method, direction, steps)
        resume = run_dir if RunFolder(run_dir).state.exists() else None
        if resume is None and run_dir.exists():
            shutil.rmtree(run_dir)  # started but never saved a state: nothing to keep
        self.log(f"training {method.name} ({run_dir.parent.name}): {self.settings.validations} x {steps} steps "
                 f"for {self.settings.minutes_per_model:g} min" + (" (resuming)" if resume else ""))
        started, cpu_started = time.perf_counter(), time.process_time()
        summary = train_run(config, resume_dir=resume, log=lambda *a: None)
        summary = {k: v for k, v in summary.items() if k != "conventions_text"}
        summary.update(calibration=calibration, budget_minutes=self.settings.minutes_per_model, steps_per_epoch=steps,
                       wall_seconds_this_session=time.perf_counter() - started,
                       cpu_seconds_this_session=time.process_time() - cpu_started, resumed=resume is not None)
        done.write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
        return summary

    # -- baselines --------------------------------------------------------------------------

    def lookup(self, direction: str) -> IntensityLookup:
        path = self.out / f"lookup-{direction}.json"
        if path.exists():
            return IntensityLookup.load(path)
        lookup = IntensityLookup()
        for subject_id in self.split["train"]:
            case = evaluate.TestCase(self.subjects[subject_id], direction)
            lookup.add(case.source_normalised, case.reference, case.mask)
        lookup.save(path)
        return lookup

    # -- evaluation -------------------------------------------------------------------------

    def checkpoint(self, method, direction: str) -> Path:
        return self.run_dir(method, direction) / "checkpoints" / f"best-{direction}.safetensors"

    def evaluate(self, method, direction: str, cases: dict) -> dict:
        """Per-subject scores of ``method`` (cached in eval/ while its checkpoint is unchanged)."""
        from MRISynthesisLib.checkpoint import read_metadata

        folder = self.out / "eval" / direction
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{method.name}.json"
        checkpoint = self.checkpoint(method, direction) if method.kind == "trained" else None
        identity = {"version": EVAL_VERSION, "test": self.split["test"],
                    "checkpoint": read_metadata(checkpoint).content_sha256 if checkpoint else method.kind}
        if path.exists():
            cached = json.loads(path.read_text())
            if cached.get("identity") == identity:
                return cached
        lookup = self.lookup(direction) if method.kind == "lookup" else None
        rows, panels, extra = [], {}, {}
        for subject_id, case in cases.items():
            synthetic, seconds = evaluate.predict(method, case, checkpoint, lookup,
                                                  (self.settings.slice_size, self.settings.pixel_spacing_mm))
            rows.append(evaluate.score(case, synthetic, seconds))
            if case.subject.source in protocol.FIGURE_SOURCES:
                for key, value in evaluate.figure_panels(case, synthetic).items():
                    panels[f"{subject_id}/{key}"] = value
                if method.family == "vae" and "uncertainty" not in extra:
                    result = evaluate.uncertainty(checkpoint, case)
                    panels[f"{subject_id}/std"] = result.pop("std_slice")
                    extra["uncertainty"] = {"subject": subject_id, **result}
            self.log(f"  {method.name} {direction} {subject_id}: MAE {rows[-1]['mask']['mae']:.4f} "
                     f"PSNR {rows[-1]['mask']['psnr']:.2f} SSIM {rows[-1]['mask']['ssim']:.4f}")
        if panels:
            np.savez_compressed(folder / f"{method.name}.npz", **{k.replace("/", "__"): v for k, v in panels.items()})
        result = {"identity": identity, "method": method.name, "direction": direction, "subjects": rows, **extra}
        path.write_text(json.dumps(_json_safe(result), indent=2) + "\n")
        return result

    def panels(self, method_name: str, direction: str) -> dict:
        path = self.out / "eval" / direction / f"{method_name}.npz"
        if not path.exists():
            return {}
        with np.load(path) as data:
            return {k.replace("__", "/"): data[k] for k in data.files}

    # -- everything -------------------------------------------------------------------------

    def calibrate_all(self) -> dict:
        """Measure every trained method (both directions); ``{(method, direction): calibration}``."""
        if self.settings.threads:
            import torch
            torch.set_num_threads(self.settings.threads)
        self.prepare()
        return {(m.name, d): self.calibrate(m, d) for d in self.directions for m in self.methods.values()
                if m.kind == "trained" and (d == T1_TO_T2 or not m.two_way)}

    def run(self, results_path, figures_dir, command: str = "") -> dict:
        """Prepare, then per direction and method: train (if needed), evaluate, rewrite the results page.

        The page is rewritten after every method, so an interrupted study still leaves the results
        of everything finished so far; returns all results."""
        from studies import comparison_report as report

        if self.settings.threads:
            import torch
            torch.set_num_threads(self.settings.threads)
        self.prepare()
        training, results = {}, {}
        for direction in self.directions:
            cases = {i: evaluate.TestCase(self.subjects[i], direction) for i in self.split["test"]}
            results[direction] = {"_figure_cases": {
                i: {"id": i, "source": c.subject.source, **evaluate.case_panels(c)}
                for i, c in cases.items() if c.subject.source in protocol.FIGURE_SOURCES}}
            for name, method in self.methods.items():
                if method.kind == "trained":
                    training[(name, direction)] = self.train(method, direction)
                results[direction][name] = self.evaluate(method, direction, cases)
                report.write(self, training, results, Path(results_path), Path(figures_dir), command)
        return results
