"""The contract between trainforge and a training task, and how a task is found.

A task is any function `build(**args) -> Task`, named in the spec as "package.module:function".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

Batch = Any
"""Whatever the DataLoader yields for the task; moved to the device tensor by tensor."""


def default_forward(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(batch[0])


@dataclass
class Task:
    """What a task hands the engine. Only `model`, `train` and `loss` are required.

    - model: factory returning a fresh nn.Module (called once per worker, same seed on every rank).
    - loss(outputs, batch): mean loss of the batch; called outside autocast on fp32 outputs.
    - metrics(outputs, batch): *sums* over the batch, e.g. {"correct": n_correct}; the engine
      all-reduces them with the sample count and reports name / count as val_<name>, test_<name>.
    - blocks(model): the repeated sub-modules (transformer blocks) that FSDP2 shards one by one
      and activation checkpointing wraps; by default the model's direct children.
    - augment(batch, generator): training-only augmentation drawing from a per-rank generator.
    - curriculum(batch, step): training-only change by optimizer step (after augment).
    - tokens_per_sample / flops_per_sample: for tokens/s and MFU reporting.

    Note:
        `train` may be an `IterableDataset` (a stream, see `stream.py`): with `set_shard(rank,
        world_size)` it shards itself, and with `state_dict()`/`load_state_dict()` a resumed run
        continues exactly where the checkpoint was taken. `val` and `test` are map-style.
    """

    model: Callable[[], nn.Module]
    train: Dataset
    loss: Callable[[Any, Batch], torch.Tensor]
    val: Dataset | None = None
    test: Dataset | None = None
    metrics: Callable[[Any, Batch], dict[str, torch.Tensor]] | None = None
    forward: Callable[[nn.Module, Batch], Any] = default_forward
    blocks: Callable[[nn.Module], Sequence[nn.Module]] | None = None
    augment: Callable[[Batch, torch.Generator], Batch] | None = None
    curriculum: Callable[[Batch, int], Batch] | None = None
    """A training batch changed by the 0-based optimizer step it is for (e.g. gpt's sequence-length
    warm-up); a function of the step alone, so a resume sees the same."""
    tokens_per_sample: int | None = None
    flops_per_sample: float | None = None
    in_memory: bool = False
    """Datasets are tensors already in memory: DataLoader worker processes would only add IPC."""
    extra: dict[str, Any] = field(default_factory=dict)


class TaskLoadError(ValueError):
    """The spec's task entrypoint cannot be imported or does not build a Task."""


def resolve(entrypoint: str) -> Callable[..., Task]:
    module_name, _, func_name = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskLoadError(f"spec.task.entrypoint: cannot import module {module_name!r}: {exc}") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise TaskLoadError(f"spec.task.entrypoint: module {module_name!r} has no function {func_name!r}")
    return func


def build_task(entrypoint: str, args: dict[str, Any]) -> Task:
    func = resolve(entrypoint)
    try:
        task = func(**args)
    except TypeError as exc:
        raise TaskLoadError(f"spec.task.args do not fit {entrypoint}: {exc}") from exc
    if not isinstance(task, Task):
        raise TaskLoadError(f"spec.task.entrypoint: {entrypoint} returned {type(task).__name__}, not a Task")
    return task
