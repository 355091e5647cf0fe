"""Pix2Pix (Isola et al. 2017): U-Net generator + conditional PatchGAN, L1 weight 100.

Each step: D learns to tell ``(source, target)`` from ``(source, G(source))``; then G is updated
to fool D while staying close to the target in L1. The discriminator is conditional: it sees the
source slice(s) concatenated with the real or synthetic target. GAN mode vanilla by default
(lsgan, hinge and wgan-gp with its gradient penalty are available). ``loss.ssim`` adds the
structural term with weight ``l1 * ssim``, so the supervised recipe's L1/SSIM balance is kept;
``model.init_from`` starts G from a supervised model (adversarial fine-tuning).
"""

import torch

from ..losses import discriminator_loss, generator_adversarial_loss, l1_loss, ssim_loss
from .base import Trainer, set_requires_grad


class Pix2PixTrainer(Trainer):
    family = "pix2pix"

    def build(self):
        c = self.config.in_channels
        self.networks = {"g": self.generator(c, 1), "d": self.discriminator(c + 1)}
        self.optimizers = {"g": self.adam(self.networks["g"]), "d": self.adam(self.networks["d"])}

    def train_step(self, batch):
        source, target = batch["source"], batch["target"]
        mode, loss = self.config.gan_mode, self.config.loss
        G, D = self.wrapped("g"), self.wrapped("d")

        with self.autocast():
            fake = G(source)

        # Discriminator: real pairs -> real, synthetic pairs -> fake.
        set_requires_grad([self.networks["d"]], True)
        with self.autocast():
            d_loss, parts = discriminator_loss(mode, D, torch.cat([source, target], 1),
                                               torch.cat([source, fake], 1), loss.gradient_penalty)
        self.update(self.optimizers["d"], d_loss)

        # Generator: fool D (D's weights frozen, called outside DDP) and match the target in L1.
        set_requires_grad([self.networks["d"]], False)
        with self.autocast():
            g_gan = generator_adversarial_loss(mode, self.networks["d"](torch.cat([source, fake], 1)))
            mask = batch["mask"] if loss.foreground_l1 else None
            g_l1 = l1_loss(fake, target, mask)
            g_loss = g_gan + loss.l1 * g_l1
        extra = {}
        if loss.ssim:
            g_ssim = ssim_loss(fake, target, mask)
            g_loss = g_loss + loss.l1 * loss.ssim * g_ssim
            extra["g_ssim"] = g_ssim.item()
        self.update(self.optimizers["g"], g_loss)
        return {"loss_g": g_loss.item(), "g_gan": g_gan.item(), "g_l1": g_l1.item(), **extra, "loss_d": d_loss.item(),
                **parts}

    def exports(self):
        return [(self.config.data.direction, self.networks["g"])]
