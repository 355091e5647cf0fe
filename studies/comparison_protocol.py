"""The study protocol: which subjects are test, validation and training, and how every method trains.

Everything that must be the same for every method is decided here, once, and written to the
study folder (``protocol.json``, ``split.json``) before any model is trained:

- **Split** (:func:`study_split`): a fixed, seeded rule at the subject level. For every source
  with at least two subjects, one subject is drawn for the test side (``numpy`` generator seeded
  with ``split_seed``, over the source's subject ids sorted by name). The remaining subjects are
  split into training and validation by the training package's own stratified rule
  (:func:`Training.data.split_subjects`, same seed) with ``n_val`` validation subjects, so that
  the trainer, given a manifest of exactly these subjects, reproduces the same train/validation
  sides. Sources with a single subject never reach the test side (they would leave no training
  subject of that source).
- **Preprocessing**: the core's (canonical axial slices, brain mask, percentile 0.5..99.5 -> [0, 1]),
  through :mod:`Training.data` (slice cache) for training and :class:`MRISynthesisLib.synthesis.Synthesizer`
  for evaluation; one slice size and pixel spacing for every trained method.
- **Budget**: the same training minutes per trained run (CPU minutes of the training process,
  one torch thread by default, validations included); the number of optimisation steps that
  fits is measured per method (:mod:`studies.training_budget`) on this machine.
- **Seeds**: weights/augmentation seed ``seed``, split seed ``split_seed``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from MRISynthesisLib.conventions import DIRECTIONS  # noqa: F401 - the study's directions
from MRISynthesisLib.errors import InputError
from Training.data import split_subjects, write_split

#: Sources whose licence allows showing their images in committed figures (CC BY, attribution).
FIGURE_SOURCES = ("MSLUB", "TCGA")


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a fixed rule, a fitted lookup table or a trained model family.

    ``kind``: 'inverted' and 'lookup' (baselines computed by :mod:`Training.baselines`),
    'trained' (``family`` + ``overrides`` of the training configuration), or 'ceiling': the real
    target itself sent through the model grid (resampling to the study's pixel spacing and back),
    the best any model on that grid could score, to separate resolution loss from model error. ``two_way`` trained
    families (CycleGAN, UNIT) export both directions from one run; the study trains them once
    (direction t1-to-t2) and evaluates each exported generator in its direction.
    """

    name: str
    title: str
    kind: str
    family: str = ""
    overrides: dict = field(default_factory=dict)
    two_way: bool = False


def methods(quick: bool = False) -> dict[str, Method]:
    """All methods of the study, baselines first. ``quick``: tiny networks for a smoke test.

    Pix2Pix, the supervised generator and the CycleGANs share one generator (U-Net 128, ngf 32)
    and one discriminator (PatchGAN, ndf 32), so the comparison isolates their objectives; the
    ResNet-9 generator of the CycleGAN paper costs ~20x more CPU per step here and would get too
    few steps in the budget. VAE and UNIT use their own registry architectures (UNIT at ngf 16
    for the same reason).
    """
    width = 8 if quick else 32
    generator = {"model.generator": "resnet_6blocks" if quick else "unet_128",  # quick: 64-pixel slices
                 "model.generator_options": {"ngf": width}}
    disc = {"model.discriminator_options": {"ndf": width, "n_layers": 2 if quick else 3}}
    rows = [
        Method("ceiling", "Real target through the model grid: the resolution ceiling (not a method)", "ceiling"),
        Method("inverted", "Inverted source intensities (baseline)", "inverted"),
        Method("lookup", "Intensity lookup table (baseline, fitted on training subjects)", "lookup"),
        Method("baseline1x1", "1x1-conv pixelwise network (baseline)", "trained", "baseline",
               {"optim.lr": 0.01}),
        Method("supervised", "Supervised U-Net, L1 only (Generators_s)", "trained", "supervised", dict(generator)),
        Method("pix2pix", "Pix2Pix (U-Net + PatchGAN, L1 100)", "trained", "pix2pix", {**generator, **disc}),
        # The recipe of the shipped models (L1 inside the brain mask, no dropout, lr 1e-3), on the study's grid.
        Method("supervised_fg", "Supervised U-Net, L1 in the brain mask (shipped recipe)", "trained", "supervised",
               {**generator, "model.generator_options": {"ngf": width, "dropout": False},
                "loss.foreground_l1": True, "optim.lr": 1e-3}),
        Method("pix2pix_fg", "Pix2Pix, L1 in the brain mask", "trained", "pix2pix",
               {**generator, **disc, "model.generator_options": {"ngf": width, "dropout": False},
                "loss.foreground_l1": True}),
        Method("cyclegan", "CycleGAN (U-Net generators)", "trained", "cyclegan", {**generator, **disc}, two_way=True),
        Method("cyclegan_sn", "CycleGAN + spectral norm on D", "trained", "cyclegan",
               {**generator, **disc, "model.spectral_norm": True}, two_way=True),
        Method("cyclegan_s", "CycleGAN_s (+ supervised L1, weight 10)", "trained", "cyclegan",
               {**generator, **disc, "loss.supervised": True}, two_way=True),
        Method("vae", "VAE (128-d latent)", "trained", "vae",
               {"model.generator_options": {"nf": width, "latent_dim": 32 if quick else 128}}),
        Method("unit", "UNIT (nips2017 weights)", "trained", "unit",
               {"model.generator_options": {"ngf": 8 if quick else 16, "n_res": 1 if quick else 3}}, two_way=True),
    ]
    return {m.name: m for m in rows}


@dataclass
class StudySettings:
    """Everything that is the same for every method; written to ``protocol.json``."""

    data: str = "../shared/data/paired"
    out: str = "runs/study"
    minutes_per_model: float = 4.0
    slice_size: int = 128
    pixel_spacing_mm: float = 2.0
    batch_size: int = 4
    seed: int = 0
    split_seed: int = 42
    n_val: int = 2
    validations: int = 4            # validation passes per run (epochs); 'best' is chosen among them
    max_slices_per_subject: int = 0
    augment: bool = True
    threads: int = 1               # torch CPU threads: 1 makes CPU minutes = wall minutes of one core
    quick: bool = False
    subjects: list = field(default_factory=list)   # restrict to these subject ids (empty: all)

    def to_dict(self) -> dict:
        return asdict(self)


#: Settings a study folder keeps for its whole life (its finished runs and evaluations depend on them).
FIXED_SETTINGS = ("minutes_per_model", "slice_size", "pixel_spacing_mm", "batch_size", "seed", "split_seed", "n_val",
                  "validations", "max_slices_per_subject", "augment", "threads", "quick", "subjects")


def study_split(subjects, seed: int = 42, n_val: int = 2) -> dict[str, list[str]]:
    """``{'train', 'val', 'test'}`` subject ids (sorted) by the rule in the module docstring.

    ``subjects``: :class:`Training.data.Subject` objects (``id``, ``source``). Raises
    :class:`InputError` when no source has two subjects (nothing could be tested) or too few
    subjects remain for ``n_val`` validation subjects plus at least one training subject.
    """
    by_source: dict[str, list[str]] = {}
    for subject in sorted(subjects, key=lambda s: s.id):
        by_source.setdefault(subject.source, []).append(subject.id)
    rng = np.random.default_rng(seed)
    test = []
    for source in sorted(by_source):
        ids = by_source[source]
        if len(ids) >= 2:
            test.append(ids[int(rng.integers(len(ids)))])
    if not test:
        raise InputError("no source has two subjects, so none can be held out for testing without leaving its "
                         "source out of training; add subjects")
    rest = [s for s in subjects if s.id not in test]
    if len(rest) < n_val + 1:
        raise InputError(f"after holding out {len(test)} test subject(s) only {len(rest)} remain; "
                         f"need {n_val} for validation and at least 1 for training")
    inner = split_subjects(rest, validation_fractions(len(rest), n_val), seed=seed)
    return {"train": inner["train"], "val": inner["val"], "test": sorted(test)}


def validation_fractions(n_subjects: int, n_val: int) -> list[float]:
    """``data.split`` fractions that make the trainer's split give exactly ``n_val`` validation subjects."""
    val = (n_val + 0.25) / n_subjects if n_val < n_subjects - 1 else n_val / n_subjects
    val = round(val, 6)
    return [round(1.0 - val, 6), val, 0.0]


def write_manifest(subjects, path) -> Path:
    """CSV manifest (subject,t1,t2,mask,lesion_mask,source) of ``subjects``; paths are absolute."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["subject", "t1", "t2", "mask", "lesion_mask", "source"])
        for s in sorted(subjects, key=lambda s: s.id):
            writer.writerow([s.id, Path(s.t1).resolve(), Path(s.t2).resolve(), Path(s.mask).resolve() if s.mask else "",
                             Path(s.lesion_mask).resolve() if s.lesion_mask else "", s.source])
    return path


def write_protocol(settings: StudySettings, split: dict, subjects, out_dir) -> Path:
    """``protocol.json`` (settings, split with sources, methods) and ``split.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_split(split, out_dir / "split.json")
    sources = {s.id: s.source for s in subjects}
    data = {"settings": settings.to_dict(),
            "split": {side: [{"id": i, "source": sources[i]} for i in ids] for side, ids in split.items()},
            "methods": {name: asdict(m) for name, m in methods(settings.quick).items()}}
    path = out_dir / "protocol.json"
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def training_overrides(method: Method, settings: StudySettings, direction: str, manifest, run_name: str,
                       output_dir, cache_dir, steps_per_epoch: int, n_trainval: int) -> list[str]:
    """``section.key=value`` overrides of the training configuration for one run of ``method``."""
    s = settings
    values = {
        "name": run_name, "output_dir": str(output_dir), "family": method.family, "device": "cpu",
        "seed": s.seed,
        "data.manifest": str(manifest), "data.direction": direction,
        "data.split": validation_fractions(n_trainval, s.n_val), "data.split_seed": s.split_seed,
        "data.slice_size": s.slice_size, "data.pixel_spacing_mm": s.pixel_spacing_mm,
        "data.batch_size": s.batch_size, "data.augment": s.augment,
        "data.max_slices_per_subject": s.max_slices_per_subject, "data.cache_dir": str(cache_dir),
        "train.epochs": s.validations, "train.steps_per_epoch": int(steps_per_epoch),
        "train.checkpoint_every": 0, "train.log_every": max(1, min(10, int(steps_per_epoch) // 4)),
        "train.threads": s.threads, "validation.metric": "mae",
    }
    values.update(method.overrides)
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]
