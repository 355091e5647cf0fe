"""Command line of the training package: ``mrisynthesis train`` (a plug-in of the core's command line,
registered in pyproject.toml), ``mrisynthesis-train`` and ``python -m Training``.

    mrisynthesis train --config configs/pix2pix.yaml [--data DIR] [section.key=value ...]
    mrisynthesis train --resume runs/NAME [section.key=value ...]
    mrisynthesis train --config configs/pix2pix.yaml --print-config
    mrisynthesis train --list-options
    torchrun --nproc_per_node 4 -m Training --config configs/pix2pix.yaml

Errors a user can cause (bad configuration, missing data, unwritable or existing run folder, ...)
are printed as one line and the exit status is 2; an interrupted run exits with 130 and can be
continued with ``--resume``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from MRISynthesisLib.errors import MRISynthesisError, OutputError

from . import config as config_module
from . import distributed

USAGE_EXAMPLES = """examples:
  mrisynthesis train --config configs/supervised.yaml --data path/to/paired train.epochs=5
  mrisynthesis train --resume runs/supervised-demo
  mrisynthesis train --config configs/pix2pix.yaml --print-config
  torchrun --nproc_per_node 2 -m Training --config configs/pix2pix.yaml name=ddp-run
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrisynthesis train", description="Train a T1<->T2 synthesis model (headless).",
        epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML or JSON configuration file (defaults are used for missing keys)")
    parser.add_argument("--data", metavar="DIR", help="folder of paired subject folders, each with a T1 and a T2 "
                        "volume of the same subject on one grid (same as data.root=DIR; see docs/training.md#data)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last saved state "
                        "(its config.yaml is used; overrides such as train.epochs=20 still apply)")
    parser.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")
    parser.add_argument("--list-options", action="store_true", help="list every option with its default and help")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="configuration overrides")
    return parser


def resolve_config(args) -> tuple[config_module.Config, Path | None]:
    """The effective configuration and, with --resume, the run folder to continue."""
    if args.data is not None:
        args.overrides = [f"data.root={args.data}"] + list(args.overrides)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise MRISynthesisError(f"cannot resume {run_dir}: it has no config.yaml (not a run folder)")
        if args.config:
            raise MRISynthesisError("--resume uses the run's own config.yaml; pass overrides instead of --config")
        config = config_module.load_config(run_dir / "config.yaml", args.overrides)
        return config, run_dir
    return config_module.load_config(args.config, args.overrides), None


def check_new_run_folder(config) -> Path:
    """``output_dir/name`` must not exist yet (no silent overwrite) and ``output_dir`` (or, if it does
    not exist yet, its nearest existing parent) must be writable. Nothing is created."""
    output_dir = Path(config.output_dir)
    run_dir = output_dir / config.name
    if run_dir.exists():
        raise OutputError(f"run folder {run_dir} already exists; continue it with --resume {run_dir} "
                          f"or choose another name (name=...)")
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a folder")
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=str(existing))
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise OutputError(f"output folder {output_dir} is not writable: {error.strerror or error}") from None
    return run_dir


def check_data_exists(config) -> None:
    """Refuse a missing data folder before anything is created, saying what data is needed."""
    data = config.data
    if data.mode == "unpaired":
        folders = [("data.t1_dir", data.t1_dir), ("data.t2_dir", data.t2_dir)]
    elif data.manifest:
        folders = []
        if not Path(data.manifest).expanduser().is_file():
            raise config_module.ConfigError(f"data manifest not found: {data.manifest}")
    else:
        folders = [("data folder", data.root)]
    for what, folder in folders:
        if folder and Path(folder).expanduser().exists() and not Path(folder).expanduser().is_dir():
            raise config_module.ConfigError(f"{what} is not a folder: {folder}")
        if not folder or not Path(folder).expanduser().is_dir():
            raise config_module.ConfigError(
                f"{what} not found: {folder or '(empty)'}. Training needs paired T1/T2 volumes of the same subjects "
                "(e.g. the public IXI or BraTS collections), one folder per subject; pass it with --data DIR "
                "(see docs/training.md#data)")


class _EchoValidation:
    """The run's logger, also printing each validation as it happens (the bar shows only losses)."""

    def __init__(self, logger, log):
        self._logger, self._log = logger, log

    def log(self, kind, epoch, step, values):
        self._logger.log(kind, epoch, step, values)
        if kind in ("val", "baseline") and all(k in values for k in ("mae", "psnr", "ssim")):
            what = "inverted-intensity baseline" if kind == "baseline" else f"validation after epoch {epoch} (step {step})"
            text = f"{what}: brain MAE {values['mae']:.4f}  PSNR {values['psnr']:.2f} dB  SSIM {values['ssim']:.3f}"
            if self._log is print:
                from tqdm import tqdm

                tqdm.write(text)  # above the progress bar, not through it
            else:
                self._log(text)

    def __getattr__(self, name):
        return getattr(self._logger, name)


def train(config, resume_dir=None, stop_at_step=None, log=print) -> dict:
    """Run (or resume) training; returns the summary. ``stop_at_step`` interrupts (tests)."""
    from .logs import RunLogger, write_report
    from .trainers import TRAINERS
    from .trainers.base import seed_everything
    from .trainers.data_setup import prepare_data

    context = distributed.setup(config.device)
    try:
        if config.train.threads:
            import torch
            torch.set_num_threads(config.train.threads)
        seed_everything(config.seed + context.rank, config.deterministic)
        created = resume_dir is None
        new_output_dir = False
        if created:
            check_data_exists(config)
            run_dir = check_new_run_folder(config)
            new_output_dir = not run_dir.parent.exists()
            distributed.barrier(context)
            if context.is_main:
                run_dir.mkdir(parents=True)
                (run_dir / "config.yaml").write_text(config_module.to_yaml(config), encoding="utf-8")
        else:
            run_dir = Path(resume_dir)
            require_resumable_state(run_dir)
        before = set(os.listdir(run_dir)) if not created and context.is_main else set()
        distributed.barrier(context)
        try:
            data = prepare_data(config, run_dir, context, resume=not created, log=log)
            logger = RunLogger(run_dir, enabled=context.is_main)
            trainer = TRAINERS[config.family](config, run_dir, data, context,
                                              _EchoValidation(logger, log) if context.is_main else logger)
            if not created:
                trainer.resume()
        except BaseException as error:
            # A run that could not even start leaves nothing behind (so the same name works
            # again); a failed resume leaves the run, and its config.yaml, as they were.
            if created and context.is_main:
                _remove_run_folder(run_dir, new_output_dir)
            elif context.is_main:  # a failed resume adds nothing (cache/, split.json, tensorboard/, ...)
                _remove_new_entries(run_dir, before)
            if isinstance(error, (MRISynthesisError, KeyboardInterrupt)):
                raise
            if isinstance(error, Exception):  # torch/OS errors while building (e.g. out of memory)
                first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
                raise MRISynthesisError(f"the run could not be set up: {type(error).__name__}"
                                        f"{': ' + first if first else ''}") from None
            raise
        if not created and context.is_main:
            (run_dir / "config.yaml").write_text(config_module.to_yaml(config), encoding="utf-8")
            log(f"resuming {run_dir} at epoch {trainer.epoch}, step {trainer.global_step}")
        try:
            try:
                summary = trainer.fit(stop_at_step=stop_at_step)
            finally:
                logger.close()
        except BaseException:
            # A new run that stopped before it saved anything (e.g. its first step failed) could be
            # neither resumed nor started again under its name: remove it, as if it never started.
            if created and context.is_main and not _has_saved_state(run_dir):
                _remove_run_folder(run_dir, new_output_dir)
            raise
        if context.is_main:
            summary["conventions_text"] = ("reference = target percentile-normalised to [0, 1] in its brain mask; "
                                           "MAE/PSNR/SSIM in the mask, SSIM 2D on axial slices, mean over subjects")
            write_report(run_dir, config_module.to_yaml(config), summary)
            log(f"done: {run_dir}  best {summary.get('best')}  (report: {run_dir / 'report.md'})")
        return summary
    finally:
        distributed.cleanup(context)


def require_resumable_state(run_dir: Path) -> None:
    """Refuse (before anything is written into ``run_dir``) a run folder without a training state."""
    from .state import STATE_FILE

    if not (Path(run_dir) / STATE_FILE).is_file():
        raise MRISynthesisError(f"no resumable state in {run_dir}: {STATE_FILE} is missing (the run stopped before "
                                "its first checkpoint; start it again without --resume)")


def _has_saved_state(run_dir: Path) -> bool:
    from .state import STATE_FILE

    return (run_dir / STATE_FILE).exists() or any((run_dir / "checkpoints").glob("*.safetensors"))


def _remove_run_folder(run_dir: Path, new_output_dir: bool) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
    if new_output_dir:
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # only if empty


def _remove_new_entries(run_dir: Path, before: set) -> None:
    for name in set(os.listdir(run_dir)) - before:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


def main(argv=None) -> int:
    """``mrisynthesis train ...``; exit statuses as every command's (:func:`MRISynthesisLib.cli.exit_status`)."""
    from MRISynthesisLib.cli import exit_status

    started = {}  # the run folder, once known, for the message after Ctrl-C

    def interrupted() -> str:
        run_dir = started.get("run_dir")
        if run_dir is not None and run_dir.is_dir():
            return f"continue with --resume {run_dir}"
        return "the run saved nothing; nothing was kept"

    return exit_status(_main, argv, started, interrupted=interrupted)


def _main(argv, started: dict) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # nothing to do: say how, create nothing
        parser.print_help()
        return 2
    args = parser.parse_args(argv)
    if args.list_options:
        for key, default, help_text in config_module.describe_fields():
            print(f"{key} = {default!r}\n    {help_text}")
        return 0
    config, resume_dir = resolve_config(args)
    if args.print_config:
        print(config_module.to_yaml(config), end="")
        return 0
    started["run_dir"] = Path(resume_dir) if resume_dir else Path(config.output_dir) / config.name
    train(config, resume_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
