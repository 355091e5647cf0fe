"""Weight initialisation applied when a model is built.

The default, ``normal`` with gain 0.02, is the one of pix2pix and CycleGAN (Isola et al. 2017,
Zhu et al. 2017), itself taken from DCGAN (Radford et al., ICLR 2016). The random numbers come
from torch's global generator: seed it (``torch.manual_seed``) for reproducible weights.
"""

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import InputError

INIT_KINDS = ("normal", "xavier", "kaiming", "orthogonal")

_WEIGHTED_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)

# Power iterations run after re-initialising a spectrally normalised weight, so that the
# stored singular-vector estimates describe the new weight (torch runs 15 at registration).
_SPECTRAL_NORM_REFRESH_ITERATIONS = 15


def init_weights(model, kind="normal", gain=0.02):
    """Re-initialise every convolution, transposed convolution and linear layer of ``model``.

    ``kind``: ``'normal'`` (weights ~ N(0, gain)), ``'xavier'`` (Glorot normal with ``gain``),
    ``'kaiming'`` (He normal, fan-in; ``gain`` unused) or ``'orthogonal'`` (with ``gain``).
    Biases are set to 0. BatchNorm scales are drawn from N(1, gain) and shifts set to 0.
    A weight under a parametrisation (spectral norm) has its underlying ``original`` tensor
    initialised. Works in place and returns ``model``.
    """
    if kind not in INIT_KINDS:
        raise InputError(f"unknown weight initialisation {kind!r}; valid: {', '.join(INIT_KINDS)}")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _WEIGHTED_LAYERS):
                _init_layer(module, kind, gain)
            elif isinstance(module, nn.BatchNorm2d) and module.affine:
                nn.init.normal_(module.weight, 1.0, gain)
                nn.init.zeros_(module.bias)
    return model


def _init_layer(layer, kind, gain):
    parametrized = parametrize.is_parametrized(layer, "weight")
    weight = layer.parametrizations.weight.original if parametrized else layer.weight
    if kind == "normal":
        nn.init.normal_(weight, 0.0, gain)
    elif kind == "xavier":
        nn.init.xavier_normal_(weight, gain=gain)
    elif kind == "kaiming":
        nn.init.kaiming_normal_(weight, a=0, mode="fan_in")
    else:
        nn.init.orthogonal_(weight, gain=gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    if parametrized:
        # Reading the weight in training mode advances spectral norm's power iteration;
        # other parametrisations just compute and discard the value.
        parametrization = layer.parametrizations.weight
        was_training = parametrization.training
        parametrization.train()
        for _ in range(_SPECTRAL_NORM_REFRESH_ITERATIONS):
            layer.weight
        parametrization.train(was_training)
