"""What every model family shares: the run folder, data, the loop, checkpoints, validation, export.

A family (one file each in this folder) subclasses :class:`Trainer` and implements three things,
readable top to bottom:

- ``build()``: create its networks with :meth:`Trainer.generator` / :meth:`Trainer.discriminator`
  and register them in ``self.networks``, their optimisers in ``self.optimizers`` and any image
  pools in ``self.pools``;
- ``train_step(batch)``: one optimisation step on ``batch`` (a dict of tensors already on the
  device), returning the loss values to log;
- ``exports()``: ``[(direction, generator)]``, the generators saved as inference checkpoints
  (the first one is validated and selects the 'best' checkpoint).

Everything else is here, once: seeding and determinism, the DataLoader of each epoch (resumable
mid-epoch), the learning-rate schedule, mixed precision, DDP wrapping, resumable state, the
progress bar, validation through the real inference path and checkpoint export.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from MRISynthesisLib.checkpoint import ModelMetadata, save_checkpoint
from MRISynthesisLib.errors import InputError
from MRISynthesisLib.models import build_model

from .. import distributed
from ..logs import RunLogger
from ..schedule import LRSchedule, make_adam
from ..run_folder import RunFolder
from ..state import capture_rng_states, load_state, restore_rng_states, save_state
from ..validation import better



def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = torch.cuda.is_available()


def _seed_worker(worker_id: int) -> None:
    """DataLoader workers: derive python/numpy seeds from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def set_requires_grad(networks, flag: bool) -> None:
    for network in networks:
        for parameter in network.parameters():
            parameter.requires_grad_(flag)


class Trainer:
    family = "base"

    def __init__(self, config, run_dir, data, context: distributed.DistributedContext, logger: RunLogger | None = None):
        """``data``: a :class:`~Training.trainers.data_setup.RunData` (datasets, validator, summary)."""
        self.config = config
        self.run_dir = Path(run_dir)
        self.run = RunFolder(run_dir)
        self.data = data
        self.context = context
        self.device = context.device
        self.logger = logger or RunLogger(self.run_dir, enabled=False)
        self.networks: dict = {}
        self.optimizers: dict = {}
        self.pools: dict = {}
        self._wrapped: dict = {}
        self.autocast_dtype = self._autocast_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.epoch = 0             # epochs completed
        self.step_in_epoch = 0     # steps completed in the current epoch
        self.global_step = 0
        self.best_score = None
        self.best_epoch = None
        self.last_metrics = None
        self.best_metrics = None
        self.history_seconds = 0.0
        self.train_cpu_seconds = 0.0  # CPU time of the training steps (process time, validation excluded)
        self.build()
        for network in self.networks.values():
            network.train()
        # Exponential moving averages of the generators (names starting with 'g'): validated and
        # exported instead of the raw weights when train.ema_decay > 0.
        self.ema = {name: self._frozen_copy(network) for name, network in self.networks.items()
                    if config.train.ema_decay > 0 and name.startswith("g")}
        self.schedule = LRSchedule(self.optimizers.values(), config.optim, config.train.epochs, self.steps_per_epoch)

    # -- for the families -------------------------------------------------------------------

    def build(self):
        raise NotImplementedError

    def train_step(self, batch) -> dict:
        raise NotImplementedError

    def exports(self) -> list:
        raise NotImplementedError

    def generator(self, in_channels: int, out_channels: int):
        """A new generator of the configured architecture (``model.generator`` + options)."""
        options = dict(self.config.model.generator_options)
        options.update(in_channels=in_channels, out_channels=out_channels)
        if self.config.generator_name == "vae":
            options["image_size"] = self.config.data.slice_size
        network = self._build(self.config.generator_name, options)
        return self._init_from_checkpoint(network) if self.config.model.init_from else network

    def _init_from_checkpoint(self, network):
        """Load ``model.init_from`` into ``network`` (same architecture and options), e.g. for fine-tuning."""
        from MRISynthesisLib.checkpoint import load_checkpoint

        source, _ = load_checkpoint(self.config.model.init_from, device="cpu")
        if source.registry_name != network.registry_name or dict(source.config) != dict(network.config):
            raise InputError(f"model.init_from {self.config.model.init_from}: its generator "
                             f"{source.registry_name} {source.config} does not match the configured "
                             f"{network.registry_name} {network.config}")
        network.load_state_dict(source.state_dict())
        return network

    @staticmethod
    def _frozen_copy(network):
        ema = copy.deepcopy(network).eval()
        for parameter in ema.parameters():
            parameter.requires_grad_(False)
        return ema

    def update_ema(self) -> None:
        """ema <- d * ema + (1 - d) * weights, with d ramped up over the first steps.

        Floating-point buffers (batch normalisation's running mean and variance) are averaged the
        same way; integer ones (its batch counter) are copied. Copying the running statistics, as
        before 2026-12-04, paired the averaged weights with the statistics of the current ones: at a
        constant learning rate that shifted a batch-normalised network's whole output (a unet_256
        at 1,400 steps wrote the brain 0.15 darker than its current weights did, -4 dB)."""
        if not self.ema:
            return
        decay = min(self.config.train.ema_decay, (1.0 + self.global_step) / (10.0 + self.global_step))
        with torch.no_grad():
            for name, ema in self.ema.items():
                network = self.networks[name]
                for averaged, current in zip(ema.parameters(), network.parameters()):
                    averaged.lerp_(current.detach(), 1.0 - decay)
                for averaged, current in zip(ema.buffers(), network.buffers()):
                    if averaged.is_floating_point():
                        averaged.lerp_(current.to(averaged.dtype), 1.0 - decay)
                    else:
                        averaged.copy_(current)

    def exported(self, generator):
        """The weights exported for ``generator``: its moving average when EMA is on, else itself."""
        for name, network in self.networks.items():
            if network is generator and name in self.ema:
                return self.ema[name]
        return generator

    def discriminator(self, in_channels: int):
        options = dict(self.config.model.discriminator_options)
        options["in_channels"] = in_channels
        if self.config.model.spectral_norm:
            options.update(spectral_norm=True, norm="none")
        return self._build(self.config.model.discriminator, options)

    def _build(self, name, options):
        try:
            network = build_model(name, **options)
        except InputError as error:
            raise InputError(f"cannot build {name!r} for family {self.family}: {error}") from None
        network = distributed.prepare_module(network, self.context).to(self.device)
        if self.config.train.channels_last:
            network = network.to(memory_format=torch.channels_last)
        return network

    def adam(self, *networks, lr=None):
        return make_adam([p for n in networks for p in n.parameters()], self.config.optim, lr=lr)

    def wrapped(self, name, module=None):
        """Network ``name`` (or the training-forward ``module`` stored under that name) as used in
        the forward pass: in DDP when distributed, compiled if asked. Cached per name."""
        if name not in self._wrapped:
            module = distributed.wrap(module if module is not None else self.networks[name], self.context)
            if self.config.train.compile and name.startswith("g"):
                module = torch.compile(module)
            self._wrapped[name] = module
        return self._wrapped[name]

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def update(self, optimizer, loss) -> None:
        """zero_grad, (scaled) backward and step of ``optimizer`` for ``loss``."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)

    def to_device(self, batch: dict) -> dict:
        out = {}
        for key, value in batch.items():
            if torch.is_tensor(value) and value.is_floating_point():
                value = value.to(self.device, non_blocking=True)
                if self.config.train.channels_last and value.ndim == 4:
                    value = value.contiguous(memory_format=torch.channels_last)
            out[key] = value
        return out

    # -- settings ---------------------------------------------------------------------------

    def _autocast_dtype(self):
        precision = self.config.train.precision
        if precision == "fp32":
            return None
        if precision == "bf16":
            return torch.bfloat16
        if precision == "fp16":
            if self.device.type != "cuda":
                raise InputError("train.precision 'fp16' needs a CUDA GPU; use 'bf16' or 'fp32' on the CPU")
            return torch.float16
        from MRISynthesisLib.device import autocast_dtype
        return autocast_dtype(self.device)

    @property
    def batch_size(self) -> int:
        return self.config.data.batch_size

    @property
    def steps_per_epoch(self) -> int:
        if self.config.train.steps_per_epoch:
            return self.config.train.steps_per_epoch
        per_rank = len(self.data.train_dataset) // self.context.world_size
        steps = per_rank // self.batch_size
        if steps < 1:
            raise InputError(f"only {len(self.data.train_dataset)} training slices: fewer than one batch of "
                             f"{self.batch_size} per process; lower data.batch_size or add subjects")
        return steps

    # -- the loop ---------------------------------------------------------------------------

    def _loader(self, epoch: int):
        dataset = self.data.train_dataset
        dataset.set_epoch(epoch)
        indices = distributed.epoch_indices(len(dataset), self.steps_per_epoch, self.batch_size, self.context,
                                            self.config.seed, epoch)
        indices = indices[self.step_in_epoch * self.batch_size:]
        workers = self.config.data.num_workers
        return DataLoader(dataset, batch_size=self.batch_size, sampler=indices, drop_last=True,
                          num_workers=workers, worker_init_fn=_seed_worker if workers else None,
                          pin_memory=self.config.data.pin_memory and self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.config.seed + epoch))

    def fit(self, stop_at_step: int | None = None) -> dict:
        """Train until ``train.epochs`` are done (or ``stop_at_step``, for tests); returns a summary."""
        config = self.config
        total = config.train.epochs * self.steps_per_epoch
        main = self.context.is_main
        if main and self.data.validator is not None and self.global_step == 0:
            baseline = self.data.validator.inverted_source_baseline()
            self.logger.log("baseline", 0, 0, baseline.mean)
        bar = tqdm(total=total, initial=self.global_step, disable=not main, unit="step", dynamic_ncols=True,
                   desc=f"{config.family} {config.name}")
        started = time.perf_counter()
        cpu_mark = time.process_time()
        try:
            while self.epoch < config.train.epochs:
                for batch in self._loader(self.epoch):
                    losses = self.train_step(self.to_device(batch))
                    self._stop_if_not_finite(losses)
                    self.scaler.update()
                    self.update_ema()
                    self.train_cpu_seconds += time.process_time() - cpu_mark
                    cpu_mark = time.process_time()
                    self.schedule.step()
                    self.global_step += 1
                    self.step_in_epoch += 1
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in list(losses.items())[:4]}, refresh=False)
                    if self.global_step % config.train.log_every == 0:
                        self.logger.log("train", self.epoch, self.global_step,
                                        {**losses, "lr": self.schedule.lr})
                    if stop_at_step is not None and self.global_step >= stop_at_step:
                        raise KeyboardInterrupt(f"stopped at step {self.global_step} as asked")
                    every = config.train.checkpoint_every
                    if every and self.global_step % every == 0 and self.step_in_epoch < self.steps_per_epoch:
                        self.save()
                    if self._budget_spent():
                        break
                spent = self._budget_spent()
                self.epoch += 1
                self.step_in_epoch = 0
                last = self.epoch == config.train.epochs or spent
                if self.epoch % config.validation.every_epochs == 0 or last:
                    self.validate_and_export()
                cpu_mark = time.process_time()  # validation CPU does not count against the budget
                self.history_seconds += time.perf_counter() - started
                started = time.perf_counter()
                self.save()
                if spent:
                    break
        finally:
            bar.close()
        return self.summary()

    def _budget_spent(self) -> bool:
        """True once ``train.max_cpu_minutes`` of training CPU time (validation excluded) are used."""
        budget = self.config.train.max_cpu_minutes
        return bool(budget) and self.train_cpu_seconds >= 60.0 * budget

    def _stop_if_not_finite(self, losses: dict) -> None:
        """Stop (InputError) before anything is saved once the weights or, without fp16 loss
        scaling (whose skipped steps are normal), a loss are NaN or infinite: the last saved state
        and checkpoints stay the last good ones."""
        parameters = [p for network in self.networks.values() for p in network.parameters()]
        bad_weights = bool(parameters) and not bool(torch.stack([torch.isfinite(p).all() for p in parameters]).all())
        bad_losses = [k for k, v in losses.items() if not np.isfinite(float(v))] if not self.scaler.is_enabled() else []
        if bad_weights or bad_losses:
            what = f"loss {bad_losses[0]} is {float(losses[bad_losses[0]])}" if bad_losses else "the weights became NaN or infinite"
            raise InputError(f"training stopped at step {self.global_step + 1}: {what}; nothing was saved after the "
                             "last good state (lower optim.lr, or check the data)")

    # -- validation and export --------------------------------------------------------------

    def metadata(self, generator, direction: str, metrics: dict | None) -> ModelMetadata:
        data = self.config.data
        return ModelMetadata(
            architecture=generator.registry_name, config=dict(generator.config), direction=direction,
            model_id=f"{self.config.name}-{self.family}-{direction}",
            title=f"{self.family} {direction} ({self.config.name})",
            **dataclasses.asdict(data.grid),
            normalisation={"method": "percentile", "low": data.low_percentile, "high": data.high_percentile,
                           "mask": "foreground", "model_range": [-1.0, 1.0]},
            training_data=dict(self.data.summary, epochs=self.epoch, steps=self.global_step),
            validation_metrics=metrics or {},
            description=f"Trained with MRISynthesis Training, family {self.family}, run {self.config.name}.")

    def validate_and_export(self) -> None:
        """Rank 0: score the main generator, save ``last-*`` and (if improved) ``best-*`` checkpoints."""
        if self.context.is_main:
            raw = self.exports()
            exports = [(direction, self.exported(generator)) for direction, generator in raw]
            result = None
            if self.data.validator is not None:
                direction, generator = exports[0]
                result = self.data.validator.evaluate(generator, self.metadata(generator, direction, None), self.device)
                if self.ema and self.config.validation.raw_too:
                    raw_result = self.data.validator.evaluate(raw[0][1], self.metadata(raw[0][1], direction, None),
                                                              self.device, preview=False)
                    self.logger.log("val_raw", self.epoch, self.global_step, raw_result.mean)
                for _, network in raw:
                    network.train()
                self.logger.log("val", self.epoch, self.global_step,
                                {**result.mean, "train_cpu_minutes": self.train_cpu_seconds / 60.0})
                self.logger.save_grid(self.epoch, result.preview)
            metrics = ({**result.mean, "epoch": self.epoch, "step": self.global_step,
                        "subjects": list(result.per_subject), "conventions": result.conventions}
                       if result else {})
            self.last_metrics = result.mean if result else None
            improved = False
            if result is not None:
                metric = self.config.validation.metric
                improved = better(metric, result.mean[metric], self.best_score)
                if improved:
                    self.best_score, self.best_epoch, self.best_metrics = result.mean[metric], self.epoch, result.mean
            for direction, generator in exports:
                generator_metrics = metrics if direction == exports[0][0] else {}
                meta = self.metadata(generator, direction, generator_metrics)
                save_checkpoint(self.checkpoint_path("last", direction), generator, meta)
                if improved or result is None:
                    save_checkpoint(self.checkpoint_path("best", direction), generator, self.metadata(
                        generator, direction, generator_metrics))
        distributed.barrier(self.context)

    def checkpoint_path(self, kind: str, direction: str) -> Path:
        return self.run.checkpoint(kind, direction)

    # -- resumable state --------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "family": self.family,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "networks": {name: net.state_dict() for name, net in self.networks.items()},
            "ema": {name: net.state_dict() for name, net in self.ema.items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "pools": {name: pool.state_dict() for name, pool in self.pools.items()},
            "rng": capture_rng_states(),
            "best": {"score": self.best_score, "epoch": self.best_epoch, "metrics": self.best_metrics},
            "last_metrics": self.last_metrics,
            "seconds": self.history_seconds,
            "train_cpu_seconds": self.train_cpu_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["family"] != self.family:
            raise InputError(f"the saved state is of family {state['family']!r}, not {self.family!r}")
        for name, network in self.networks.items():
            network.load_state_dict(state["networks"][name])
        for name, ema in self.ema.items():
            if name not in state.get("ema", {}):
                raise InputError("the saved state has no weight average; resume with train.ema_decay=0")
            ema.load_state_dict(state["ema"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.schedule.load_state_dict(state["schedule"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        for name, pool in self.pools.items():
            pool.load_state_dict(state["pools"][name], device=self.device)
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        best = state["best"]
        self.best_score, self.best_epoch, self.best_metrics = best["score"], best["epoch"], best["metrics"]
        self.last_metrics = state["last_metrics"]
        self.history_seconds = state["seconds"]
        self.train_cpu_seconds = float(state.get("train_cpu_seconds", 0.0))
        restore_rng_states(state["rng"])

    def save(self) -> None:
        if self.context.is_main:
            save_state(self.run.state, self.state_dict())
        distributed.barrier(self.context)

    def resume(self) -> None:
        self.load_state_dict(load_state(self.run.state, map_location=self.device))
        self.logger.forget_after(self.global_step)

    def summary(self) -> dict:
        checkpoints = [str(path.relative_to(self.run_dir)) for path in self.run.checkpoints()]
        return {"name": self.config.name, "family": self.family, "direction": self.config.data.direction,
                "epochs_done": self.epoch, "steps_done": self.global_step, "best": self.best_metrics,
                "best_epoch": self.best_epoch, "last": self.last_metrics, "metric": self.config.validation.metric,
                "checkpoints": checkpoints, "seconds": self.history_seconds,
                "train_cpu_hours": self.train_cpu_seconds / 3600.0, **self.data.summary}
