"""The training loop as a Ray Train worker: its entry, its rank announcement and its checkpoint store.
Everything Ray-specific on the worker side is here; `worker.run_worker` is launcher-agnostic."""

from __future__ import annotations

import os
import socket
from typing import Any

from trainforge.checkpoints.owner import RunOwner
from trainforge.spec import TrainingJobSpec

from .checkpoint.store import RayStore, Store, run_dir_store
from .reporting import RayReporter
from .worker import run_worker

RANK_ANNOUNCEMENT = "trainforge worker rank={rank} world_size={world} host={host} pid={pid}"


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry: the spec arrives as JSON-compatible data, never as shell text."""
    spec = TrainingJobSpec.model_validate(config["spec"])
    announce_rank()
    run_worker(spec, config.get("run_dir"), reporter=RayReporter(), preempt_flag=config.get("preempt_flag"),
               init_from=config.get("init_from"), make_store=make_store,
               owner=RunOwner.from_dict(config["owner"]) if config.get("owner") else None)


def make_store(run_dir: str | None, spec: TrainingJobSpec) -> Store | None:
    """Ray Train's storage when running under it; else the run directory (local or remote) if any."""
    try:
        from ray.train import get_context

        get_context()
        return RayStore()
    except Exception:
        return run_dir_store(run_dir, spec.checkpoint)


def announce_rank() -> None:
    """One line per worker start, which the driver log shows behind Ray's `(RayTrainWorker pid=…)`
    prefix: `trainforge logs --rank R` maps that prefix to the rank through it."""
    import ray.train

    ctx = ray.train.get_context()
    line = RANK_ANNOUNCEMENT.format(rank=ctx.get_world_rank(), world=ctx.get_world_size(),
                                    host=socket.gethostname(), pid=os.getpid())
    # Straight to fd 1: Ray Train copies print() into its logger, whose stderr handler would show
    # the line twice in the driver log.
    os.write(1, f"{line}\n".encode())
