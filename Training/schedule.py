"""Optimiser and learning-rate policies, stepped once per optimisation step.

Progress is measured in (fractional) epochs, ``step / steps_per_epoch``, so the policies read as
in the literature but change smoothly within an epoch:

- ``linear`` (pix2pix/CycleGAN): constant for ``epochs - decay_epochs``, then linear decay to 0
  at the end of the last epoch.
- ``step``: multiply by ``gamma`` every ``step_epochs``.
- ``cosine``: half cosine from the initial rate to 0 over all epochs.
- ``constant``.

:class:`LRSchedule` keeps only integers and floats as state (no lambdas), so it is saved in the
resumable training state and loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math

import torch


def make_adam(parameters, optim_config, lr=None):
    """Adam with the configured rate and betas (defaults 2e-4, (0.5, 0.999) as in pix2pix/CycleGAN)."""
    return torch.optim.Adam(parameters, lr=lr if lr is not None else optim_config.lr,
                            betas=(optim_config.beta1, optim_config.beta2),
                            weight_decay=optim_config.weight_decay)


def lr_factor(policy: str, epoch: float, total_epochs: int, decay_epochs: float = -1.0,
              step_epochs: float = 50.0, gamma: float = 0.1) -> float:
    """Multiplier of the initial learning rate at fractional ``epoch`` (0 = start of training)."""
    if policy == "constant":
        return 1.0
    if policy == "linear":
        decay = total_epochs / 2.0 if decay_epochs < 0 else float(decay_epochs)
        start = total_epochs - decay
        if epoch <= start or decay <= 0:
            return 1.0
        return max(0.0, 1.0 - (epoch - start) / decay)
    if policy == "step":
        return gamma ** math.floor(epoch / step_epochs)
    if policy == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch / total_epochs, 1.0)))
    raise ValueError(f"unknown learning-rate policy {policy!r}")


class LRSchedule:
    """Sets the learning rate of ``optimizers`` from the step count; ``step()`` after each update."""

    def __init__(self, optimizers, optim_config, total_epochs: int, steps_per_epoch: int):
        self.optimizers = list(optimizers)
        self.config = optim_config
        self.total_epochs = total_epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.base_lrs = [[group["lr"] for group in opt.param_groups] for opt in self.optimizers]
        self.steps = 0
        self._apply()

    def factor(self) -> float:
        c = self.config
        return lr_factor(c.lr_policy, self.steps / self.steps_per_epoch, self.total_epochs,
                         c.decay_epochs, c.step_epochs, c.gamma)

    def _apply(self):
        factor = self.factor()
        for opt, lrs in zip(self.optimizers, self.base_lrs):
            for group, lr in zip(opt.param_groups, lrs):
                group["lr"] = lr * factor

    def step(self):
        self.steps += 1
        self._apply()

    @property
    def lr(self) -> float:
        return self.optimizers[0].param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"steps": self.steps, "base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.base_lrs = [list(lrs) for lrs in state["base_lrs"]]
        self._apply()
