"""Headless training of MRISynthesis models (``mrisynthesis train``, ``python -m Training``).

Reuses :mod:`MRISynthesisLib` for orientation, normalisation, masks, models, checkpoints,
inference and metrics; see ``docs/training.md``.
"""
