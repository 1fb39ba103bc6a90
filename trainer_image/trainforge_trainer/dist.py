"""Process-group set-up for any launcher (Ray Train or torchrun) and small collective helpers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as torch_dist

PG_TIMEOUT = timedelta(minutes=30)
"""Long enough for a checkpoint upload or a slow eval on one rank; short enough to surface hangs."""


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(use_gpu: bool) -> str:
    return "nccl" if use_gpu else "gloo"


def setup(use_gpu: bool) -> World:
    """Join (or, under torchrun, create) the default process group and pick this rank's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_gpu:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if use_gpu else torch.device("cpu")
    if not torch_dist.is_initialized() and "WORLD_SIZE" in os.environ:
        # torchrun: env:// rendezvous. Under Ray Train, TorchTrainer has already initialised it.
        torch_dist.init_process_group(backend_for(use_gpu), timeout=PG_TIMEOUT,
                                      device_id=device if use_gpu else None)
    if torch_dist.is_initialized():
        return World(torch_dist.get_rank(), local_rank, torch_dist.get_world_size(), device)
    return World(0, 0, 1, device)


def distributed() -> bool:
    """A process group of more than one rank: collectives are needed (and would hang if skipped)."""
    return torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if distributed():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if distributed():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
    return tensor


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    if distributed():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MIN)
    return tensor


_cpu_groups: dict[int, Any] = {}
"""A host-side (gloo) group per default group: a process may see more than one (tests, restarts)."""


def agree_min(count: int) -> int:
    """The smallest `count` of all ranks (a collective), over gloo on the host: with NCCL a device
    tensor would make the host wait for the queued GPU work each time it is asked."""
    if not distributed():
        return count
    world = torch_dist.group.WORLD
    if id(world) not in _cpu_groups:
        gloo = torch_dist.get_backend() == "gloo"
        _cpu_groups.clear()
        _cpu_groups[id(world)] = world if gloo else torch_dist.new_group(backend="gloo")
    value = torch.tensor([count], dtype=torch.int64)
    torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MIN, group=_cpu_groups[id(world)])
    return int(value.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (a collective)."""
    if not distributed():
        return [obj]
    out: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (a collective): one decision, taken where the data is."""
    if not distributed():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown_if_owned() -> None:
    """Destroy the group only when torchrun made us create it; Ray Train owns its own."""
    if torch_dist.is_initialized() and "TORCHELASTIC_RUN_ID" in os.environ:
        torch_dist.destroy_process_group()


def same_on_all_ranks(compute: Callable[[], Any] | None, keep: tuple[type[Exception], ...] = (OSError,)) -> Any:
    """Rank 0's `compute()` on every rank; when it raises, every rank raises, instead of the other
    ranks waiting for a broadcast that never comes.

    Args:
        compute: the function on rank 0, None on every other rank.
        keep: error types re-raised as themselves on every rank (others become RuntimeError with
            rank 0's message), so that callers can tell a storage error from a bug.
    """
    if compute is None:
        value, error = from_main(None)
    else:
        try:
            value, error = compute(), None
        except Exception as exc:
            from_main((None, (type(exc), str(exc))))
            raise
        from_main((value, None))
    if error is not None:
        kind, message = error
        raise (kind if issubclass(kind, keep) else RuntimeError)(message)
    return value
