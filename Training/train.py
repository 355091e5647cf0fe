"""``train(config)``: one training run from start to end, or continued with ``resume_dir``.

The steps, in order: set threads and seeds; create the run folder (:class:`~Training.run_folder.RunFolder`;
a new run refuses an existing one) and write its ``config.yaml``; prepare the data (subject split,
slice cache, validation volumes: :mod:`Training.trainers.data_setup`); build the family's trainer
(:data:`Training.trainers.TRAINERS`) and, when resuming, load its saved state; ``trainer.fit()``
(the epoch loop, validation through the real inference path, checkpoints); write ``report.md``.

A run that fails before it saved anything leaves no folder behind (so the same name works again);
a failed resume leaves the folder as it was. The command line is :mod:`Training.cli`.
"""

from __future__ import annotations

from pathlib import Path

from MRISynthesisLib.errors import MRISynthesisError, first_line

from . import config as config_module
from . import distributed
from .run_folder import RunFolder


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
            run = RunFolder.new(config.output_dir, config.name)
            new_output_dir = not run.path.parent.exists()
            distributed.barrier(context)
            if context.is_main:
                run.path.mkdir(parents=True)
                run.config.write_text(config_module.to_yaml(config), encoding="utf-8")
        else:
            run = RunFolder(resume_dir)
            run.require_resumable()
        before = run.entries() if not created and context.is_main else set()
        distributed.barrier(context)
        try:
            data = prepare_data(config, run.path, context, resume=not created, log=log)
            logger = RunLogger(run.path, enabled=context.is_main)
            trainer = TRAINERS[config.family](config, run.path, data, context,
                                              EchoValidation(logger, log) if context.is_main else logger)
            if not created:
                trainer.resume()
        except BaseException as error:
            # A run that could not even start leaves nothing behind (so the same name works
            # again); a failed resume leaves the run, and its config.yaml, as they were.
            if created and context.is_main:
                run.remove(also_empty_parent=new_output_dir)
            elif context.is_main:  # a failed resume adds nothing (cache/, split.json, tensorboard/, ...)
                run.remove_entries_not_in(before)
            if isinstance(error, (MRISynthesisError, KeyboardInterrupt)):
                raise
            if isinstance(error, Exception):  # torch/OS errors while building (e.g. out of memory)
                first = first_line(error) if str(error).strip() else ""
                raise MRISynthesisError(f"the run could not be set up: {type(error).__name__}"
                                        f"{': ' + first if first else ''}") from None
            raise
        if not created and context.is_main:
            run.config.write_text(config_module.to_yaml(config), encoding="utf-8")
            log(f"resuming {run.path} at epoch {trainer.epoch}, step {trainer.global_step}")
        try:
            try:
                summary = trainer.fit(stop_at_step=stop_at_step)
            finally:
                logger.close()
        except BaseException:
            # A new run that stopped before it saved anything (e.g. its first step failed) could be
            # neither resumed nor started again under its name: remove it, as if it never started.
            if created and context.is_main and not run.has_saved_state():
                run.remove(also_empty_parent=new_output_dir)
            raise
        if context.is_main:
            summary["conventions_text"] = ("reference = target percentile-normalised to [0, 1] in its brain mask; "
                                           "MAE/PSNR/SSIM in the mask, SSIM 2D on axial slices, mean over subjects")
            write_report(run.path, config_module.to_yaml(config), summary)
            log(f"done: {run.path}  best {summary.get('best')}  (report: {run.report})")
        return summary
    finally:
        distributed.cleanup(context)


def check_data_exists(config) -> None:
    """Refuse missing training data before anything is created, saying what data is needed."""
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


class EchoValidation:
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
