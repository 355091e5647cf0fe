"""Training-time augmentation of model-grid slices (torch tensors in [-1, 1], background -1).

Geometric changes (left-right flip, small rotation/scale/translation) are applied identically to
source, target and mask, so a pair stays aligned. Intensity changes (gamma, smooth multiplicative
bias field) are applied to the source only: the target is the answer and must stay as acquired.
All random numbers come from the ``generator`` argument, so a given generator state always gives
the same result (reproducible across resume and across DataLoader workers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
    if config.flip and flip:
        stacked, mask_f = stacked.flip(-1), mask_f.flip(-1)
    if config.affine:
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        theta = torch.tensor([[cos, -sin, shift[0]], [sin, cos, shift[1]]], dtype=torch.float32)[None]
        grid = F.affine_grid(theta, (1, 1) + tuple(stacked.shape[-2:]), align_corners=False)
        # shift to [0, 2] so zero padding outside the slice becomes background -1
        stacked = F.grid_sample(stacked[None] + 1.0, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)[0] - 1.0
        mask_f = F.grid_sample(mask_f[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    new_source, new_target = torch.split(stacked, channels, dim=0) if target is not None else (stacked, None)

    if config.gamma or config.bias_field:
        x = ((new_source + 1.0) * 0.5).clamp(0.0, 1.0)  # background is 0 and stays 0 below
        if config.gamma:
            x = x.pow(math.exp(log_gamma))
        if config.bias_field:
            size = x.shape[-1]
            r, c = torch.meshgrid(torch.linspace(-1, 1, x.shape[-2]), torch.linspace(-1, 1, size), indexing="ij")
            terms = torch.stack([torch.ones_like(r), r, c, r * c, r * r, c * c])
            field = (bias[:, None, None] * terms).sum(0) / 3.0  # roughly within [-1, 1]
            x = (x * torch.exp(config.bias_strength * field)).clamp(0.0, 1.0)
        new_source = x * 2.0 - 1.0

    new_source = new_source.to(source.dtype)
    new_target = new_target.to(target.dtype) if target is not None else None
    return new_source, new_target, mask_f.to(mask.dtype)
