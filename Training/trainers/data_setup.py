"""From the data section of the configuration to datasets, a validator and a data summary.

Paired mode: discover subjects (folder or CSV manifest), verify each pair's grid, split by
subject (written to ``split.json``; a resumed run reads it back), cache the training subjects'
slices once (rank 0 builds, the other ranks open), and serve them as
:class:`~Training.data.PairedSliceDataset` (or, for the unsupervised families, as unaligned
:class:`~Training.data.UnpairedSliceDataset` drawn from other subjects). The validation subjects
are kept as whole volumes for :class:`~Training.validation.Validator`.

Unpaired mode (cyclegan/unit): two single-contrast caches from ``data.t1_dir`` and ``data.t2_dir``;
validation uses the paired subjects under ``data.root`` when that folder exists, else none.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from pathlib import Path

from MRISynthesisLib.conventions import source_and_target
from MRISynthesisLib.conventions import source_contrast as source_contrast_of
from MRISynthesisLib.conventions import target_contrast as target_contrast_of
from MRISynthesisLib.errors import InputError

from .. import distributed
from ..data import (AugmentConfig, PairedSliceDataset, SliceCache, UnpairedSliceDataset, check_pair,
                    discover_subjects, discover_unpaired, format_report, read_manifest, read_split,
                    split_subjects, write_split)
from ..families import FAMILIES
from ..run_folder import RunFolder
from ..validation import Validator



@dataclass
class RunData:
    train_dataset: object
    validator: Validator | None
    split: dict
    summary: dict = field(default_factory=dict)
    report: str = ""


def _cache_options(config) -> dict:
    d = config.data
    return dict(dataclasses.asdict(d.grid), low=d.low_percentile, high=d.high_percentile,
                min_foreground=d.min_foreground, max_slices_per_subject=d.max_slices_per_subject or None)


def discover(config):
    """The discovery report of the paired data (manifest or folder), limited to ``max_subjects``."""
    d = config.data
    report = read_manifest(d.manifest) if d.manifest else discover_subjects(d.root)
    if d.max_subjects:
        report.subjects = sorted(report.subjects, key=lambda s: s.id)[:d.max_subjects]
    return report


def prepare_data(config, run_dir, context: distributed.DistributedContext, resume: bool = False,
                 log=print) -> RunData:
    run_dir = Path(run_dir)
    run = RunFolder(run_dir)
    cache_root = Path(config.data.cache_dir) if config.data.cache_dir else run.cache
    if config.data.mode == "unpaired":
        return _prepare_unpaired(config, run_dir, cache_root, context, log)

    report = discover(config)
    for subject in report.subjects:
        check_pair(subject)
    split_path = run.split
    if resume and split_path.exists():
        split = read_split(split_path)
    elif config.data.split_file:
        split = read_split(config.data.split_file)
        if context.is_main:
            write_split(split, split_path)
    else:
        split = split_subjects(report.subjects, tuple(config.data.split), seed=config.data.split_seed)
        if context.is_main:
            write_split(split, split_path)
    by_id = {s.id: s for s in report.subjects}
    missing = [i for name in ("train", "val") for i in split[name] if i not in by_id]
    if missing:
        raise InputError(f"{RunFolder.SPLIT} names subject(s) that are no longer found: {', '.join(missing)}")
    train_subjects = [by_id[i] for i in split["train"]]
    val_subjects = [by_id[i] for i in split["val"]]
    if context.is_main:
        log(format_report(report))
        log(f"split: {len(train_subjects)} train, {len(val_subjects)} validation, {len(split['test'])} test subjects")

    cache_dir = cache_root / f"paired-{config.data.direction}"
    cache = _build_cache(context, lambda: SliceCache.build(train_subjects, cache_dir, direction=config.data.direction,
                                                           progress=context.is_main, **_cache_options(config)),
                         cache_dir)
    indices = cache.indices_of(split["train"])
    augment = _augmentation(config)
    if not FAMILIES[config.family].needs_aligned_data and not config.loss.supervised:
        dataset = UnpairedSliceDataset(cache, None, indices_a=indices, indices_b=indices, augment=augment,
                                       seed=config.seed)
    else:
        dataset = PairedSliceDataset(cache, indices, augment=augment, seed=config.seed,
                                     crop_size=config.data.crop_size)
    validator = _validator(config, val_subjects)
    summary = _summary(config, split, len(dataset), [s.source for s in train_subjects])
    return RunData(dataset, validator, split, summary, format_report(report))


def _prepare_unpaired(config, run_dir, cache_root, context, log) -> RunData:
    d = config.data
    t1_paths, t2_paths = discover_unpaired(d.t1_dir, d.t2_dir)
    source_paths, target_paths = source_and_target(d.direction, t1_paths, t2_paths)
    source_contrast, target_contrast = source_contrast_of(d.direction).lower(), target_contrast_of(d.direction).lower()
    options = _cache_options(config)
    cache_a_dir, cache_b_dir = cache_root / f"unpaired-{source_contrast}", cache_root / f"unpaired-{target_contrast}"
    cache_a = _build_cache(context, lambda: SliceCache.build_unpaired(
        source_paths, cache_a_dir, contrast=source_contrast, progress=context.is_main, **options), cache_a_dir)
    options_b = dict(options, context_slices=0)
    cache_b = _build_cache(context, lambda: SliceCache.build_unpaired(
        target_paths, cache_b_dir, contrast=target_contrast, progress=context.is_main, **options_b), cache_b_dir)
    dataset = UnpairedSliceDataset(cache_a, cache_b, augment=_augmentation(config), seed=config.seed)
    split = {"train": [p.name for p in source_paths + target_paths], "val": [], "test": []}
    val_subjects = []
    if (d.manifest or d.root) and (d.manifest or Path(d.root).is_dir()):
        val_subjects = discover(config).subjects
        split["val"] = [s.id for s in val_subjects]
    if context.is_main:
        log(f"unpaired: {len(source_paths)} {source_contrast.upper()} and {len(target_paths)} "
            f"{target_contrast.upper()} volumes; {len(val_subjects)} paired validation subjects")
        write_split(split, RunFolder(run_dir).split)
    summary = _summary(config, split, len(dataset), [])
    return RunData(dataset, _validator(config, val_subjects), split, summary)


def _augmentation(config) -> AugmentConfig:
    preset = AugmentConfig.preset(config.data.augment_preset if config.data.augment else "none")
    return dataclasses.replace(preset, off=tuple(config.data.augment_off))


def _build_cache(context, build, cache_dir):
    """Rank 0 builds (or reuses) the cache; the others wait, then open it."""
    cache = build() if context.is_main else None
    distributed.barrier(context)
    return cache if cache is not None else SliceCache.open(cache_dir)


def _validator(config, subjects):
    if not subjects:
        return None
    if config.validation.max_subjects:
        subjects = subjects[:config.validation.max_subjects]
    return Validator(subjects, config.data.direction, config.data.low_percentile, config.data.high_percentile,
                     batch_size=config.validation.batch_size)


def _summary(config, split, n_slices, sources) -> dict:
    d = config.data
    return {"mode": d.mode, "data": d.manifest or d.root if d.mode == "paired" else f"{d.t1_dir} | {d.t2_dir}",
            "train_subjects": len(split["train"]), "val_subjects": len(split["val"]),
            "test_subjects": len(split["test"]), "train_subject_ids": list(split["train"]),
            "val_subject_ids": list(split["val"]), "train_sources": sorted(set(sources)),
            "train_slices": n_slices, "split_seed": d.split_seed, "split_fractions": list(d.split),
            "augment": d.augment_preset if d.augment else "none", "crop_size": d.crop_size}
