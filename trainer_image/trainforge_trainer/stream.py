"""Streams (`IterableDataset`s): how each rank and loader worker gets its own shard, and the loader.

A dataset that shards itself has `set_shard(rank, world_size)`: it is told its rank once and splits
further by loader worker with `torch.utils.data.get_worker_info()` (as `ShardedFiles` does). Any
other stream is read whole by every rank and worker, each keeping every n-th item (`StripedStream`):
correct for any stream, at the cost of reading all of it everywhere.

Resume is exact when the dataset has `state_dict()`/`load_state_dict()` (torchdata's `Stateful`):
`StatefulDataLoader` saves it per loader worker. Otherwise a resumed epoch restarts its pass (and
says so); torchdata's own fallback, re-reading the stream to skip what was seen, is not used, since
for a large stream that costs as much as the training it replays.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import Stateful, StatefulDataLoader

from .batches import StreamBatches
from .dist import World

log = logging.getLogger("trainforge.data")
# torchdata 0.11 calls torch.set_vital, deprecated since, at every loader iterator: noise, not news.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


class StripedStream(IterableDataset):
    """Every rank and loader worker reads the whole stream and keeps items i with i % n == its slot."""

    def __init__(self, inner: IterableDataset, rank: int, world_size: int) -> None:
        self.inner, self.rank, self.world_size = inner, rank, world_size

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def _slot(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def __iter__(self) -> Iterator[Any]:
        slot, n = self._slot()
        for index, item in enumerate(self.inner):
            if index % n == slot:
                yield item


class StatefulStripedStream(StripedStream):
    """A `StripedStream` over a stream that keeps state: its state is the inner one plus the index."""

    def __init__(self, inner: IterableDataset, rank: int, world_size: int) -> None:
        super().__init__(inner, rank, world_size)
        self.index, self.resuming = 0, False

    def __iter__(self) -> Iterator[Any]:
        slot, n = self._slot()
        start = self.index if self.resuming else 0
        self.resuming = False
        for index, item in enumerate(self.inner, start=start):
            self.index = index + 1
            if index % n == slot:
                yield item

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "inner": self.inner.state_dict()}  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])  # type: ignore[attr-defined]
        self.index, self.resuming = int(state["index"]), True


def is_stream(dataset: Any) -> bool:
    return isinstance(dataset, IterableDataset)


def shard_for(dataset: IterableDataset, world: World) -> IterableDataset:
    """This rank's view of the stream (see the module docstring)."""
    if hasattr(dataset, "set_shard"):
        dataset.set_shard(world.rank, world.size)
        return dataset
    if world.size == 1:
        return dataset
    kind = StatefulStripedStream if isinstance(dataset, Stateful) else StripedStream
    return kind(dataset, world.rank, world.size)


def stream_batches(dataset: IterableDataset, batch_size: int, grad_accumulation: int, steps_per_epoch: int | None,
                   world: World, workers: int) -> StreamBatches:
    """The loader of this rank's shard, as a source of optimizer-step groups."""
    stateful = isinstance(dataset, Stateful)
    if not stateful:
        log.warning("the training stream %s has no state_dict()/load_state_dict(): a run resumed mid-epoch "
                    "restarts that epoch's pass over the stream", type(dataset).__name__)
    loader = StatefulDataLoader(shard_for(dataset, world), batch_size=batch_size, num_workers=workers,
                                pin_memory=world.device.type == "cuda", drop_last=False)
    return StreamBatches(loader, grad_accumulation, steps_per_epoch, world, stateful)
