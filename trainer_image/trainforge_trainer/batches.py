"""Where a worker's micro-batches come from, grouped into optimizer steps.

A map-style dataset goes through `ResumableSampler`: one shuffled global order split by rank, every
rank the same number of micro-batches, skipped ahead exactly on resume. An `IterableDataset` is a
stream: each rank reads its own shard (see `stream.py`), an epoch is one pass over it (cut at
spec.stepsPerEpoch), the ranks agree on each step's micro-batch count so they stop together when the
shortest shard ends, and torchdata's `StatefulDataLoader` keeps every rank's position for resume.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader

from . import dist
from .dist import World
from .train_state import Position

log = logging.getLogger("trainforge.data")

Group = list[Any]
"""The micro-batches of one optimizer step, as the loader gave them (on the host)."""


class BatchSource(Protocol):
    micro_per_epoch: int | None
    """Micro-batches per rank in a whole epoch; None for a stream without spec.stepsPerEpoch."""

    def open(self, pos: Position) -> Iterator[Group]:
        """The rest of the epoch at `pos`, one group per optimizer step. The loader's iterator is created
        before this returns (creating it draws from the torch RNG, see `RNGState.apply_pending`)."""
        ...

    def epoch_done(self, micro_in_epoch: int) -> bool:
        """Whether an epoch with this many micro-batches trained is known to be complete."""
        ...


def capped_micro(micro: int | None, steps_per_epoch: int | None, k: int) -> int | None:
    """Micro-batches per epoch once spec.stepsPerEpoch cuts it (None: unknown, a stream's)."""
    if steps_per_epoch is None:
        return micro
    cap = steps_per_epoch * k
    return cap if micro is None else min(micro, cap)


class MapBatches:
    """Groups from a map-style dataset; every rank has the same count (DistributedSampler pads)."""

    def __init__(self, loader: DataLoader, grad_accumulation: int, steps_per_epoch: int | None) -> None:
        self.loader, self.k = loader, grad_accumulation
        whole = math.ceil(loader.sampler.num_samples / loader.batch_size)  # type: ignore[attr-defined,operator]
        self.micro_per_epoch: int | None = capped_micro(whole, steps_per_epoch, grad_accumulation)

    def open(self, pos: Position) -> Iterator[Group]:
        sampler = self.loader.sampler
        sampler.set_epoch(pos.epoch)  # type: ignore[attr-defined]
        sampler.start = pos.micro_in_epoch * self.loader.batch_size  # type: ignore[attr-defined,operator]
        return self._groups(iter(self.loader), pos.micro_in_epoch)

    def _groups(self, batches: Iterator[Any], start: int) -> Iterator[Group]:
        total = self.micro_per_epoch or 0
        for group_start in range(start, total, self.k):
            yield list(itertools.islice(batches, min(self.k, total - group_start)))  # the remainder is flushed

    def epoch_done(self, micro_in_epoch: int) -> bool:
        return micro_in_epoch >= (self.micro_per_epoch or 0)


class StreamBatches:
    """Groups from a stream, and the Stateful of every rank's stream position (a checkpoint part).

    Note:
        Its state is the list of all ranks' loader states (`state_dict` is a collective). Loaded under
        another world size the shards differ, so the position cannot be carried over: the epoch's pass
        restarts, with a warning, as it does for a stream whose dataset keeps no state.
    """

    def __init__(self, loader: Any, grad_accumulation: int, steps_per_epoch: int | None, world: World,
                 stateful: bool) -> None:
        self.loader, self.k, self.world, self.stateful = loader, grad_accumulation, world, stateful
        self.micro_per_epoch = capped_micro(None, steps_per_epoch, grad_accumulation)
        self.pending: dict[str, Any] | None = None

    def open(self, pos: Position) -> Iterator[Group]:
        dataset = self.loader.dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(pos.epoch)
        if pos.micro_in_epoch and self.pending is not None:
            self.loader.load_state_dict(self.pending)
        elif pos.micro_in_epoch:
            log.warning("the training stream's position was not saved with the checkpoint (%s): epoch %d's "
                        "pass restarts from its beginning, %d micro-batches per rank are trained on again",
                        "its dataset keeps no state" if not self.stateful else "it was saved under another world size",
                        pos.epoch, pos.micro_in_epoch)
        self.pending = None
        return self._groups(iter(self.loader), pos.micro_in_epoch)

    def _groups(self, batches: Iterator[Any], start: int) -> Iterator[Group]:
        done = start
        limit = self.micro_per_epoch if self.micro_per_epoch is not None else math.inf
        while done < limit:
            want = int(min(self.k, limit - done))
            group = list(itertools.islice(batches, want))
            agreed = dist.agree_min(len(group))  # the shortest shard ends the pass for every rank
            if agreed == 0:
                return
            yield group[:agreed]
            done += agreed
            if agreed < want:
                return

    def epoch_done(self, micro_in_epoch: int) -> bool:
        return self.micro_per_epoch is not None and micro_in_epoch >= self.micro_per_epoch

    def state_dict(self) -> list[dict[str, Any]]:
        return dist.gather_objects(_checked(self.loader.state_dict()) if self.stateful else {})

    def load_state_dict(self, ranks: list[dict[str, Any]]) -> None:
        if len(ranks) != self.world.size:
            self.pending = None
            return
        self.pending = ranks[self.world.rank] or None


def _checked(state: dict[str, Any]) -> dict[str, Any]:
    """The loader's state, refused here (not at resume) when a safe checkpoint load could not read it
    back: checkpoints are read with `torch.load(weights_only=True)`, which takes tensors, numbers,
    strings, lists, tuples and dicts only."""
    buffer = io.BytesIO()
    try:
        torch.save(state, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception as exc:
        raise TypeError("spec.task: the training dataset's state_dict() holds a value a checkpoint cannot load "
                        "safely; keep it to tensors, numbers, strings, lists and dicts "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    return state
