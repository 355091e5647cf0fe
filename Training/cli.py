"""Command line of the training package: ``mrisynthesis train`` (a plug-in of the core's command line,
registered in pyproject.toml), ``mrisynthesis-train`` and ``python -m Training``. It parses the
arguments into a configuration and calls :func:`Training.train.train`.

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
import sys
from pathlib import Path

from MRISynthesisLib.errors import MRISynthesisError

from . import config as config_module
from .run_folder import RunFolder
from .train import train

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
        run = RunFolder.existing(args.resume)
        if args.config:
            raise MRISynthesisError(f"--resume uses the run's own {RunFolder.CONFIG}; pass overrides instead of "
                                    "--config")
        return config_module.load_config(run.config, args.overrides), run.path
    return config_module.load_config(args.config, args.overrides), None


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
