"""CycleGAN (Zhu et al. 2017): two generators, two discriminators, cycle consistency.

Domain A is the source contrast (with its context slices), domain B the target. ``g_ab`` maps
A to B (the exported model), ``g_ba`` B to A (exported as the reverse direction when the input
has no context slices). Each step:

1. both generators translate and reconstruct: fake_b = g_ab(a), rec_a = g_ba(fake_b),
   fake_a = g_ba(b), rec_b = g_ab(fake_a), and the identity images g_ab(b), g_ba(a);
2. the discriminators learn real vs synthetic, seeing synthetic images from the image pools (50);
3. the generators minimise GAN + cycle * (|rec_a - a| + |rec_b - b|)
   + cycle * identity * (|g_ab(b) - b| + |g_ba(a) - a|)
   [+ supervised_weight * (|fake_b - b| + |fake_a - a|) for CycleGAN_s on paired data].

Defaults: cycle 10, identity 0.5, pool 50, lsgan; ``model.spectral_norm`` puts spectral
normalisation on every discriminator convolution.
"""

import torch.nn.functional as F
from torch import nn

from MRISynthesisLib.conventions import REVERSE

from ..losses import ImagePool, discriminator_loss, generator_adversarial_loss
from .base import Trainer, set_requires_grad


class _CycleForward(nn.Module):
    """All generator passes of one step in one call, so DDP sees one forward per backward."""

    def __init__(self, g_ab, g_ba, identity: bool):
        super().__init__()
        self.g_ab, self.g_ba, self.identity = g_ab, g_ba, identity

    def forward(self, a, b):
        fake_b, fake_a = self.g_ab(a), self.g_ba(b)
        out = {"fake_b": fake_b, "rec_a": self.g_ba(fake_b), "fake_a": fake_a, "rec_b": self.g_ab(fake_a)}
        if self.identity:
            out["idt_b"], out["idt_a"] = self.g_ab(b), self.g_ba(a)
        return out


class CycleGANTrainer(Trainer):
    family = "cyclegan"

    def build(self):
        c = self.config.in_channels
        self.networks = {"g_ab": self.generator(c, 1), "g_ba": self.generator(1, c),
                         "d_a": self.discriminator(c), "d_b": self.discriminator(1)}
        n = self.networks
        self.optimizers = {"g": self.adam(n["g_ab"], n["g_ba"]), "d": self.adam(n["d_a"], n["d_b"])}
        self.pools = {"a": ImagePool(self.config.loss.pool_size), "b": ImagePool(self.config.loss.pool_size)}
        # Identity mapping needs the same channels in both domains (no context slices).
        self.use_identity = self.config.loss.identity > 0 and c == 1
        self._training_forward = _CycleForward(n["g_ab"], n["g_ba"], self.use_identity)

    def train_step(self, batch):
        a, b = (batch["a"], batch["b"]) if "a" in batch else (batch["source"], batch["target"])
        loss, mode, n = self.config.loss, self.config.gan_mode, self.networks

        with self.autocast():
            out = self.wrapped("g", self._training_forward)(a, b)

        # Discriminators on real images and on pooled synthetic ones.
        set_requires_grad([n["d_a"], n["d_b"]], True)
        with self.autocast():
            d_b, parts_b = discriminator_loss(mode, self.wrapped("d_b"), b, self.pools["b"].query(out["fake_b"]),
                                              loss.gradient_penalty)
            d_a, parts_a = discriminator_loss(mode, self.wrapped("d_a"), a, self.pools["a"].query(out["fake_a"]),
                                              loss.gradient_penalty)
        self.update(self.optimizers["d"], d_a + d_b)

        # Generators (discriminators frozen and called outside DDP).
        set_requires_grad([n["d_a"], n["d_b"]], False)
        with self.autocast():
            g_gan = (generator_adversarial_loss(mode, n["d_b"](out["fake_b"]))
                     + generator_adversarial_loss(mode, n["d_a"](out["fake_a"])))
            g_cycle = F.l1_loss(out["rec_a"], a) + F.l1_loss(out["rec_b"], b)
            g_loss = g_gan + loss.cycle * g_cycle
            logged = {}
            if self.use_identity:
                g_identity = F.l1_loss(out["idt_b"], b) + F.l1_loss(out["idt_a"], a)
                g_loss = g_loss + loss.cycle * loss.identity * g_identity
                logged["g_identity"] = g_identity.item()
            if loss.supervised:
                g_supervised = F.l1_loss(out["fake_b"], b) + F.l1_loss(out["fake_a"], a)
                g_loss = g_loss + loss.supervised_weight * g_supervised
                logged["g_supervised"] = g_supervised.item()
        self.update(self.optimizers["g"], g_loss)
        return {"loss_g": g_loss.item(), "g_gan": g_gan.item(), "g_cycle": g_cycle.item(),
                "loss_d": (d_a + d_b).item(), **logged, **{f"{k}_a": v for k, v in parts_a.items()},
                **{f"{k}_b": v for k, v in parts_b.items()}}

    def exports(self):
        direction = self.config.data.direction
        exports = [(direction, self.networks["g_ab"])]
        if self.config.in_channels == 1:
            exports.append((REVERSE[direction], self.networks["g_ba"]))
        return exports
