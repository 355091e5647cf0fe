"""Distributed data-parallel training launched with ``torchrun``.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` reads them and joins
the process group with NCCL on GPUs and gloo on CPUs. Without them (a plain ``python -m
Training``) the run is a single process and nothing here changes the behaviour.

Every process trains on its own shard of each epoch's shuffled slices (:func:`epoch_indices`,
the same permutation as ``DistributedSampler``) and DistributedDataParallel averages the
gradients. Only rank 0 logs, validates and writes files; the other ranks wait at barriers.
BatchNorm layers become SyncBatchNorm on GPUs, so the batch statistics cover the global batch
(PyTorch's SyncBatchNorm runs on GPUs only; on CPU each process keeps its own statistics).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from MRISynthesisLib.device import select_device


@dataclass
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_request: str = "auto") -> DistributedContext:
    """Join the process group when launched by torchrun; choose this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(device=select_device(device_request))
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = device_request in ("auto", "cuda") and torch.cuda.is_available()
    if wants_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if wants_cuda else "gloo")
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup(context: DistributedContext) -> None:
    if context.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        import torch.distributed as dist

        dist.barrier()


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def prepare_module(module: nn.Module, context: DistributedContext) -> nn.Module:
    """SyncBatchNorm conversion (GPU runs with BatchNorm) in place of the BatchNorm layers.

    Returns the module to keep as the 'raw' network (exported and checkpointed); SyncBatchNorm
    has the same state-dict keys as BatchNorm2d, so exported checkpoints load unchanged.
    """
    if context.enabled and context.device.type == "cuda" and has_batchnorm(module):
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def wrap(module: nn.Module, context: DistributedContext) -> nn.Module:
    """``module`` in DistributedDataParallel when distributed (gradients averaged), else itself."""
    if not context.enabled or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def epoch_indices(n_items: int, steps: int, batch_size: int, context: DistributedContext, seed: int,
                  epoch: int) -> list[int]:
    """This rank's dataset indices for ``steps`` batches of ``epoch`` (deterministic in seed, epoch).

    Each pass is a permutation seeded with ``seed + epoch`` (and the pass number), split
    round-robin between the ranks as ``DistributedSampler`` does; more passes are appended when
    ``steps * batch_size`` exceeds one pass.
    """
    needed = steps * batch_size
    out: list[int] = []
    repeat = 0
    while len(out) < needed:
        generator = torch.Generator().manual_seed(seed + epoch * 1_000_003 + repeat * 7919)
        perm = torch.randperm(n_items, generator=generator).tolist()
        usable = len(perm) - len(perm) % context.world_size
        out += perm[context.rank:usable:context.world_size]
        repeat += 1
        if usable == 0:
            raise ValueError(f"{n_items} training slices cannot be shared by {context.world_size} processes")
    return out[:needed]
