"""``python -m studies.compare_models``: train every method within one budget, evaluate, write docs/results.md."""

from __future__ import annotations

import argparse
import shlex
import sys

from MRISynthesisLib.cli import exit_status

from studies.comparison_protocol import DIRECTIONS, StudySettings, methods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m studies.compare_models",
        description="The comparison study: split, train each method within the same budget, evaluate on the test "
                    "subjects, write docs/results.md and its figures. Finished runs and evaluations are reused.")
    parser.add_argument("--data", default="../shared/data/paired", help="folder of paired subject folders")
    parser.add_argument("--out", default="runs/study", help="study folder (runs, caches, evaluations)")
    parser.add_argument("--minutes-per-model", type=float, default=StudySettings.minutes_per_model,
                        help="training minutes per run, validations included, measured as CPU minutes of the "
                             "process (= wall-clock minutes of one idle core with --threads 1) "
                             f"(default {StudySettings.minutes_per_model:g}, as in docs/results.md)")
    parser.add_argument("--families", "--methods", dest="methods", default="",
                        help=f"comma-separated subset of: {', '.join(methods())} (default: all)")
    parser.add_argument("--directions", default=",".join(DIRECTIONS), help="comma-separated directions")
    parser.add_argument("--slice-size", type=int, default=128, help="model slice size in pixels (default 128)")
    parser.add_argument("--pixel-spacing", type=float, default=2.0, help="model pixel spacing in mm (default 2.0)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--validations", type=int, default=4, help="validation passes (epochs) per run")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's default)")
    parser.add_argument("--subjects", default="", help="comma-separated subject ids to use (default: all)")
    parser.add_argument("--results", default="docs/results.md", help="results page to write")
    parser.add_argument("--figures", default="docs/figures", help="folder of the figure PNGs")
    parser.add_argument("--calibrate-only", action="store_true",
                        help="only measure CPU seconds per step and per validation of every trained method, print "
                             "them with the study's total CPU time, and stop")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny networks, 64-pixel slices at 4 mm, 6 slices per subject")
    return parser


def format_calibrations(calibrations: dict, settings: StudySettings) -> str:
    from studies.training_budget import steps_per_epoch

    lines = [f"{'method':14s} {'trained for':10s} {'CPU s/step':>10s} {'val CPU s':>9s} {'steps in budget':>15s}"]
    for (name, direction), c in calibrations.items():
        steps = settings.validations * steps_per_epoch(c, settings.minutes_per_model, settings.validations)
        lines.append(f"{name:14s} {direction:10s} {c['seconds_per_step']:10.3f} {c['validation_seconds']:9.1f} "
                     f"{steps:15d}")
    lines.append(f"{len(calibrations)} training runs x {settings.minutes_per_model:g} CPU min = "
                 f"{len(calibrations) * settings.minutes_per_model:g} CPU min of training (plus evaluation)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    settings = StudySettings(
        data=args.data, out=args.out, minutes_per_model=args.minutes_per_model, slice_size=args.slice_size,
        pixel_spacing_mm=args.pixel_spacing, batch_size=args.batch_size, validations=args.validations,
        threads=args.threads, subjects=[s for s in args.subjects.split(",") if s])
    if args.quick:
        settings.quick = True
        settings.slice_size, settings.pixel_spacing_mm = 64, 4.0
        settings.max_slices_per_subject, settings.batch_size, settings.validations = 6, 2, 2
        settings.n_val = 1
    from studies.comparison_runner import Study

    command = "python -m studies.compare_models " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    def run() -> int:
        study = Study(settings, [m for m in args.methods.split(",") if m] or None,
                      [d for d in args.directions.split(",") if d])
        if args.calibrate_only:
            print(format_calibrations(study.calibrate_all(), settings))
            return 0
        study.run(args.results, args.figures, command)
        print(f"wrote {args.results}")
        return 0

    return exit_status(run, interrupted=lambda: "run the same command again to continue")


if __name__ == "__main__":
    sys.exit(main())
