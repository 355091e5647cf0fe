"""Supervised generators without a discriminator: "Generators_s" (L1 only) and the 1x1 baseline.

``supervised``: any registry generator (U-Net by default) trained with L1 to the target only, as
the supervised generators of Welander et al. 2018; ``loss.ssim`` adds a structural term
(1 - SSIM), inside the brain mask with ``loss.foreground_l1``. ``baseline``: the per-pixel intensity mapping
(1x1 convolutions, a few hundred parameters) trained the same way: the floor every real model
must beat.
"""


from ..losses import l1_loss, ssim_loss
from .base import Trainer


class SupervisedTrainer(Trainer):
    family = "supervised"

    def build(self):
        self.networks = {"g": self.generator(self.config.in_channels, 1)}
        self.optimizers = {"g": self.adam(self.networks["g"])}

    def train_step(self, batch):
        with self.autocast():
            fake = self.wrapped("g")(batch["source"])
            mask = batch["mask"] if self.config.loss.foreground_l1 else None
            l1 = l1_loss(fake, batch["target"], mask)
        losses = {"loss_l1": l1}
        if self.config.loss.ssim:
            losses["loss_ssim"] = ssim_loss(fake, batch["target"], mask)
            loss = l1 + self.config.loss.ssim * losses["loss_ssim"]
        else:
            loss = l1
        self.update(self.optimizers["g"], loss)
        return {name: value.item() for name, value in losses.items()}

    def exports(self):
        return [(self.config.data.direction, self.networks["g"])]


class BaselineTrainer(SupervisedTrainer):
    family = "baseline"
