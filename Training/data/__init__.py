"""Training data: find subjects, split them, cache their slices, augment, serve them to PyTorch.

Flow: :func:`discover_subjects` / :func:`read_manifest` -> :func:`check_pair` ->
:func:`split_subjects` -> :meth:`SliceCache.build` (the inference preprocessing, once) ->
:class:`PairedSliceDataset` / :class:`UnpairedSliceDataset` (+ :func:`augment_pair`).
"""

from .augment import AugmentConfig, augment_pair
from .cache import SliceCache
from .datasets import PairedSliceDataset, UnpairedSliceDataset
from .discovery import (DiscoveryReport, Subject, check_pair, discover_subjects, discover_unpaired,
                        format_report, read_manifest)
from .split import read_split, split_subjects, write_split

__all__ = ["AugmentConfig", "augment_pair", "SliceCache", "PairedSliceDataset", "UnpairedSliceDataset",
           "DiscoveryReport", "Subject", "check_pair", "discover_subjects", "discover_unpaired", "format_report",
           "read_manifest", "read_split", "split_subjects", "write_split"]
