"""UNIT (Liu, Breuel and Kautz 2017): coupled VAE-GANs with a shared latent space.

One :class:`~MRISynthesisLib.models.UNITGenerator` holds both domains' encoders and decoders
(domain A = source, B = target) around shared layers; two PatchGAN discriminators judge each
domain. Each step, with latents sampled as ``mean + N(0, I)``:

- within-domain reconstruction x_a -> z_a -> x_a', x_b -> z_b -> x_b' (L1, weight ``recon``),
  KL terms mean(mean_latent^2) (weight ``kl``);
- translation x_ab = G_b(z_a), x_ba = G_a(z_b) judged by the discriminators (weight ``gan``);
- cycle x_a -> x_ab -> z -> x_aba (L1, weight ``cycle``) with its KL term (weight ``cycle_kl``).

Loss-weight presets (``loss.unit_preset``): ``nips2017`` = the weight-sharing NeurIPS 2017 code
(branch version_02) and the MRI comparison of Welander et al. 2018: gan 10, recon 100, kl 0.1,
cycle 100, cycle_kl 0.1; ``munit-master`` = the current UNIT/MUNIT master configs: 1, 10, 0.01,
10, 0.01. Both use Adam lr 1e-4 (applied when optim.lr is left at its 2e-4 default).
"""

import torch.nn.functional as F
from torch import nn

from MRISynthesisLib.models import build_model

from MRISynthesisLib.conventions import REVERSE

from ..losses import discriminator_loss, generator_adversarial_loss
from .base import Trainer, set_requires_grad

PRESETS = {
    "nips2017": {"gan": 10.0, "recon": 100.0, "kl": 0.1, "cycle": 100.0, "cycle_kl": 0.1},
    "munit-master": {"gan": 1.0, "recon": 10.0, "kl": 0.01, "cycle": 10.0, "cycle_kl": 0.01},
}
PRESET_LR = 1e-4


class _UNITForward(nn.Module):
    """Every generator pass of a step in one call (DDP sees one forward per backward)."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, x_a, x_b):
        g = self.generator
        h_a, h_b = g.encode(x_a, "a"), g.encode(x_b, "b")
        z_a, z_b = g.sample_latent(h_a), g.sample_latent(h_b)
        x_ab, x_ba = g.decode(z_a, "b"), g.decode(z_b, "a")
        h_ab, h_ba = g.encode(x_ab, "b"), g.encode(x_ba, "a")
        return {"h_a": h_a, "h_b": h_b, "x_aa": g.decode(z_a, "a"), "x_bb": g.decode(z_b, "b"),
                "x_ab": x_ab, "x_ba": x_ba, "h_ab": h_ab, "h_ba": h_ba,
                "x_aba": g.decode(g.sample_latent(h_ab), "a"), "x_bab": g.decode(g.sample_latent(h_ba), "b")}


def _kl(mean):
    return (mean.float() ** 2).mean()


class UNITTrainer(Trainer):
    family = "unit"

    def build(self):
        c = self.config.in_channels
        self.networks = {"g": self.generator(c, 1), "d_a": self.discriminator(c), "d_b": self.discriminator(1)}
        lr = PRESET_LR if self.config.optim.lr == 2e-4 else self.config.optim.lr
        n = self.networks
        self.optimizers = {"g": self.adam(n["g"], lr=lr), "d": self.adam(n["d_a"], n["d_b"], lr=lr)}
        self.weights = PRESETS[self.config.loss.unit_preset]
        self._training_forward = _UNITForward(n["g"])

    def train_step(self, batch):
        a, b = (batch["a"], batch["b"]) if "a" in batch else (batch["source"], batch["target"])
        mode, w, n = self.config.gan_mode, self.weights, self.networks

        with self.autocast():
            out = self.wrapped("g", self._training_forward)(a, b)

        set_requires_grad([n["d_a"], n["d_b"]], True)
        with self.autocast():
            d_a, _ = discriminator_loss(mode, self.wrapped("d_a"), a, out["x_ba"], self.config.loss.gradient_penalty)
            d_b, _ = discriminator_loss(mode, self.wrapped("d_b"), b, out["x_ab"], self.config.loss.gradient_penalty)
            d_loss = w["gan"] * (d_a + d_b)
        self.update(self.optimizers["d"], d_loss)

        set_requires_grad([n["d_a"], n["d_b"]], False)
        with self.autocast():
            g_gan = (generator_adversarial_loss(mode, n["d_a"](out["x_ba"]))
                     + generator_adversarial_loss(mode, n["d_b"](out["x_ab"])))
            g_recon = F.l1_loss(out["x_aa"], a) + F.l1_loss(out["x_bb"], b)
            g_kl = _kl(out["h_a"]) + _kl(out["h_b"])
            g_cycle = F.l1_loss(out["x_aba"], a) + F.l1_loss(out["x_bab"], b)
            g_cycle_kl = _kl(out["h_ab"]) + _kl(out["h_ba"])
            g_loss = (w["gan"] * g_gan + w["recon"] * g_recon + w["kl"] * g_kl + w["cycle"] * g_cycle
                      + w["cycle_kl"] * g_cycle_kl)
        self.update(self.optimizers["g"], g_loss)
        return {"loss_g": g_loss.item(), "g_gan": g_gan.item(), "g_recon": g_recon.item(), "g_kl": g_kl.item(),
                "g_cycle": g_cycle.item(), "loss_d": d_loss.item()}

    def exports(self):
        direction = self.config.data.direction
        generator = self.networks["g"]
        exports = [(direction, generator)]
        if self.config.in_channels == 1:
            # The same weights translate B -> A when built with source_domain 'b'.
            reverse = build_model("unit", **dict(generator.config, source_domain="b")).to(self.device)
            reverse.load_state_dict(generator.state_dict())
            exports.append((REVERSE[direction], reverse))
        return exports
