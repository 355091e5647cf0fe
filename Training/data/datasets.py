"""PyTorch datasets over a :class:`~Training.data.cache.SliceCache`.

Randomness (augmentation, the unpaired partner slice) is drawn from a generator seeded by
``(seed, epoch, cache index)``: the same item of the same epoch is identical in any worker, after
a resume and under ``DistributedSampler``. Call ``set_epoch(epoch)`` at the start of every epoch
(like ``DistributedSampler.set_epoch``); with ``persistent_workers=True`` the workers keep their
own copy of the dataset, so use non-persistent workers or recreate the loader each epoch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from MRISynthesisLib.errors import InputError

from .augment import AugmentConfig, augment_pair
from .cache import SliceCache


def item_generator(seed: int, epoch: int, index: int, stream: int = 0) -> torch.Generator:
    """A torch generator determined by (seed, epoch, index, stream) and nothing else."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(index), int(stream)]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _indices(cache: SliceCache, indices) -> np.ndarray:
    indices = np.arange(len(cache)) if indices is None else np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(cache)):
        raise InputError(f"slice indices must lie in 0..{len(cache) - 1} for the cache at {cache.path}")
    if indices.size == 0:
        raise InputError(f"no slices selected from the cache at {cache.path} (empty subject list?)")
    return indices


def _tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))


class _SeededSliceDataset(Dataset):
    """Shared state of the slice datasets: the slices served, augmentation, seed and epoch."""

    def __init__(self, indices: np.ndarray, augment: AugmentConfig | None, seed: int):
        self.indices = indices
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random draws (call once per epoch, before iterating)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)


#: Probability that a training crop is centred on a brain pixel (else anywhere in the slice).
CROP_ON_BRAIN = 0.9


def random_crop(tensors, mask, size: int, generator: torch.Generator):
    """The same random ``size`` x ``size`` window of every ``(C, S, S)`` tensor in ``tensors`` (and ``mask``).

    The window is centred on a random pixel of ``mask`` with probability :data:`CROP_ON_BRAIN`
    (so crops mostly show brain), else on a uniformly random pixel, and shifted to lie inside
    the slice. ``size`` 0 or at least the slice size returns the inputs unchanged.
    """
    rows, cols = mask.shape[-2:]
    if not size or size >= min(rows, cols):
        return tensors, mask
    on_brain = float(torch.rand((), generator=generator)) < CROP_ON_BRAIN
    uniform = torch.rand(2, generator=generator)
    pick = torch.rand((), generator=generator)
    brain = torch.nonzero(mask[0] > 0)
    if on_brain and len(brain):
        r, c = (int(v) for v in brain[min(int(pick * len(brain)), len(brain) - 1)])
    else:
        r, c = int(uniform[0] * rows), int(uniform[1] * cols)
    top = min(max(r - size // 2, 0), rows - size)
    left = min(max(c - size // 2, 0), cols - size)
    window = (slice(None), slice(top, top + size), slice(left, left + size))
    return [None if t is None else t[window] for t in tensors], mask[window]


class PairedSliceDataset(_SeededSliceDataset):
    """Aligned (source, target) slices for supervised models (Pix2Pix, supervised U-Net, VAE, ...).

    ``indices``: cache slice indices to use (e.g. ``cache.indices_of(split['train'])``; None = all).
    ``augment``: an :class:`AugmentConfig` or None (no augmentation).
    ``crop_size``: serve random ``crop_size`` x ``crop_size`` windows (mostly on the brain, see
    :func:`random_crop`) of the augmented slices; 0 = whole slices.
    Items: ``{'source': float32 (C, S, S), 'target': float32 (1, S, S), 'mask': float32 (1, S, S),
    'subject': int}`` where ``subject`` indexes ``cache.subject_ids`` (S = ``crop_size`` when set).
    """

    def __init__(self, cache: SliceCache, indices=None, augment: AugmentConfig | None = None, seed: int = 0,
                 crop_size: int = 0):
        if cache.target is None:
            raise InputError(f"the cache at {cache.path} holds one contrast only; paired training needs a paired cache")
        super().__init__(_indices(cache, indices), augment, seed)
        self.cache = cache
        self.crop_size = int(crop_size)

    def __getitem__(self, i: int) -> dict:
        k = int(self.indices[i])
        source = _tensor(self.cache.source[k])
        target = _tensor(self.cache.target[k])
        mask = _tensor(self.cache.mask[k])
        if self.augment is not None and self.augment.enabled:
            source, target, mask = augment_pair(source, target, mask, self.augment,
                                                item_generator(self.seed, self.epoch, k))
        if self.crop_size:
            (source, target), mask = random_crop([source, target], mask, self.crop_size,
                                                 item_generator(self.seed, self.epoch, k, stream=1))
        return {"source": source, "target": target, "mask": mask, "subject": int(self.cache.subject_index[k])}


class UnpairedSliceDataset(_SeededSliceDataset):
    """Unaligned slices of two domains for CycleGAN/UNIT.

    ``cache_a`` gives domain A (its ``source`` slices, all context channels); ``cache_b`` gives
    domain B: the ``target`` slice of a paired cache, or the centre channel of a single-contrast
    cache's ``source`` (:meth:`SliceCache.build_unpaired`). ``cache_b=None`` uses ``cache_a``'s
    targets; then, and whenever both caches are the same folder, the B slice is drawn from another
    subject when there is one (never the aligned slice), so the pairs carry no correspondence.
    Items: ``{'a': (C, S, S), 'mask_a': (1, S, S), 'b': (1, S, S), 'mask_b': (1, S, S),
    'subject_a': int, 'subject_b': int}``; A and B are augmented independently.
    """

    def __init__(self, cache_a: SliceCache, cache_b: SliceCache | None = None, indices_a=None, indices_b=None,
                 augment: AugmentConfig | None = None, seed: int = 0):
        super().__init__(_indices(cache_a, indices_a), augment, seed)
        self.cache_a = cache_a
        self.cache_b = cache_a if cache_b is None else cache_b
        self.indices_b = _indices(self.cache_b, indices_b)
        self.same_cache = self.cache_b.path.resolve() == cache_a.path.resolve()

    @property
    def indices_a(self) -> np.ndarray:
        return self.indices

    def _partner(self, k_a: int, generator: torch.Generator) -> int:
        choices = self.indices_b
        if self.same_cache:
            subject_b = np.asarray(self.cache_b.subject_index)[choices]
            other = choices[subject_b != self.cache_a.subject_index[k_a]]
            choices = other if other.size else choices[choices != k_a]
            if choices.size == 0:
                choices = self.indices_b  # a single slice in all: nothing else to draw
        return int(choices[int(torch.randint(len(choices), (), generator=generator))])

    def __getitem__(self, i: int) -> dict:
        k_a = int(self.indices_a[i])
        generator = item_generator(self.seed, self.epoch, k_a)
        k_b = self._partner(k_a, generator)
        a, mask_a = _tensor(self.cache_a.source[k_a]), _tensor(self.cache_a.mask[k_a])
        if self.cache_b.target is not None:
            b = _tensor(self.cache_b.target[k_b])
        else:
            centre = self.cache_b.source.shape[1] // 2
            b = _tensor(self.cache_b.source[k_b, centre:centre + 1])
        mask_b = _tensor(self.cache_b.mask[k_b])
        if self.augment is not None and self.augment.enabled:
            a, _, mask_a = augment_pair(a, None, mask_a, self.augment, generator)
            b, _, mask_b = augment_pair(b, None, mask_b, self.augment, generator)
        return {"a": a, "mask_a": mask_a, "b": b, "mask_b": mask_b,
                "subject_a": int(self.cache_a.subject_index[k_a]), "subject_b": int(self.cache_b.subject_index[k_b])}
