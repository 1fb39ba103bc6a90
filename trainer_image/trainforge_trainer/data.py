"""Data loading: one shuffled order shared by all ranks, exact evaluation shards, device transfer."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .batches import BatchSource, MapBatches
from .dist import World

if TYPE_CHECKING:
    from trainforge.spec import TrainingJobSpec

    from .task import Task


def loader_workers(requested: int | None, cpus_per_worker: float, in_memory: bool) -> int:
    if requested is not None:
        return requested
    return 0 if in_memory else min(int(cpus_per_worker), 4)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can begin part-way through an epoch: a resumed run skips the samples
    it already trained on without loading them. Same seed on every rank: the permutation is one
    global order, split by rank."""

    start = 0
    """Samples of this rank's share to skip in the current epoch (a multiple of the batch size)."""

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


def train_loader(dataset: Dataset, batch_size: int, world: World, seed: int, workers: int) -> DataLoader:
    sampler = ResumableSampler(dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=world.device.type == "cuda", persistent_workers=workers > 0, drop_last=False,
    )


def training_batches(task: Task, spec: TrainingJobSpec, world: World, workers: int) -> tuple[Any, BatchSource]:
    """The training loader and its groups of micro-batches, for a map-style dataset or a stream."""
    from .stream import is_stream, stream_batches  # torchdata: imported only where a stream is read

    k = spec.batch.grad_accumulation
    if is_stream(task.train):
        source = stream_batches(task.train, spec.batch.size, k, spec.steps_per_epoch, world, workers)
        return source.loader, source
    loader = train_loader(task.train, spec.batch.size, world, spec.seed, workers)
    return loader, MapBatches(loader, k, spec.steps_per_epoch)


def eval_loader(dataset: Dataset, batch_size: int, world: World, workers: int) -> DataLoader:
    """Strided shard without padding: every sample is counted exactly once across ranks, so sums
    all-reduced over ranks give the exact metric (DistributedSampler pads with duplicates)."""
    shard = Subset(dataset, range(world.rank, len(dataset), world.size))  # type: ignore[arg-type]
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=world.device.type == "cuda")


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def batch_size_of(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, list | tuple):
        return batch_size_of(batch[0])
    if isinstance(batch, dict):
        return batch_size_of(next(iter(batch.values())))
    raise TypeError(f"cannot tell the batch size of {type(batch).__name__}")


def to_float(outputs: Any) -> Any:
    """Upcast floating outputs so the loss is computed in fp32 whatever the autocast dtype."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, list | tuple):
        return type(outputs)(to_float(o) for o in outputs)
    if isinstance(outputs, dict):
        return {k: to_float(v) for k, v in outputs.items()}
    return outputs
