"""One trainer per model family (one file each); :data:`TRAINERS` maps the family name to its
class, as registered in :data:`Training.families.FAMILIES` (the one place a family is added)."""

from ..families import FAMILIES

TRAINERS = {name: family.trainer_class() for name, family in FAMILIES.items()}

__all__ = ["TRAINERS"]
