"""Building blocks shared by the model families: normalisation layers, residual blocks, checks.

Every model takes images as ``(N, C, H, W)`` float tensors. A convolution carries a bias only
when no normalisation layer follows it: batch and instance normalisation subtract the
per-channel mean, which would cancel the bias anyway.
"""

import torch
from torch import nn

from ..errors import InputError

NORM_CHOICES = ("batch", "instance", "none")


def check_norm(norm):
    """Raise :class:`InputError` unless ``norm`` is one of :data:`NORM_CHOICES`."""
    if norm not in NORM_CHOICES:
        raise InputError(f"unknown norm {norm!r}; valid: {', '.join(NORM_CHOICES)}")


def norm_layer(norm, channels):
    """Normalisation layer for ``channels`` feature maps.

    ``'batch'``: BatchNorm2d with learned scale/shift and running statistics (used in eval
    mode). ``'instance'``: InstanceNorm2d without learned scale/shift or running statistics
    (normalises every image on its own, the same in train and eval mode). ``'none'``: identity.
    """
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels)
    return nn.Identity()


def uses_bias(norm):
    """Whether a convolution followed by a ``norm`` layer needs its own bias."""
    return norm == "none"


def require_at_least(model, minimum, **options):
    """Raise :class:`InputError` unless every integer option is at least ``minimum``."""
    for key, value in options.items():
        if value < minimum:
            raise InputError(f"{model}: {key} must be >= {minimum}; got {value!r}")


def check_image_batch(x, model, channels, multiple=1, min_size=1, exact_size=None):
    """Raise :class:`InputError` unless ``x`` is a ``(N, channels, H, W)`` batch the model accepts.

    ``H`` and ``W`` must each be a multiple of ``multiple`` and at least ``min_size`` pixels, or
    exactly ``exact_size`` when that is given. ``model`` names the network in the message.
    """
    if x.ndim != 4 or x.shape[1] != channels:
        raise InputError(
            f"{model} expects a (N, {channels}, H, W) tensor; got shape {tuple(x.shape)}"
        )
    height, width = x.shape[-2:]
    if exact_size is not None:
        if (height, width) != (exact_size, exact_size):
            raise InputError(
                f"{model} expects {exact_size}x{exact_size} slices; got {height}x{width}"
            )
        return
    if height % multiple or width % multiple or min(height, width) < min_size:
        raise InputError(
            f"{model} expects slice sizes that are multiples of {multiple} and at least "
            f"{min_size} pixels; got {height}x{width}"
        )


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with reflection padding plus an identity shortcut.

    ``(N, C, H, W) -> (N, C, H, W)`` with ``H, W >= 2``. Structure as in the ResNet generator of
    Johnson et al., "Perceptual Losses for Real-Time Style Transfer and Super-Resolution"
    (ECCV 2016), which CycleGAN and UNIT reuse: conv, norm, ReLU, [dropout], conv, norm, + input.
    """

    def __init__(self, channels, norm="instance", dropout=False):
        super().__init__()
        bias = uses_bias(norm)
        layers = [
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect", bias=bias),
            norm_layer(norm, channels),
            nn.ReLU(inplace=True),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect", bias=bias),
            norm_layer(norm, channels),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.body(x)


def standard_normal(shape, like, generator=None):
    """``N(0, 1)`` noise of ``shape`` with the dtype and device of the tensor ``like``.

    The noise is drawn on ``generator``'s device (so a CPU generator gives the same numbers
    whatever device the model runs on) and then moved to ``like``'s device.
    """
    device = generator.device if generator is not None else like.device
    noise = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
    return noise.to(like.device)
