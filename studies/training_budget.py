"""From a wall-clock budget (minutes per run) to a number of optimisation steps, measured here.

The training package counts steps, not minutes, so each method's run is sized by a short
calibration on this machine with the real trainer, data and validator:

1. build the run's data (slice cache shared by all runs of a direction) and its trainer exactly
   as :func:`Training.train.train` does, in a scratch folder;
2. time ``warmup + timed`` training steps (median of the timed ones) and one validation pass,
   in CPU seconds of the process (the machine is shared: wall-clock time would depend on the
   other work running at the moment; with one torch thread a CPU minute is a wall-clock minute
   of an otherwise idle core);
3. ``steps = (budget - validations * validation_seconds) / seconds_per_step``.

The calibration is cached in the study folder (``calibration.json``), so a resumed study does not
repeat it, and the actual training seconds of every run are reported next to the budget.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

MIN_STEPS_PER_EPOCH = 2


def measure(config, scratch_dir, warmup: int = 2, timed: int = 5, log=print) -> dict:
    """``{'seconds_per_step', 'validation_seconds', 'train_slices'}`` of ``config`` on this machine.

    Seconds are CPU seconds of this process (``time.process_time``, all its threads): the machine
    is shared, and CPU time does not depend on what else runs. A step includes fetching and
    augmenting its batch; the median of ``timed`` steps after ``warmup`` steps is used.
    """
    import torch
    from torch.utils.data import DataLoader

    from Training import distributed
    from Training.trainers import TRAINERS
    from Training.trainers.base import seed_everything
    from Training.trainers.data_setup import prepare_data

    scratch_dir = Path(scratch_dir)
    if scratch_dir.exists():
        shutil.rmtree(scratch_dir)
    scratch_dir.mkdir(parents=True)
    context = distributed.setup(config.device)
    try:
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        seed_everything(config.seed, config.deterministic)
        data = prepare_data(config, scratch_dir, context, log=lambda *a: None)
        trainer = TRAINERS[config.family](config, scratch_dir, data, context)
        data.train_dataset.set_epoch(0)
        loader = DataLoader(data.train_dataset, batch_size=config.data.batch_size, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(config.seed))
        times, done = [], 0
        while done < warmup + timed:
            iterator = iter(loader)
            while done < warmup + timed:
                started = time.process_time()
                batch = next(iterator, None)
                if batch is None:
                    break
                trainer.train_step(trainer.to_device(batch))
                trainer.scaler.update()
                if done >= warmup:
                    times.append(time.process_time() - started)
                done += 1
        validation = 0.0
        if data.validator is not None:
            direction, generator = trainer.exports()[0]
            started = time.process_time()
            data.validator.evaluate(generator, trainer.metadata(generator, direction, None), trainer.device,
                                    preview=False)
            validation = time.process_time() - started
        result = {"seconds_per_step": float(np.median(times)), "validation_seconds": validation,
                  "train_slices": len(data.train_dataset)}
        log(f"  calibration {config.family}: {result['seconds_per_step']:.3f} s/step, "
            f"validation {validation:.1f} s")
        return result
    finally:
        distributed.cleanup(context)
        shutil.rmtree(scratch_dir, ignore_errors=True)


def steps_per_epoch(calibration: dict, minutes: float, epochs: int) -> int:
    """Steps per epoch so that ``epochs`` epochs plus their validations fill ``minutes``."""
    budget = minutes * 60.0 - epochs * calibration["validation_seconds"]
    steps = budget / max(calibration["seconds_per_step"], 1e-6) / epochs
    return max(MIN_STEPS_PER_EPOCH, int(steps))
