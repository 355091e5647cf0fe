"""Adversarial objectives (vanilla, lsgan, hinge, wgan-gp) and the image pool of past fakes.

The discriminators output raw patch logits (no sigmoid). For each mode:

- ``vanilla``: binary cross-entropy with logits (Goodfellow et al. 2014), non-saturating G loss.
- ``lsgan``: least squares to 1 (real) and 0 (fake) (Mao et al. 2017).
- ``hinge``: D: mean(relu(1 - D(real))) + mean(relu(1 + D(fake))); G: -mean(D(fake)).
- ``wgan-gp``: D: mean(D(fake)) - mean(D(real)) + lambda * gradient penalty; G: -mean(D(fake))
  (Gulrajani et al. 2017). The penalty is computed and added by :func:`discriminator_loss`
  whenever the mode is wgan-gp, so it cannot be forgotten (the canonical pix2pix/CycleGAN code
  defines it but never calls it).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F


def generator_adversarial_loss(mode: str, fake_logits):
    """Loss of the generator that wants ``fake_logits`` to be judged real."""
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if mode == "lsgan":
        return F.mse_loss(fake_logits, torch.ones_like(fake_logits))
    if mode in ("hinge", "wgan-gp"):
        return -fake_logits.mean()
    raise ValueError(f"unknown GAN mode {mode!r}")


def discriminator_loss(mode: str, discriminator, real, fake, gp_weight: float = 10.0):
    """Discriminator loss on a batch of ``real`` and (detached) ``fake`` images.

    Returns ``(loss, parts)`` where ``parts`` holds the float values of the terms for logging.
    ``discriminator`` is called on real and fake separately, so BatchNorm statistics are not
    mixed across the two. For wgan-gp the gradient penalty on random interpolates is included.
    """
    fake = fake.detach()
    real_logits = discriminator(real)
    fake_logits = discriminator(fake)
    if mode == "vanilla":
        loss = 0.5 * (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                      + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    elif mode == "lsgan":
        loss = 0.5 * (F.mse_loss(real_logits, torch.ones_like(real_logits))
                      + F.mse_loss(fake_logits, torch.zeros_like(fake_logits)))
    elif mode == "hinge":
        loss = F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    elif mode == "wgan-gp":
        loss = fake_logits.mean() - real_logits.mean()
        penalty = gradient_penalty(_unwrap(discriminator), real, fake)
        return loss + gp_weight * penalty, {"d_wasserstein": -float(loss.detach()),
                                            "d_gradient_penalty": float(penalty.detach())}
    else:
        raise ValueError(f"unknown GAN mode {mode!r}")
    return loss, {}


def gradient_penalty(discriminator, real, fake):
    """``mean((||grad_x D(x)||_2 - 1)^2)`` at random interpolates ``x`` of real and fake.

    ``create_graph=True`` so that the penalty itself is differentiated in the D update.
    Computed in float32 (autocast off): second derivatives in half precision are unreliable.
    """
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=torch.float32)
    with torch.autocast(real.device.type, enabled=False):
        mixed = (alpha * real.float() + (1.0 - alpha) * fake.float()).requires_grad_(True)
        logits = discriminator(mixed)
        (grad,) = torch.autograd.grad(logits.sum(), mixed, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return ((norms - 1.0) ** 2).mean()


def _unwrap(module):
    """The module inside a DistributedDataParallel wrapper (DDP does not support autograd.grad)."""
    return getattr(module, "module", module)


class ImagePool:
    """History of synthetic images shown to the discriminator (Shrivastava et al. 2017).

    Until ``size`` images are stored, every new image is stored and returned. Afterwards each
    new image is, with probability 1/2, swapped for a random stored one (which is returned), else
    returned as is. ``size=0`` disables the pool. Randomness comes from python's ``random``
    module, whose state is part of the resumable training state.
    """

    def __init__(self, size: int):
        self.size = int(size)
        self.images: list[torch.Tensor] = []

    def query(self, images):
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif random.random() > 0.5:
                index = random.randrange(self.size)
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, dim=0)

    def state_dict(self) -> dict:
        stacked = torch.cat(self.images).cpu() if self.images else torch.zeros(0)
        return {"size": self.size, "images": stacked}

    def load_state_dict(self, state: dict, device=None) -> None:
        self.size = int(state["size"])
        images = state["images"]
        self.images = [image.unsqueeze(0).to(device) for image in images] if images.numel() else []


def l1_loss(prediction, target, mask=None):
    """Mean absolute error; with ``mask`` (N,1,H,W in {0,1}) only over the masked pixels."""
    if mask is None:
        return F.l1_loss(prediction, target)
    weights = mask.to(prediction.dtype)
    return ((prediction - target).abs() * weights).sum() / (weights.sum() * prediction.shape[1]).clamp(min=1.0)


def _gaussian_window(sigma: float = 1.5, radius: int = 5):
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    window = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return window / window.sum()


def ssim_map(x, y, sigma: float = 1.5, data_range: float = 1.0):
    """Per-pixel SSIM of ``x`` and ``y`` (N, C, H, W), Gaussian window (sigma 1.5, 11 taps), float32.

    The constants are those of Wang et al. 2004 (K1 0.01, K2 0.03) for ``data_range``; the
    window is applied with zero padding, as a separable convolution.
    """
    x, y = x.float(), y.float()
    window = _gaussian_window(sigma).to(x.device)
    channels = x.shape[1]
    radius = window.numel() // 2

    def blur(t):
        t = F.conv2d(t, window.view(1, 1, 1, -1).expand(channels, 1, 1, -1), padding=(0, radius), groups=channels)
        return F.conv2d(t, window.view(1, 1, -1, 1).expand(channels, 1, -1, 1), padding=(radius, 0), groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))


def ssim_loss(prediction, target, mask=None):
    """``1 - SSIM`` of model outputs in [-1, 1] (compared on [0, 1]), averaged inside ``mask`` when given.

    Computed in float32 outside autocast: the variances are small differences of squares."""
    with torch.autocast(prediction.device.type, enabled=False):
        values = ssim_map((prediction.float() + 1) * 0.5, (target.float() + 1) * 0.5)
        if mask is None:
            return 1.0 - values.mean()
        weights = mask.float()
        return 1.0 - (values * weights).sum() / (weights.sum() * values.shape[1]).clamp(min=1.0)
