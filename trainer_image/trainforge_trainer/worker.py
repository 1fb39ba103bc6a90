"""A worker's whole run: process group, components, checkpointer, tracking, the loop, and the tidy-up.
Launcher-agnostic: torchrun and Ray Train (`ray_worker`) both call `run_worker`."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import torch
from trainforge.checkpoints.owner import RunOwner
from trainforge.spec import TrainingJobSpec

from . import dist
from .checkpoint.preempt import PreemptionWatch
from .checkpoint.store import Store, run_dir_store
from .components import build
from .loop import Loop
from .model_init import export_model, restore_best
from .profile import StepProfiler
from .reporting import PrintReporter, Reporter
from .runlog import JsonlLog
from .tracking import Tracking, checkpoint_tags

StoreFactory = Callable[[str | None, TrainingJobSpec], Store | None]
"""How a launcher picks the checkpoint store of a run directory (`ray_worker.make_store` under Ray)."""


def store_of_run_dir(run_dir: str | None, spec: TrainingJobSpec) -> Store | None:
    """The store without Ray: the run directory's, local or remote (see `run_dir_store`)."""
    return run_dir_store(run_dir, spec.checkpoint)


def run_worker(spec: TrainingJobSpec, run_dir: str | None = None, reporter: Reporter | None = None,
               preempt_flag: Any = None, init_from: str | None = None,
               make_store: StoreFactory = store_of_run_dir, owner: RunOwner | None = None) -> dict[str, Any]:
    """Train this worker's part of the job. The launcher may choose where reports go (stdout by
    default) and the checkpoint store (`make_store`, called once the model is built)."""
    world = dist.setup(spec.gpus_per_worker > 0 and torch.cuda.is_available())
    try:
        return _fit(spec, world, run_dir, reporter, preempt_flag, init_from, make_store, owner)
    finally:
        # The model (with DDP's reducer, which holds the process group) must be gone before the group
        # is destroyed: freed after it, the reducer drops the group's last reference and gloo's
        # destructor joins its threads holding the GIL while one of them waits for the GIL to free a
        # finished work's tensors — a deadlock seen under torchrun at exit. _fit's frame is released
        # on return; collect() reaps what cycles kept alive.
        gc.collect()
        dist.teardown_if_owned()


def _fit(spec: TrainingJobSpec, world: dist.World, run_dir: str | None, reporter: Reporter | None,
         preempt_flag: Any, init_from: str | None, make_store: StoreFactory,
         owner: RunOwner | None = None) -> dict[str, Any]:
    loop: Loop | None = None
    try:
        components = build(spec, world)
        log = JsonlLog.for_run(run_dir, world.is_main, spec.checkpoint.endpoint, spec.checkpoint.region)
        loop = Loop(components, reporter or PrintReporter(world.is_main), log)
        loop.run_dir = run_dir
        if run_dir and (spec.tracking.mlflow or spec.tracking.tensorboard):
            loop.tracking = Tracking(spec, run_dir, run_dir.rstrip("/").rsplit("/", 1)[-1], world.is_main)
        if spec.profile is not None:
            loop.profiler = StepProfiler(spec.profile, world.rank, run_dir, spec.checkpoint.endpoint,
                                         spec.checkpoint.region)
        store = make_store(run_dir, spec)
        if store is not None:
            loop.ckpt = loop.checkpointer(store, PreemptionWatch(preempt_flag), init_from, owner)
        result = loop.fit()
        if spec.export is not None and result.get("done") and run_dir:
            result["export"] = export_model(export_weights(loop, spec), spec, run_dir, world, result,
                                            loop.components.task.model)
        end_tracking(loop, spec, run_dir, "FINISHED" if result.get("done") else None)
        return result
    except BaseException:
        if loop is not None:
            end_tracking(loop, spec, run_dir, "FAILED")
        raise
    finally:
        if loop is not None:
            loop.watchdog.stop()
        if loop is not None and loop.ckpt is not None:
            loop.ckpt.close()
        if loop is not None:
            loop.log.close()  # after the checkpointer: its last commit is what the upload follows


def export_weights(loop: Loop, spec: TrainingJobSpec) -> torch.nn.Module:
    """The module spec.export.weights names: the model (with the best checkpoint's weights loaded for
    "best"), or spec.ema's average."""
    assert spec.export is not None
    if spec.export.weights == "ema" and loop.ema is not None:
        return loop.ema.module
    if spec.export.weights == "best":
        from trainforge.checkpoints.retention import BestRule

        loop.emit(restore_best(loop.components, loop.ckpt, loop.run_dir, BestRule.for_spec(spec)))
    return loop.components.model


def end_tracking(loop: Loop, spec: TrainingJobSpec, run_dir: str | None, status: str | None) -> None:
    """End the MLflow run with the job's outcome (`status` None: preempted, the next attempt continues)."""
    tracking, loop.tracking = loop.tracking, None
    if tracking is None or not run_dir:
        return
    if status is None:
        tracking.close()
        return
    final = loop.ckpt.last_committed if loop.ckpt else None
    tracking.finish(status, checkpoint_tags(spec, run_dir, final) if tracking.mlflow else {})
