"""One trainer per model family; :data:`TRAINERS` maps the family name to its class."""

from .cyclegan import CycleGANTrainer
from .pix2pix import Pix2PixTrainer
from .supervised import BaselineTrainer, SupervisedTrainer
from .unit import UNITTrainer
from .vae import VAETrainer

TRAINERS = {cls.family: cls for cls in (Pix2PixTrainer, CycleGANTrainer, VAETrainer, UNITTrainer,
                                        SupervisedTrainer, BaselineTrainer)}

__all__ = ["TRAINERS", "BaselineTrainer", "CycleGANTrainer", "Pix2PixTrainer", "SupervisedTrainer",
           "UNITTrainer", "VAETrainer"]
