"""Model registry: every network is built by name from a JSON-serialisable configuration.

>>> model = build_model("unet_256", ngf=32)          # doctest: +SKIP
>>> config = default_config("unet_256")             # {'in_channels': 1, ..., 'ngf': 64, ...}

``build_model(name, **config)`` fills in the defaults, initialises the weights with
:func:`init_weights` (N(0, 0.02), from torch's global random generator: seed it for
reproducible weights) and records the name and full configuration on the model as
``model.registry_name`` and ``model.config``, so a checkpoint can store them and rebuild the
exact network with ``build_model(model.registry_name, **model.config)``.

Generators (:data:`GENERATOR_NAMES`) map ``(N, in_channels, H, W)`` in [-1, 1] to
``(N, out_channels, H, W)`` in [-1, 1] (tanh); each class docstring states the slice sizes it
accepts, and a wrong size raises :class:`~MRISynthesisLib.errors.InputError`.
Discriminators (:data:`DISCRIMINATOR_NAMES`) map ``(N, in_channels, H, W)`` to patch logits
``(N, 1, h, w)``.

The defaults of a model are the keyword defaults of its class, so they live in one place.
Adding a model = one file with its class plus one line in ``_REGISTRY``.
"""

import inspect
from dataclasses import dataclass, field

from ..errors import InputError
from .baseline import PixelwiseMapping
from .initialisation import INIT_KINDS, init_weights
from .layers import NORM_CHOICES
from .patchgan import PatchGANDiscriminator
from .resnet import ResnetGenerator
from .resunet import ResUnetGenerator
from .unet import UnetGenerator
from .unit import UNITGenerator
from .vae import VariationalAutoencoder


@dataclass(frozen=True)
class _Entry:
    cls: type
    role: str  # "generator" or "discriminator"
    fixed: dict = field(default_factory=dict)  # constructor arguments implied by the name


_REGISTRY = {
    "unet_128": _Entry(UnetGenerator, "generator", {"num_downs": 7}),
    "unet_256": _Entry(UnetGenerator, "generator", {"num_downs": 8}),
    "resunet": _Entry(ResUnetGenerator, "generator"),
    "resnet_6blocks": _Entry(ResnetGenerator, "generator", {"n_blocks": 6}),
    "resnet_9blocks": _Entry(ResnetGenerator, "generator", {"n_blocks": 9}),
    "vae": _Entry(VariationalAutoencoder, "generator"),
    "unit": _Entry(UNITGenerator, "generator"),
    "baseline": _Entry(PixelwiseMapping, "generator"),
    "patchgan": _Entry(PatchGANDiscriminator, "discriminator"),
}

MODEL_NAMES = tuple(_REGISTRY)
GENERATOR_NAMES = tuple(name for name, entry in _REGISTRY.items() if entry.role == "generator")
DISCRIMINATOR_NAMES = tuple(
    name for name, entry in _REGISTRY.items() if entry.role == "discriminator")

__all__ = [
    "DISCRIMINATOR_NAMES", "GENERATOR_NAMES", "INIT_KINDS", "MODEL_NAMES", "NORM_CHOICES",
    "PatchGANDiscriminator", "PixelwiseMapping", "ResUnetGenerator", "ResnetGenerator", "UNITGenerator",
    "UnetGenerator", "VariationalAutoencoder", "build_model", "default_config", "init_weights",
]


def default_config(name):
    """The full configuration of model ``name`` with every option at its default.

    A new dict of JSON types (tuples become lists) each call; safe to modify.
    """
    entry = _entry(name)
    config = {}
    for parameter in inspect.signature(entry.cls).parameters.values():
        if parameter.name in entry.fixed:
            continue
        default = parameter.default
        config[parameter.name] = list(default) if isinstance(default, tuple) else default
    return config


def build_model(name, **config):
    """Build model ``name`` with ``config`` overriding its :func:`default_config`.

    Raises :class:`InputError` for an unknown name, an unknown option, an option of the wrong
    type (``ngf="64"``) or a value the model cannot use (``norm="layer"``).
    """
    full_config = default_config(name)
    for key, value in config.items():
        if key not in full_config:
            valid = ", ".join(sorted(full_config))
            raise InputError(f"unknown option {key!r} for model {name!r}; valid: {valid}")
        _check_type(name, key, value, full_config[key])
        full_config[key] = list(value) if isinstance(value, tuple) else value
    entry = _REGISTRY[name]
    model = entry.cls(**entry.fixed, **full_config)
    # A class may ask for another initialisation than pix2pix's N(0, 0.02) (He init for the
    # deeper residual U-Net, whose signal would otherwise shrink through its many convolutions).
    init_weights(model, kind=getattr(entry.cls, "init_kind", "normal"))
    if hasattr(model, "after_init"):  # a class's own adjustment on top (resunet without normalisation)
        model.after_init()
    model.registry_name = name
    model.config = full_config
    return model


def _entry(name):
    if name not in _REGISTRY:
        raise InputError(f"unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}")
    return _REGISTRY[name]


def _check_type(name, key, value, default):
    """InputError unless ``value`` has the JSON type of ``default``: bool, int, str, list of int."""
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), "a string"
    elif isinstance(default, list):
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(item, int) and not isinstance(item, bool) for item in value)
        expected = "a list of integers"
    else:
        raise TypeError(f"no type check for the default {default!r} of {name}.{key}")
    if not ok:
        raise InputError(f"model {name!r}: option {key!r} must be {expected}; got {value!r}")
