"""Conditional VAE: encoder of the source slice to a Gaussian latent, decoder to the target.

Loss = MSE(decode(z), target) + beta * KL(N(mu, sigma^2) || N(0, I)), with z drawn by the
reparameterisation trick, the MSE averaged over pixels and the KL summed over latent dimensions
and averaged over the batch. At inference the posterior mean is decoded (deterministic); the
Synthesizer's ``synthesize_with_uncertainty`` samples the posterior for a mean and a per-voxel
standard deviation.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .base import Trainer


class _VAEForward(nn.Module):
    """One forward pass for training (so DDP sees a single call): ``(reconstruction, mu, logvar)``."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x):
        mu, logvar = self.vae.encode(x)
        return self.vae.decode(self.vae.reparameterise(mu, logvar)), mu, logvar


class VAETrainer(Trainer):
    family = "vae"

    def build(self):
        vae = self.generator(self.config.in_channels, 1)
        self.networks = {"g": vae}
        self.optimizers = {"g": self.adam(vae)}
        self._training_forward = _VAEForward(vae)

    def train_step(self, batch):
        with self.autocast():
            reconstruction, mu, logvar = self.wrapped("g", self._training_forward)(batch["source"])
            mse = F.mse_loss(reconstruction.float(), batch["target"])
            kl = (-0.5 * torch.sum(1 + logvar.float() - mu.float() ** 2 - logvar.float().exp(), dim=1)).mean()
            loss = mse + self.config.loss.beta * kl
        self.update(self.optimizers["g"], loss)
        return {"loss_vae": loss.item(), "g_mse": mse.item(), "g_kl": kl.item()}

    def exports(self):
        return [(self.config.data.direction, self.networks["g"])]
