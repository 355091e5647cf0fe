"""The model families, each registered once: its trainer, default generator, adversarial loss,
whether it needs aligned (paired) data and which ``loss.*`` options it reads.

Everything else derives from :data:`FAMILIES`: the configuration's list of families, the default
generator and GAN mode, the check that unpaired data goes to a family that can learn from it, the
rejection of ``loss.*`` options the chosen family would ignore, and the trainer registry
(:data:`Training.trainers.TRAINERS`). Torch-free, so the configuration can use it without loading
the trainers. Adding a family: write its trainer (one file in ``Training/trainers/``) and add one
:class:`Family` here (see docs/training.md, "Adding a family").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

#: ``loss.*`` options every GAN family reads.
GAN_LOSS_OPTIONS = ("gan_mode", "gradient_penalty")


@dataclass(frozen=True)
class Family:
    name: str
    trainer: str            # "module:Class" of its Trainer subclass, imported when a run starts
    default_generator: str  # registry name used when model.generator is empty
    gan_mode: str | None    # default adversarial loss; None: no discriminator
    needs_aligned_data: bool  # False: can learn from unpaired T1 and T2 folders (data.mode: unpaired)
    loss_options: tuple     # the loss.* fields its trainer reads; setting any other one is an error

    def trainer_class(self):
        module, name = self.trainer.split(":")
        return getattr(importlib.import_module(module), name)


FAMILIES = {family.name: family for family in (
    Family("pix2pix", "Training.trainers.pix2pix:Pix2PixTrainer", "unet_256", "vanilla", True,
           GAN_LOSS_OPTIONS + ("l1", "foreground_l1", "ssim")),
    Family("cyclegan", "Training.trainers.cyclegan:CycleGANTrainer", "resnet_9blocks", "lsgan", False,
           GAN_LOSS_OPTIONS + ("cycle", "identity", "pool_size", "supervised", "supervised_weight")),
    Family("vae", "Training.trainers.vae:VAETrainer", "vae", None, True, ("beta",)),
    Family("unit", "Training.trainers.unit:UNITTrainer", "unit", "lsgan", False, GAN_LOSS_OPTIONS + ("unit_preset",)),
    Family("supervised", "Training.trainers.supervised:SupervisedTrainer", "unet_256", None, True,
           ("foreground_l1", "ssim")),
    Family("baseline", "Training.trainers.supervised:BaselineTrainer", "baseline", None, True,
           ("foreground_l1", "ssim")),
)}


def families_reading(option: str) -> list:
    """Names of the families whose trainer reads ``loss.<option>``."""
    return [family.name for family in FAMILIES.values() if option in family.loss_options]
