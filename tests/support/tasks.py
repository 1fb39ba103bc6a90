"""Test-only tasks, loaded through the spec's `module:function` entrypoint like any user task.

`paced_digits` is the built-in digits task with two test hooks: a pause per training micro-batch
(so a test can interrupt a run between checkpoints) and, once per run, the death of a worker
process at a given micro-batch (SIGKILL to itself: what an OOM kill or a lost node looks like) or a
hang of one rank at a given micro-batch (it sleeps for good: a deadlock, a read that never returns).
`streamed_digits` is the same with its training set as a stream, stateful or not."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import IterableDataset, Subset
from trainforge_trainer.task import Task, default_forward
from trainforge_trainer.tasks import digits


def paced_digits(pause_s: float = 0.0, die_at_micro: int = 0, die_marker: str = "", hang_at_micro: int = 0,
                 hang_rank: int = 0, hang_marker: str = "", **digits_args: Any) -> Task:
    task = digits.build(**digits_args)
    calls = {"train": 0}

    def forward(model: nn.Module, batch: Any) -> Any:
        if model.training:
            calls["train"] += 1
            if pause_s:
                time.sleep(pause_s)
            if die_at_micro and calls["train"] == die_at_micro and not Path(die_marker).exists():
                Path(die_marker).write_text(str(os.getpid()))  # once: the restarted workers live
                os.kill(os.getpid(), signal.SIGKILL)
            if hang_at_micro and calls["train"] == hang_at_micro and _rank() == hang_rank \
                    and not Path(hang_marker).exists():
                Path(hang_marker).write_text(str(os.getpid()))  # once: the restarted attempt trains on
                while True:
                    time.sleep(3600)
        return default_forward(model, batch)

    task.forward = forward
    return task


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


class DigitsStream(IterableDataset):
    """The digits training set as a stream (what a reader of files or a queue looks like to the engine):
    each epoch a new seeded order, no __len__, no shard of its own (so the engine stripes it)."""

    def __init__(self, samples: Any, seed: int = 0) -> None:
        self.samples, self.seed, self.epoch = samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.samples), generator=generator).tolist()

    def __iter__(self) -> Iterator[Any]:
        for i in self.order():
            yield self.samples[i]


class StatefulDigitsStream(DigitsStream):
    """`DigitsStream` that keeps its position (torchdata's Stateful protocol): resume is exact."""

    def __init__(self, samples: Any, seed: int = 0) -> None:
        super().__init__(samples, seed)
        self.position, self.resume_at = 0, 0

    def __iter__(self) -> Iterator[Any]:
        order, start, self.resume_at = self.order(), self.resume_at, 0
        for index in range(start, len(order)):
            self.position = index + 1  # the state taken once this item is yielded points past it
            yield self.samples[order[index]]

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resume_at, self.epoch = int(state["position"]), int(state["epoch"])


def streamed_digits(stateful: bool = True, limit: int = 0, pause_s: float = 0.0, **digits_args: Any) -> Task:
    """`paced_digits` whose training set is a stream (stateful or not) of its first `limit` samples."""
    task = paced_digits(pause_s=pause_s, **digits_args)
    samples = Subset(task.train, range(limit)) if limit else task.train
    task.train = (StatefulDigitsStream if stateful else DigitsStream)(samples)
    return task
