"""Training-time augmentation of model-grid slices (torch tensors in [-1, 1], background -1).

Geometric changes (left-right flip, small rotation/scale/translation) are applied identically to
source, target and mask, so a pair stays aligned. Intensity changes (gamma, smooth multiplicative
bias field) are applied to the source only: the target is the answer and must stay as acquired.

The ``strong`` preset (:meth:`AugmentConfig.preset`) adds what differs between scanners and
sites, again to the source only: a random monotone contrast curve, jitter of the normalisation
percentiles, Gaussian noise, Gaussian blur, a lower in-plane resolution, and thick-slice
simulation (one in-plane axis down-sampled 3-6x and back, as a sagittal or coronal thick-slice
acquisition looks once resliced axially; with 2.5D input the neighbouring slices are also mixed,
as an axial thick slice averages them).

All random numbers come from the ``generator`` argument, so a given generator state always gives
the same result (reproducible across resume and across DataLoader workers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


#: The parts of the augmentation by name: geometry and intensity (both presets), then the site
#: variations of the 'strong' preset.
PARTS = ("flip", "affine", "gamma", "bias", "curve", "jitter", "blur", "lowres", "thick", "noise")


@dataclass
class AugmentConfig:
    """Which augmentations to apply and how strongly; ``enabled=False`` makes :func:`augment_pair` the identity.

    flip: left-right flip with probability 0.5.
    affine: rotation up to ``max_rotation_deg`` degrees, scale within 1 +/- ``max_scale``,
        translation up to ``max_translate`` of the slice size along each axis.
    gamma: source intensities (mapped to [0, 1]) raised to a power drawn log-uniformly in ``gamma_range``.
    bias_field: source multiplied by exp(smooth quadratic field), amplitude up to ``bias_strength``.
    """

    enabled: bool = True
    flip: bool = True
    affine: bool = True
    max_rotation_deg: float = 10.0
    max_scale: float = 0.1
    max_translate: float = 0.05
    gamma: bool = True
    gamma_range: tuple = (0.8, 1.25)
    bias_field: bool = True
    bias_strength: float = 0.2
    # 'strong' preset: scanner and site variation (each applied with probability ``site_probability``)
    site: bool = False
    site_probability: float = 0.5
    contrast_curve_knots: int = 4
    percentile_jitter: float = 0.05
    max_noise_std: float = 0.05
    max_blur_sigma: float = 1.0
    max_downsample: float = 2.0
    thick_slice_factors: tuple = (3.0, 6.0)
    #: parts switched off (names of :data:`PARTS`): for ablations; random draws are still made
    off: tuple = ()

    def uses(self, part: str) -> bool:
        """Whether augmentation part ``part`` (one of :data:`PARTS`) is applied."""
        enabled = {"flip": self.flip, "affine": self.affine, "gamma": self.gamma, "bias": self.bias_field}
        return enabled.get(part, self.site) and part not in self.off

    @classmethod
    def preset(cls, name: str) -> "AugmentConfig":
        """'none' (identity), 'basic' (geometry, gamma 0.8-1.25, bias 0.2) or 'strong' (basic with a wider
        gamma 0.6-1.6 and bias 0.35, plus the site variations of the module docstring)."""
        if name == "none":
            return cls(enabled=False)
        if name == "basic":
            return cls()
        if name == "strong":
            return cls(gamma_range=(0.6, 1.6), bias_strength=0.35, site=True)
        raise ValueError(f"unknown augmentation preset {name!r}; valid: none, basic, strong")


def _uniform(generator, low, high):
    return low + (high - low) * float(torch.rand((), generator=generator))


def augment_pair(source, target, mask, config: AugmentConfig, generator: torch.Generator):
    """Augment one example: ``source`` (C, S, S), ``target`` (1, S, S) or None, ``mask`` (1, S, S).

    Returns new ``(source, target, mask)`` tensors of the same shapes and dtypes as given; the
    mask stays 0/1, images stay in [-1, 1] with background -1.
    """
    if config is None or not config.enabled:
        return source, target, mask
    # random draws happen in a fixed order, whatever is switched off, so toggling intensity
    # augmentation does not change the geometric transform of a given generator state
    flip = float(torch.rand((), generator=generator)) < 0.5
    angle = math.radians(_uniform(generator, -config.max_rotation_deg, config.max_rotation_deg))
    scale = 1.0 + _uniform(generator, -config.max_scale, config.max_scale)
    shift = [2.0 * _uniform(generator, -config.max_translate, config.max_translate) for _ in range(2)]
    log_gamma = _uniform(generator, math.log(config.gamma_range[0]), math.log(config.gamma_range[1]))
    bias = torch.rand(6, generator=generator) * 2 - 1

    images = [source] + ([target] if target is not None else [])
    channels = [t.shape[0] for t in images]
    stacked = torch.cat([t.float() for t in images], dim=0)
    mask_f = mask.float()
    if config.uses("flip") and flip:
        stacked, mask_f = stacked.flip(-1), mask_f.flip(-1)
    if config.uses("affine"):
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        theta = torch.tensor([[cos, -sin, shift[0]], [sin, cos, shift[1]]], dtype=torch.float32)[None]
        grid = F.affine_grid(theta, (1, 1) + tuple(stacked.shape[-2:]), align_corners=False)
        # shift to [0, 2] so zero padding outside the slice becomes background -1
        stacked = F.grid_sample(stacked[None] + 1.0, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)[0] - 1.0
        mask_f = F.grid_sample(mask_f[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    new_source, new_target = torch.split(stacked, channels, dim=0) if target is not None else (stacked, None)

    if config.uses("gamma") or config.uses("bias"):
        x = ((new_source + 1.0) * 0.5).clamp(0.0, 1.0)  # background is 0 and stays 0 below
        if config.uses("gamma"):
            x = x.pow(math.exp(log_gamma))
        if config.uses("bias"):
            size = x.shape[-1]
            r, c = torch.meshgrid(torch.linspace(-1, 1, x.shape[-2]), torch.linspace(-1, 1, size), indexing="ij")
            terms = torch.stack([torch.ones_like(r), r, c, r * c, r * r, c * c])
            field = (bias[:, None, None] * terms).sum(0) / 3.0  # roughly within [-1, 1]
            x = (x * torch.exp(config.bias_strength * field)).clamp(0.0, 1.0)
        new_source = x * 2.0 - 1.0

    if config.site:
        new_source = _site_variation(new_source, config, generator)

    new_source = new_source.to(source.dtype)
    new_target = new_target.to(target.dtype) if target is not None else None
    return new_source, new_target, mask_f.to(mask.dtype)


def _chance(generator, probability: float) -> bool:
    return float(torch.rand((), generator=generator)) < probability


def _site_variation(source, config: AugmentConfig, generator):
    """Source ``(C, S, S)`` in [-1, 1] (background -1) -> the same slice as another scanner might give it.

    Every draw is made whether or not its change is applied, so the sequence of random numbers
    (and with it every later draw) does not depend on earlier coin flips.
    """
    p = config.site_probability
    foreground = source > -1.0 + 1e-6
    x = ((source + 1.0) * 0.5).clamp(0.0, 1.0)

    # 1. monotone contrast curve: piecewise linear through random increasing knots
    use_curve = _chance(generator, p)
    steps = torch.rand(config.contrast_curve_knots + 1, generator=generator) + 0.2
    if use_curve and config.uses("curve"):
        knots_y = torch.cat([torch.zeros(1), torch.cumsum(steps, 0) / steps.sum()])
        position = x * config.contrast_curve_knots
        index = position.floor().clamp(max=config.contrast_curve_knots - 1).long()
        frac = position - index
        x = knots_y[index] * (1 - frac) + knots_y[index + 1] * frac
    # 2. normalisation percentile jitter: the 0.5 / 99.5 percentiles land slightly elsewhere
    use_jitter = _chance(generator, p)
    low, high = (float(v) for v in (torch.rand(2, generator=generator) * 2 - 1) * config.percentile_jitter)
    if use_jitter and config.uses("jitter"):
        x = ((x - low) / (1.0 + high - low)).clamp(0.0, 1.0)
    # 3. blur, 4. lower in-plane resolution, 5. thick slices
    use_blur = _chance(generator, p)
    sigma = float(torch.rand((), generator=generator)) * config.max_blur_sigma
    use_lowres = _chance(generator, p)
    factor = 1.0 + float(torch.rand((), generator=generator)) * (config.max_downsample - 1.0)
    use_thick = _chance(generator, p * 0.5)
    thick = config.thick_slice_factors[0] + float(torch.rand((), generator=generator)) * (
        config.thick_slice_factors[1] - config.thick_slice_factors[0])
    thick_axis = int(torch.randint(2, (), generator=generator))
    if use_blur and sigma > 0.2 and config.uses("blur"):
        x = _gaussian_blur(x, sigma)
    if use_lowres and config.uses("lowres"):
        x = _down_up(x, (factor, factor))
    if use_thick and config.uses("thick"):
        x = _down_up(x, (thick, 1.0) if thick_axis == 0 else (1.0, thick))
        if x.shape[0] > 1:  # 2.5D: an axial thick slice also averages its neighbours
            x = x.mean(dim=0, keepdim=True).expand_as(x) * 0.5 + x * 0.5
    # 6. noise (after the resolution changes, as acquisition noise is)
    use_noise = _chance(generator, p)
    noise_std = float(torch.rand((), generator=generator)) * config.max_noise_std
    noise = torch.randn(x.shape, generator=generator)
    if use_noise and config.uses("noise"):
        x = (x + noise_std * noise).clamp(0.0, 1.0)
    x = torch.where(foreground, x, torch.zeros_like(x))
    return x * 2.0 - 1.0


def _gaussian_blur(x, sigma: float):
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[0]
    y = x[None]
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
                 groups=channels)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1),
                 groups=channels)
    return y[0]


def _down_up(x, factors):
    """Down-sample by ``factors`` (rows, cols) with anti-aliasing, then back to the original size."""
    size = x.shape[-2:]
    small = (max(4, int(round(size[0] / factors[0]))), max(4, int(round(size[1] / factors[1]))))
    y = F.interpolate(x[None], size=small, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=False)[0]
