"""Distributed evaluation by all-reduced sums: exact, and identical on every rank."""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.utils.data import DataLoader

from .data import batch_size_of, to_device, to_float
from .dist import World, all_reduce_max, all_reduce_sum
from .parallel import unwrap
from .precision import Precision
from .task import Task


@torch.no_grad()
def evaluate(
    model: nn.Module, task: Task, loader: DataLoader, world: World, precision: Precision,
    prefix: str, sharded: bool, max_batches: int | None = None,
) -> dict[str, float]:
    """Metric sums over this rank's shard, all-reduced with the sample count; returns prefix_<name>.

    FSDP2 all-gathers parameters inside every forward, so all ranks must run the same number of
    forwards: a rank whose shard is shorter repeats a batch and discards the result.
    """
    net = model if sharded else unwrap(model)  # DDP's forward would broadcast buffers collectively
    was_training = net.training
    net.eval()
    n_local = len(loader) if max_batches is None else min(len(loader), max_batches)
    n_steps = n_local
    if sharded:
        n_steps = int(all_reduce_max(torch.tensor(n_local, device=world.device)).item())
    sums: dict[str, torch.Tensor] = {}
    count = torch.zeros((), device=world.device, dtype=torch.float64)
    last = None
    batches = itertools.islice(loader, n_local)
    for i in range(n_steps):
        real = i < n_local
        batch = to_device(next(batches), world.device) if real else last
        last = batch
        with precision.autocast():
            outputs = task.forward(net, batch)
        if not real:
            continue
        outputs = to_float(outputs)
        values = task.metrics(outputs, batch) if task.metrics else {"loss": task.loss(outputs, batch) *
                                                                     batch_size_of(batch)}
        for name, value in values.items():
            sums[name] = sums.get(name, torch.zeros((), device=world.device, dtype=torch.float64)) + value.double()
        count += batch_size_of(batch)
    names = sorted(sums)  # same on every rank: each holds at least one batch (checked at start-up)
    packed = torch.stack([sums.get(n, torch.zeros((), device=world.device, dtype=torch.float64)) for n in names]
                         + [count])
    all_reduce_sum(packed)
    net.train(was_training)
    total = float(packed[-1])
    return {f"{prefix}_{n}": float(packed[i]) / max(total, 1.0) for i, n in enumerate(names)}

