"""`trainforge run --dry-run`: everything a run checks before it trains, without Ray or a GPU.

The task is built from the spec, the model on the meta device (no memory, any size), one training
batch (and one validation batch) goes through the task's forward, loss and metrics on the meta
device, so shapes and dtypes are checked; then the plan is printed: world size, parameters, global
batch, steps per epoch, and the resources asked against what this machine has (a warning: a
cluster is sized elsewhere)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset
from trainforge.spec import TrainingJobSpec

from . import lora
from .batches import capped_micro
from .code_env import runtime_env_of
from .components import total_steps_of
from .data import to_device
from .freezing import GroupError, check_patterns, names_of
from .launch import PreflightError, preflight_task
from .task import Task


@dataclass
class DryRunPlan:
    rows: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, key: str, value: Any) -> None:
        self.rows.append((key, str(value)))

    def as_dict(self) -> dict[str, Any]:
        return {"plan": dict(self.rows), "warnings": list(self.warnings)}


def dry_run(spec: TrainingJobSpec, cluster: dict[str, float] | None = None) -> DryRunPlan:
    """Check the job as far as can be done without training; raise PreflightError naming the field.

    Args:
        spec: the job.
        cluster: resources to compare the ask with (default: this machine's CPUs and GPUs).
    """
    plan = DryRunPlan()
    runtime_env_of(spec)  # the task may live in spec.runtime.workingDir
    torch.manual_seed(spec.seed)
    task = preflight_task(spec)
    plan.add("task", spec.task.resolved_entrypoint)
    plan.add("workers", f"{spec.workers} x {spec.strategy.type}, {spec.precision}"
             + (", compiled" if spec.compile else ""))
    with torch.device("meta"):
        model = task.model()
        try:
            model = lora.inject(model, spec.lora) if spec.lora is not None else model
            check_patterns(sorted(set(names_of(model).values())), spec)
        except (GroupError, lora.LoraError) as exc:
            raise PreflightError(str(exc)) from exc
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    plan.add("parameters", f"{params:,}" + (f" ({trainable:,} trainable)" if trainable != params else ""))
    global_batch = spec.batch.size * spec.batch.grad_accumulation * spec.workers
    plan.add("global batch", f"{global_batch} ({spec.workers} workers x {spec.batch.size} x "
                             f"{spec.batch.grad_accumulation} accumulation)")
    _data_rows(plan, spec, task)
    _check_batches(plan, spec, task, model)
    _resources(plan, spec, cluster if cluster is not None else this_machine())
    return plan


def _data_rows(plan: DryRunPlan, spec: TrainingJobSpec, task: Task) -> None:
    k = spec.batch.grad_accumulation
    if isinstance(task.train, IterableDataset):
        plan.add("train samples", "a stream (IterableDataset), split by rank"
                 + (" (the dataset shards itself)" if hasattr(task.train, "set_shard") else " (striped)"))
        micro = None
    else:
        n = len(task.train)  # type: ignore[arg-type]
        plan.add("train samples", f"{n:,}")
        micro = math.ceil(math.ceil(n / spec.workers) / spec.batch.size)  # DistributedSampler's share, batched
    micro = capped_micro(micro, spec.steps_per_epoch, k)
    per_epoch = None if micro is None else math.ceil(micro / k)
    plan.add("steps per epoch", per_epoch if per_epoch is not None else "a pass over the stream (unknown ahead)")
    plan.add("total steps", total_steps_of(spec, per_epoch))
    for name, ds in (("val samples", task.val), ("test samples", task.test)):
        if ds is not None:
            plan.add(name, "a stream" if isinstance(ds, IterableDataset) else f"{len(ds):,}")  # type: ignore[arg-type]


def _first(dataset: Any, batch_size: int) -> Any:
    return next(iter(DataLoader(dataset, batch_size=batch_size, num_workers=0)))


def _check_batches(plan: DryRunPlan, spec: TrainingJobSpec, task: Task, model: torch.nn.Module) -> None:
    """The first training batch through forward and loss (and a validation batch through metrics),
    on the meta device: shapes and dtypes must fit, nothing is computed."""
    meta = torch.device("meta")
    try:
        batch = _first(task.train, spec.batch.size)
    except StopIteration:
        raise PreflightError("spec.task: the training set yields no batch") from None
    except Exception as exc:
        raise PreflightError(f"spec.task: loading the first training batch failed: {type(exc).__name__}: "
                             f"{exc}") from exc
    if task.augment:
        batch = task.augment(batch, torch.Generator().manual_seed(spec.seed))
    model.train()
    try:
        outputs = task.forward(model, to_device(batch, meta))
        loss = task.loss(outputs, to_device(batch, meta))
    except Exception as exc:
        raise PreflightError(f"spec.task: the first training batch does not fit the model or the loss: "
                             f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise PreflightError(f"spec.task: the loss must be a scalar tensor, got {_shape(loss)}")
    plan.add("first batch", _shape(batch))
    if task.val is not None and task.metrics is not None:
        model.eval()
        try:
            val = to_device(_first(task.val, spec.batch.eval_size or spec.batch.size), meta)
            sums = task.metrics(task.forward(model, val), val)
        except Exception as exc:
            raise PreflightError(f"spec.task: the first validation batch does not fit the model or the metrics: "
                                 f"{type(exc).__name__}: {exc}") from exc
        plan.add("val metrics", ", ".join(f"val_{k}" for k in sums) or "(none)")


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, list | tuple):
        return "(" + ", ".join(_shape(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shape(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


def this_machine() -> dict[str, float]:
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def _resources(plan: DryRunPlan, spec: TrainingJobSpec, have: dict[str, float]) -> None:
    if spec.queue:
        plan.add("queue", f"{spec.queue} (Kueue admits the job on a cluster; a local run starts at once)")
    asked = {"CPU": spec.workers * spec.cpus_per_worker, "GPU": float(spec.workers * spec.gpus_per_worker)}
    plan.add("resources", f"{spec.workers} x ({spec.cpus_per_worker:g} CPU, {spec.gpus_per_worker} GPU"
             + (f", {spec.memory_per_worker}" if spec.memory_per_worker else "") + ")")
    for kind, amount in asked.items():
        if amount > have.get(kind, 0.0) + 1e-9:
            plan.warnings.append(f"the job asks for {amount:g} {kind}s in all; this machine has {have.get(kind, 0):g} "
                                 "(fine for a cluster; `trainforge run` here would need --workers or fewer "
                                 f"spec.{'cpusPerWorker' if kind == 'CPU' else 'gpusPerWorker'})")
