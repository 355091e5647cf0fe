"""The training configuration: nested dataclasses, every field with a default and a help text.

A configuration is read from YAML or JSON (:func:`load_config`), then ``section.key=value``
overrides from the command line are applied (values are parsed as YAML, so ``3``, ``true``,
``[0.5, 0.5, 0]`` and ``null`` work). Unknown sections or keys are an error, so a typo never
silently falls back to a default. ``mrisynthesis train --print-config`` prints the effective
configuration; :func:`describe_fields` lists every field with its help text.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from MRISynthesisLib.conventions import (DEFAULT_DIRECTION, DEFAULT_SLICE_GRID, DIRECTIONS, MIN_TRAINING_FOREGROUND,
                                         PERCENTILE_HIGH, PERCENTILE_LOW, SliceGrid)
from MRISynthesisLib.errors import InputError

from .families import FAMILIES as FAMILY_REGISTRY
from .families import families_reading

FAMILIES = tuple(FAMILY_REGISTRY)
GAN_MODES = ("vanilla", "lsgan", "hinge", "wgan-gp")
LR_POLICIES = ("linear", "step", "cosine", "constant")
UNIT_PRESETS = ("nips2017", "munit-master")
DATA_MODES = ("paired", "unpaired")
VALIDATION_METRICS = ("mae", "psnr", "ssim")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENT_PRESETS = ("basic", "strong")
#: names of the augmentation parts (Training.data.augment.PARTS; kept here so the config imports no torch)
AUGMENT_PARTS = ("flip", "affine", "gamma", "bias", "curve", "jitter", "blur", "lowres", "thick", "noise")

#: Generator a family uses when ``model.generator`` is left empty.
DEFAULT_GENERATORS = {name: family.default_generator for name, family in FAMILY_REGISTRY.items()}


class ConfigError(InputError):
    """The configuration file or an override is invalid."""


def _f(default, help, **kwargs):
    """A dataclass field with a help text (mutable defaults are copied per instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class DataConfig:
    root: str = _f("", "folder of subject folders (paired mode), also given as --data DIR; no default: "
                   "training needs your paired data (docs/training.md#data); relative paths are resolved from the "
                   "current folder")
    manifest: str = _f("", "CSV manifest (subject,t1,t2[,mask]) used instead of scanning 'root' when set")
    mode: str = _f("paired", "'paired' (T1 and T2 of the same subject, same grid) or 'unpaired' (cyclegan/unit "
                   "only: t1_dir and t2_dir are independent folders)")
    t1_dir: str = _f("", "unpaired mode: folder of T1 volumes")
    t2_dir: str = _f("", "unpaired mode: folder of T2 volumes")
    direction: str = _f(DEFAULT_DIRECTION, f"{' or '.join(map(repr, DIRECTIONS))}: which contrast is synthesised")
    max_subjects: int = _f(0, "use only the first N discovered subjects (sorted by name); 0 = all")
    split: list = _f([0.8, 0.1, 0.1], "train/validation/test fractions of the subjects (subject-level split)")
    split_seed: int = _f(42, "random seed of the subject split")
    split_file: str = _f("", "a split.json (lists 'train', 'val', 'test' of subject ids) used instead of drawing "
                         "the split from 'split' and 'split_seed'")
    slice_size: int = _f(DEFAULT_SLICE_GRID.slice_size,
                         "model slice size in pixels (square); unet_256 needs 256, unet_128 128")
    pixel_spacing_mm: float = _f(DEFAULT_SLICE_GRID.pixel_spacing_mm,
                                 "in-plane pixel spacing of the model grid in mm (null: no resampling)")
    context_slices: int = _f(DEFAULT_SLICE_GRID.context_slices,
                             "neighbouring slices on each side given as extra input channels (2.5D)")
    low_percentile: float = _f(PERCENTILE_LOW, "intensity percentile (in the brain mask) mapped to 0")
    high_percentile: float = _f(PERCENTILE_HIGH, "intensity percentile (in the brain mask) mapped to 1")
    min_foreground: float = _f(MIN_TRAINING_FOREGROUND, "skip slices whose brain-mask fraction is below this")
    max_slices_per_subject: int = _f(0, "keep at most N slices per subject (evenly spaced); 0 = all")
    cache_dir: str = _f("", "slice cache folder; empty = <run>/cache (built once, memory-mapped)")
    augment: bool = _f(True, "random flips, small affine, gamma and bias-field augmentation")
    augment_preset: str = _f("basic", "strength of the augmentation when 'augment' is on: 'basic' (geometry, "
                             "gamma, bias field) or 'strong' (basic plus scanner/site variation: contrast curves, "
                             "percentile jitter, noise, blur, lower resolution, thick slices)")
    augment_off: list = _f([], "augmentation parts switched off (for ablations): any of flip, affine, gamma, "
                           "bias, curve, jitter, blur, lowres, thick, noise")
    crop_size: int = _f(0, "train on random crops of this many pixels (square, mostly on the brain) of the "
                        "model-grid slices; 0 = whole slices. Needs a generator that accepts the size "
                        "(resunet: multiples of 2**levels)")
    batch_size: int = _f(4, "slices per optimisation step (per process in distributed runs)")
    num_workers: int = _f(0, "DataLoader worker processes (0 = load in the main process)")
    pin_memory: bool = _f(True, "pinned host memory for faster GPU copies (ignored on CPU)")

    @property
    def grid(self) -> SliceGrid:
        """The model grid of this run (stored in its checkpoints, the key of its slice cache)."""
        return SliceGrid(self.slice_size, self.pixel_spacing_mm, self.context_slices)


@dataclass
class ModelConfig:
    generator: str = _f("", "registry name of the generator; empty = the family's default (" + ", ".join(
        f"{name}: {generator}" for name, generator in DEFAULT_GENERATORS.items()) + ")")
    generator_options: dict = _f({}, "options passed to build_model for the generator, e.g. {ngf: 32}; "
                                 "in/out channels and image_size are set from the data config")
    discriminator: str = _f("patchgan", "registry name of the discriminator (GAN families)")
    discriminator_options: dict = _f({}, "options passed to build_model for the discriminator(s), e.g. {ndf: 32}")
    init_from: str = _f("", "checkpoint (.safetensors) whose weights initialise the generator, e.g. a supervised "
                        "model to fine-tune adversarially with pix2pix; architecture and options must match")
    spectral_norm: bool = _f(False, "spectral normalisation on every discriminator convolution (implies "
                             "discriminator norm 'none')")


@dataclass
class LossConfig:
    """Objectives of every family; each help text starts with the families that read the option
    (:attr:`Training.families.Family.loss_options`). Setting an option the chosen family does not
    read to anything but its default is a configuration error."""

    gan_mode: str = _f("", "pix2pix/cyclegan/unit: 'vanilla', 'lsgan', 'hinge' or 'wgan-gp'; empty = family "
                       "default (" + ", ".join(f"{f.name} {f.gan_mode}" for f in FAMILY_REGISTRY.values()
                                               if f.gan_mode) + ")")
    gradient_penalty: float = _f(10.0, "pix2pix/cyclegan/unit: weight of the gradient penalty of gan_mode wgan-gp "
                                 "(applied in every D step)")
    l1: float = _f(100.0, "pix2pix: weight of the L1 loss to the target")
    cycle: float = _f(10.0, "cyclegan: weight of each cycle-consistency L1 loss")
    identity: float = _f(0.5, "cyclegan: identity loss weight, relative to 'cycle' (0 disables)")
    pool_size: int = _f(50, "cyclegan: image pool of past synthetic images shown to D (0 disables)")
    supervised: bool = _f(False, "cyclegan: add an L1 loss to the ground truth (= CycleGAN_s; paired data only)")
    supervised_weight: float = _f(10.0, "cyclegan: weight of the supervised L1 loss")
    beta: float = _f(0.001, "vae: weight of the KL divergence (KL summed over latent dims, mean over batch) "
                     "next to the per-pixel MSE")
    foreground_l1: bool = _f(False, "pix2pix/supervised/baseline: compute the L1 term only inside the source's "
                             "brain mask (the output outside it is background at inference anyway); "
                             "converges much faster on skull-stripped data than the literature's whole-slice L1")
    ssim: float = _f(0.0, "pix2pix/supervised/baseline: weight of the structural term 1 - SSIM (Gaussian window, "
                     "sigma 1.5, on [0, 1] intensities, averaged inside the source's brain mask) next to L1")
    unit_preset: str = _f("nips2017", "unit: loss weights: 'nips2017' (gan 10, recon 100, kl 0.1, cycle 100, "
                          "cycle kl 0.1; Liu et al. 2017 and GAN-MRI) or 'munit-master' (1, 10, 0.01, 10, 0.01)")


@dataclass
class OptimConfig:
    lr: float = _f(2e-4, "Adam learning rate (unit presets use 1e-4 when this is left at 2e-4)")
    beta1: float = _f(0.5, "Adam beta1")
    beta2: float = _f(0.999, "Adam beta2")
    weight_decay: float = _f(0.0, "Adam weight decay")
    lr_policy: str = _f("linear", "'linear' (constant, then linear decay to 0 over decay_epochs; pix2pix), "
                        "'step' (x gamma every step_epochs), 'cosine' (to 0 at the end) or 'constant'")
    decay_epochs: float = _f(-1.0, "linear policy: epochs of linear decay at the end; -1 = half of the epochs")
    step_epochs: float = _f(50.0, "step policy: epochs between decays")
    gamma: float = _f(0.1, "step policy: factor per decay")


@dataclass
class TrainConfig:
    epochs: int = _f(10, "number of epochs")
    steps_per_epoch: int = _f(0, "optimisation steps per epoch; 0 = one pass over the training slices")
    checkpoint_every: int = _f(200, "save the resumable state every N steps (and always at epoch end); 0 = epoch end only")
    log_every: int = _f(10, "write training losses every N steps")
    precision: str = _f("auto", "'auto' (bf16/fp16 autocast on CUDA, fp32 on CPU), 'fp32', 'bf16' (also on CPU) "
                        "or 'fp16' (CUDA, with a GradScaler)")
    channels_last: bool = _f(False, "channels-last memory format (faster convolutions on recent hardware)")
    compile: bool = _f(False, "torch.compile the generator(s) (slow first steps, faster later)")
    threads: int = _f(0, "CPU threads for torch (0 = torch's default)")
    max_cpu_minutes: float = _f(0.0, "stop after this many CPU minutes of training steps (process time, validation "
                                "excluded), then validate and export; 0 = no limit. For equal-budget comparisons")
    ema_decay: float = _f(0.0, "exponential moving average of the generator weights (e.g. 0.999), validated and "
                          "exported instead of the raw weights; 0 = off")


@dataclass
class ValidationConfig:
    every_epochs: int = _f(1, "validate every N epochs (and after the last one)")
    metric: str = _f("mae", "metric that selects the 'best' checkpoint: 'mae' (lower is better), 'psnr' or 'ssim'")
    max_subjects: int = _f(0, "validate on at most N validation subjects; 0 = all")
    batch_size: int = _f(8, "slices per forward pass during validation")
    raw_too: bool = _f(False, "with train.ema_decay: also validate the raw (not averaged) weights, logged as "
                       "'val_raw' (doubles the validation time; for measuring what the average buys)")


@dataclass
class Config:
    name: str = _f("run", "run name: outputs go to <output_dir>/<name>")
    output_dir: str = _f("runs", "parent folder of the run folders")
    family: str = _f("pix2pix", f"model family: {', '.join(FAMILIES)}")
    seed: int = _f(0, "random seed of weights, sampling and augmentation")
    deterministic: bool = _f(False, "deterministic algorithms (bit-identical resumes; slower)")
    device: str = _f("auto", "'auto', 'cpu', 'cuda' or 'mps' (distributed runs use their local GPU)")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data discovery, split, slices"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "networks"})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "objectives and their weights"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimiser and learning rate"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "loop, checkpoints, speed"})
    validation: ValidationConfig = field(default_factory=ValidationConfig, metadata={"help": "validation"})

    # -- derived values ---------------------------------------------------------------------

    @property
    def generator_name(self) -> str:
        return self.model.generator or FAMILY_REGISTRY[self.family].default_generator

    @property
    def gan_mode(self) -> str:
        """The adversarial loss: ``loss.gan_mode`` or the family's default ('' for families without
        a discriminator)."""
        family = FAMILY_REGISTRY.get(self.family)
        return self.loss.gan_mode or (family.gan_mode or "" if family else "")

    @property
    def in_channels(self) -> int:
        return self.data.grid.in_channels

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _sections(cls):
    return {f.name: f for f in dataclasses.fields(cls)}


def from_dict(data: dict, source: str = "configuration") -> Config:
    """Build a :class:`Config` from a nested dict; unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    return _build(Config, data, source, "")


def _build(cls, data, source, prefix):
    fields = _sections(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"valid keys here: {', '.join(prefix + k for k in fields)}")
    values = {}
    for name, value in data.items():
        f = fields[name]
        sub = _resolve(f)
        if sub is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{prefix + name}' must be a section (mapping), got {value!r}")
            values[name] = _build(sub, value, source, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, _default(f), f"{prefix}{name}", source)
    return cls(**values)


def _resolve(f):
    """The section dataclass of field ``f``, or None for a plain value."""
    return {"DataConfig": DataConfig, "ModelConfig": ModelConfig, "LossConfig": LossConfig,
            "OptimConfig": OptimConfig, "TrainConfig": TrainConfig,
            "ValidationConfig": ValidationConfig}.get(f.type if isinstance(f.type, str) else f.type.__name__)


def _default(f):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _coerce(value, default, key, source):
    """``value`` converted to the type of ``default``; ConfigError when it cannot be."""
    def fail(expected):
        raise ConfigError(f"{source}: '{key}' must be {expected}; got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if isinstance(default, float):
        if key == "data.pixel_spacing_mm" and value is None:
            return None
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                fail("a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            fail("a string")
        return value
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            fail("a list")
        return list(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            fail("a mapping")
        return dict(value)
    return value


def validate(config: Config) -> Config:
    """Check values that are wrong whatever the data (ConfigError); returns ``config``."""
    def check(ok, message):
        if not ok:
            raise ConfigError(message)

    check(config.family in FAMILY_REGISTRY, f"family {config.family!r} is not one of {', '.join(FAMILY_REGISTRY)}")
    family = FAMILY_REGISTRY[config.family]
    check(config.data.direction in DIRECTIONS, f"data.direction {config.data.direction!r} is not one of "
          f"{', '.join(DIRECTIONS)}")
    check(config.data.mode in DATA_MODES, f"data.mode {config.data.mode!r} is not one of {', '.join(DATA_MODES)}")
    check(config.data.mode == "paired" or not family.needs_aligned_data,
          f"data.mode 'unpaired' needs family "
          f"{' or '.join(f.name for f in FAMILY_REGISTRY.values() if not f.needs_aligned_data)}; "
          f"{config.family} learns from pairs")
    _check_loss_options(config, family, check)
    check(not (config.data.mode == "unpaired" and config.loss.supervised),
          "loss.supervised (CycleGAN_s) needs paired data; set data.mode: paired")
    check(family.gan_mode is None or config.gan_mode in GAN_MODES,
          f"loss.gan_mode {config.gan_mode!r} is not one of {', '.join(GAN_MODES)}")
    check(config.optim.lr_policy in LR_POLICIES,
          f"optim.lr_policy {config.optim.lr_policy!r} is not one of {', '.join(LR_POLICIES)}")
    check(config.loss.unit_preset in UNIT_PRESETS,
          f"loss.unit_preset {config.loss.unit_preset!r} is not one of {', '.join(UNIT_PRESETS)}")
    check(config.validation.metric in VALIDATION_METRICS,
          f"validation.metric {config.validation.metric!r} is not one of {', '.join(VALIDATION_METRICS)}")
    unknown_parts = sorted(set(map(str, config.data.augment_off)) - set(AUGMENT_PARTS))
    check(not unknown_parts, f"data.augment_off names unknown parts {', '.join(unknown_parts)}; "
          f"valid: {', '.join(AUGMENT_PARTS)}")
    check(config.data.augment_preset in AUGMENT_PRESETS, f"data.augment_preset {config.data.augment_preset!r} "
          f"is not one of {', '.join(AUGMENT_PRESETS)}")
    check(config.data.crop_size == 0 or 16 <= config.data.crop_size <= config.data.slice_size,
          f"data.crop_size must be 0 (whole slices) or 16..data.slice_size ({config.data.slice_size}); "
          f"got {config.data.crop_size}")
    check(0.0 <= config.train.ema_decay < 1.0, f"train.ema_decay must be in [0, 1); got {config.train.ema_decay}")
    check(config.train.max_cpu_minutes >= 0.0, f"train.max_cpu_minutes must be >= 0; got {config.train.max_cpu_minutes}")
    check(config.loss.ssim >= 0.0, f"loss.ssim must be >= 0; got {config.loss.ssim}")
    check(config.train.precision in PRECISIONS,
          f"train.precision {config.train.precision!r} is not one of {', '.join(PRECISIONS)}")
    split = config.data.split
    check(len(split) == 3 and all(isinstance(v, (int, float)) and v >= 0 for v in split)
          and math.isclose(sum(split), 1.0, abs_tol=1e-6) and split[0] > 0 and split[1] > 0,
          f"data.split must be three fractions (train, validation, test) summing to 1 with train and "
          f"validation > 0; got {split}")
    for key, value, minimum in (("data.slice_size", config.data.slice_size, 16),
                                ("data.batch_size", config.data.batch_size, 1),
                                ("data.num_workers", config.data.num_workers, 0),
                                ("data.context_slices", config.data.context_slices, 0),
                                ("data.max_subjects", config.data.max_subjects, 0),
                                ("train.epochs", config.train.epochs, 1),
                                ("train.steps_per_epoch", config.train.steps_per_epoch, 0),
                                ("train.checkpoint_every", config.train.checkpoint_every, 0),
                                ("train.log_every", config.train.log_every, 1),
                                ("validation.every_epochs", config.validation.every_epochs, 1),
                                ("loss.pool_size", config.loss.pool_size, 0)):
        check(value >= minimum, f"{key} must be >= {minimum}; got {value}")
    for key, value in (("seed", config.seed), ("data.split_seed", config.data.split_seed)):
        check(0 <= value < 2 ** 32, f"{key} must be an integer from 0 to 2**32 - 1; got {value}")
    _check_ranges(config, check)
    check(bool(config.name) and "/" not in config.name and config.name not in (".", ".."),
          f"name must be a plain folder name; got {config.name!r}")
    return config


def _check_loss_options(config: Config, family, check) -> None:
    """A ``loss.*`` option the family's trainer does not read must keep its default: a value set for
    it would be silently unused (e.g. ``loss.cycle`` with pix2pix)."""
    defaults = LossConfig()
    for f in dataclasses.fields(LossConfig):
        if f.name in family.loss_options or getattr(config.loss, f.name) == getattr(defaults, f.name):
            continue
        readers = families_reading(f.name)
        check(False, f"loss.{f.name} is an option of {'/'.join(readers) or 'no family'}; family {family.name} "
                     f"ignores it, so leave it at its default ({getattr(defaults, f.name)!r}); "
                     f"{family.name} reads loss.{', loss.'.join(family.loss_options)}")


def _check_ranges(config: Config, check) -> None:
    """Upper bounds and finiteness, so that no value fails later with a traceback, trains on NaN
    or allocates an absurd network (the size guard is the checkpoint loader's, for any model)."""
    from MRISynthesisLib.checkpoint import MAX_CONTEXT_SLICES, MAX_SLICE_SIZE

    def finite(key, value, low, high, low_open=False, high_open=False):
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
        check(ok, f"{key} must be a finite number in {'(' if low_open else '['}{low:g}, {high:g}"
                  f"{')' if high_open else ']'}; got {value}")

    o, d, loss = config.optim, config.data, config.loss
    finite("optim.lr", o.lr, 0, 1, low_open=True)
    finite("optim.beta1", o.beta1, 0, 1, high_open=True)
    finite("optim.beta2", o.beta2, 0, 1, high_open=True)
    finite("optim.weight_decay", o.weight_decay, 0, 1)
    finite("optim.gamma", o.gamma, 0, 1, low_open=True)
    finite("optim.step_epochs", o.step_epochs, 0, 1e6, low_open=True)
    check(o.decay_epochs == -1 or (math.isfinite(o.decay_epochs) and o.decay_epochs >= 0),
          f"optim.decay_epochs must be -1 (half of the epochs) or >= 0; got {o.decay_epochs}")
    for key in ("gradient_penalty", "l1", "cycle", "identity", "supervised_weight", "beta"):
        finite(f"loss.{key}", getattr(loss, key), 0, 1e6)
    finite("data.low_percentile", d.low_percentile, 0, 100)
    finite("data.high_percentile", d.high_percentile, 0, 100)
    check(d.low_percentile < d.high_percentile, f"data.low_percentile ({d.low_percentile}) must be below "
          f"data.high_percentile ({d.high_percentile})")
    finite("data.min_foreground", d.min_foreground, 0, 1, high_open=True)
    if d.pixel_spacing_mm is not None:
        finite("data.pixel_spacing_mm", d.pixel_spacing_mm, 0, 100, low_open=True, high_open=True)
    check(d.slice_size <= MAX_SLICE_SIZE, f"data.slice_size must be <= {MAX_SLICE_SIZE}; got {d.slice_size}")
    check(d.context_slices <= MAX_CONTEXT_SLICES,
          f"data.context_slices must be <= {MAX_CONTEXT_SLICES}; got {d.context_slices}")
    for key, value, high in (("data.batch_size", d.batch_size, 4096), ("data.num_workers", d.num_workers, 256),
                             ("train.epochs", config.train.epochs, 1_000_000), ("loss.pool_size", loss.pool_size, 10_000),
                             ("validation.batch_size", config.validation.batch_size, 4096),
                             ("train.threads", config.train.threads, 4096)):
        check(value <= high, f"{key} must be <= {high}; got {value}")
    check(config.validation.batch_size >= 1, f"validation.batch_size must be >= 1; got {config.validation.batch_size}")
    check(config.train.threads >= 0, f"train.threads must be >= 0; got {config.train.threads}")
    generator = dict(config.model.generator_options, in_channels=config.in_channels, out_channels=1)
    if config.generator_name == "vae":
        generator["image_size"] = d.slice_size
    _check_network_size("model.generator_options", config.generator_name, generator, check)
    if FAMILY_REGISTRY[config.family].gan_mode is not None:  # the family has discriminators
        discriminator = dict(config.model.discriminator_options, in_channels=config.in_channels + 1)
        _check_network_size("model.discriminator_options", config.model.discriminator, discriminator, check)


def _check_network_size(key: str, name: str, options: dict, check) -> None:
    """Bounded option values and a network of at most MAX_PARAMETERS values, measured on the meta
    device (nothing allocated). Options the registry rejects are left to the trainer's message."""
    from MRISynthesisLib.checkpoint import MAX_PARAMETERS, network_size
    from MRISynthesisLib.errors import CheckpointError

    try:
        size = network_size(name, options)
    except CheckpointError as error:
        check(False, f"{key}: {error}")
    except Exception:  # noqa: BLE001 - an unknown option or name gets the trainer's own clear message
        return
    check(size <= MAX_PARAMETERS, f"{key} describe a {name} of {size:,} values; at most {MAX_PARAMETERS:,} "
          "are accepted (lower ngf or the number of blocks)")


def parse_override(text: str) -> tuple[list[str], object]:
    """``'optim.lr=1e-4'`` -> ``(['optim', 'lr'], 0.0001)``; the value is parsed as YAML."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict, overrides) -> dict:
    """Set each ``section.key=value`` of ``overrides`` in the nested dict ``data`` (in place)."""
    for text in overrides or ():
        path, value = parse_override(text)
        target = data
        for part in path[:-1]:
            if not isinstance(target.get(part, {}), dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
            target = target.setdefault(part, {})
        target[path[-1]] = value
    return data


def read_file(path) -> dict:
    """The mapping in a YAML (.yaml/.yml) or JSON (.json) configuration file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"cannot read configuration {path}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration {path} must contain a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path=None, overrides=()) -> Config:
    """Defaults, updated by the file at ``path`` (optional), then by ``overrides``; validated."""
    data = read_file(path) if path else {}
    data = _merge(Config().to_dict(), data, str(path or "configuration"))
    apply_overrides(data, overrides)
    return validate(from_dict(data, source=f"{path or 'configuration'} + overrides" if overrides else
                              str(path or "configuration")))


def _merge(base: dict, update: dict, source: str) -> dict:
    """``base`` updated recursively with ``update``; free-form dict fields are replaced, not merged."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in (
                "generator_options", "discriminator_options"):
            _merge(base[key], value, source)
        else:
            base[key] = value
    return base


def to_yaml(config: Config) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)


def describe_fields(cls=Config, prefix="") -> list[tuple[str, object, str]]:
    """``(dotted key, default, help)`` for every field, in declaration order."""
    rows = []
    for f in dataclasses.fields(cls):
        sub = _resolve(f)
        if sub is not None:
            rows += describe_fields(sub, f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, _default(f), f.metadata.get("help", "")))
    return rows
