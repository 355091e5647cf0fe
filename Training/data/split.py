"""Subject-level train/val/test split: all slices of one person stay on one side.

The split is deterministic for a given seed and subject list (the input order does not matter),
and stratified by dataset ``source``: every source with at least two subjects keeps at least one
in training, and the held-out splits take their subjects from as many different sources as
their size allows (a source's share follows its size when there is room for more than one).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from MRISynthesisLib.atomic import atomic_path
from MRISynthesisLib.errors import InputError, OutputError

SPLIT_NAMES = ("train", "val", "test")


def _counts(n: int, fractions) -> list[int]:
    """Subjects per split: largest remainder of ``n * fraction``, at least 1 where fraction > 0."""
    raw = [n * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    for i, f in enumerate(fractions):
        if f > 0 and counts[i] == 0:
            donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def _ids_and_sources(subjects) -> dict[str, str]:
    sources: dict[str, str] = {}
    for subject in subjects:
        subject_id = subject if isinstance(subject, str) else subject.id
        if subject_id in sources:
            raise InputError(f"subject id '{subject_id}' appears twice; subject ids must be unique")
        sources[subject_id] = "other" if isinstance(subject, str) else str(getattr(subject, "source", "other"))
    return sources


def split_subjects(subjects, fractions=(0.8, 0.1, 0.1), seed: int = 42) -> dict[str, list[str]]:
    """``{'train': [ids], 'val': [ids], 'test': [ids]}`` (each sorted) from Subjects or id strings.

    ``fractions`` (train, val, test) must be non-negative and sum to 1, with train > 0. Every
    split whose fraction is non-zero gets at least one subject; fewer subjects than such splits
    raises :class:`InputError`.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 or not math.isfinite(f) for f in fractions) or fractions[0] <= 0:
        raise InputError(f"split fractions must be three non-negative numbers (train, val, test) with train > 0, "
                         f"got {fractions}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise InputError(f"split fractions must sum to 1, got {fractions} (sum {sum(fractions):g})")
    sources = _ids_and_sources(subjects)
    needed = sum(f > 0 for f in fractions)
    if len(sources) < needed:
        names = "/".join(n for n, f in zip(SPLIT_NAMES, fractions) if f > 0)
        raise InputError(f"{len(sources)} subject(s) are too few for a {names} split: at least {needed} are needed "
                         f"(one per split); add subjects or set the val/test fractions to 0")
    counts = dict(zip(SPLIT_NAMES, _counts(len(sources), fractions)))
    rng = np.random.default_rng(seed)

    groups: dict[str, list[str]] = {}
    for subject_id in sorted(sources):
        groups.setdefault(sources[subject_id], []).append(subject_id)
    for name in sorted(groups):
        members = groups[name]
        groups[name] = [members[i] for i in rng.permutation(len(members))]
    tie_break = {name: float(key) for name, key in zip(sorted(groups), rng.random(len(groups)))}
    size = {name: len(members) for name, members in groups.items()}

    split = {name: [] for name in SPLIT_NAMES}
    held_out_sources: set[str] = set()
    for name, fraction in zip(SPLIT_NAMES[1:], fractions[1:]):
        in_split: dict[str, int] = {}
        for _ in range(counts[name]):
            def priority(source):
                share = size[source] * fraction
                return (in_split.get(source, 0) < math.floor(share),     # below its proportional share
                        source not in in_split,                          # new to this split
                        source not in held_out_sources,                  # new to every held-out split
                        share - in_split.get(source, 0),                 # largest remaining share
                        tie_break[source])
            # keep one subject of each source for training while other sources can give one
            spare = [s for s in groups if len(groups[s]) > 1] or [s for s in groups if groups[s]]
            source = max(spare, key=priority)
            split[name].append(groups[source].pop(0))
            in_split[source] = in_split.get(source, 0) + 1
            held_out_sources.add(source)
    split["train"] = [subject_id for members in groups.values() for subject_id in members]
    return {name: sorted(ids) for name, ids in split.items()}


def write_split(split: dict, path) -> Path:
    """Write the split as JSON (atomically: temporary file, then rename); returns the path."""
    path = Path(path)
    _validate(split, str(path))
    data = {name: list(split[name]) for name in SPLIT_NAMES}
    try:
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2)
            stream.write("\n")
    except OSError as error:
        raise OutputError(f"cannot write the split to {path}: {error.strerror or error}") from None
    return path


def read_split(path) -> dict[str, list[str]]:
    """Read a split written by :func:`write_split`; checks the keys and that no subject is on two sides."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"split file not found: {path}") from None
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read split file {path}: {error}") from None
    _validate(data, str(path))
    return {name: list(data[name]) for name in SPLIT_NAMES}


def _validate(split, where: str) -> None:
    if not isinstance(split, dict) or any(not isinstance(split.get(n), list) for n in SPLIT_NAMES):
        raise InputError(f"split {where} must map 'train', 'val' and 'test' to lists of subject ids")
    seen: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for subject_id in split[name]:
            if subject_id in seen:
                raise InputError(f"split {where}: subject '{subject_id}' is in both '{seen[subject_id]}' and '{name}'")
            seen[subject_id] = name
