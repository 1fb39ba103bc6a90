"""What one worker trains with, built once from the spec (`build`), and the two steps every loop
takes: a micro-batch's forward and backward, and the optimizer step."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from trainforge.spec import TrainingJobSpec

from . import dist, lora
from .batches import BatchSource
from .data import eval_loader, loader_workers, to_float, training_batches
from .early_stop import EarlyStopping
from .freezing import freeze_for_good
from .optim import build_optimizer
from .parallel import default_blocks, grad_sync, wrap
from .precision import Precision
from .schedules import LRSchedule, lr_scale
from .task import Task, build_task


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


@dataclass
class TrainComponents:
    """Everything one worker trains with; built once by `build`. The parts a checkpoint holds reach
    the checkpointer as Stateful components (`Loop.stateful`), never as this object."""

    spec: TrainingJobSpec
    world: dist.World
    task: Task
    model: nn.Module
    optimizer: Optimizer
    precision: Precision
    schedule: LRSchedule
    train: Any
    """The training loader: a DataLoader, or torchdata's StatefulDataLoader for a stream."""
    batches: BatchSource
    """The training micro-batches grouped into optimizer steps (`batches.py`)."""
    val: DataLoader | None
    test: DataLoader | None
    augment_rng: torch.Generator
    total_steps: int
    loss_fn: Callable[[Any, Any], torch.Tensor]
    """The training loss on the model's outputs (see `loss_function`)."""
    early: EarlyStopping | None = None
    params: list[nn.Parameter] = field(default_factory=list)

    @property
    def sharded(self) -> bool:
        return self.spec.strategy.type == "fsdp"

    @property
    def micro_per_epoch(self) -> int | None:
        """Micro-batches per rank in a whole epoch; None for a stream of unknown length."""
        return self.batches.micro_per_epoch

    @property
    def steps_per_epoch(self) -> int | None:
        micro = self.micro_per_epoch
        return None if micro is None else math.ceil(micro / self.spec.batch.grad_accumulation)


def total_steps_of(spec: TrainingJobSpec, steps_per_epoch: int | None) -> int:
    """The run's optimizer steps. A stream's epoch has no known length (`steps_per_epoch` None):
    then spec.maxSteps or spec.stepsPerEpoch must give the count."""
    limits = [spec.epochs * steps_per_epoch] if spec.epochs and steps_per_epoch is not None else []
    if spec.max_steps:
        limits.append(spec.max_steps)
    if not limits:
        raise ValueError("spec.maxSteps or spec.stepsPerEpoch: the training data is a stream (an IterableDataset) "
                         "whose length is not known ahead, so spec.epochs alone gives no step count; set either")
    return min(limits)


def loss_function(task: Task, compiled: bool) -> Callable[[Any, Any], torch.Tensor]:
    """The task's loss on its outputs upcast to fp32. With spec.compile it is compiled like the model:
    the upcast then fuses into the loss kernels (forward and backward), so an LM's fp32 logits are
    never written to memory (gpt 1.3b, 16k tokens a step, H100: peak memory 55.2 -> 47.6 GiB and
    3 % more tokens/s; bench/RESULTS.md)."""

    def loss(outputs: Any, batch: Any) -> torch.Tensor:
        return task.loss(to_float(outputs), batch)

    return torch.compile(loss) if compiled else loss


def task_and_model(spec: TrainingJobSpec, device: torch.device) -> tuple[Task, nn.Module]:
    """The task and its freshly initialised model (with spec.lora's adapters), after the seed is set:
    what a run trains, and what `trainforge export` rebuilds to merge a LoRA checkpoint."""
    task = build_task(spec.task.resolved_entrypoint, spec.task.args)
    model = task.model().to(device)
    return task, lora.inject(model, spec.lora) if spec.lora is not None else model


def build(spec: TrainingJobSpec, world: dist.World) -> TrainComponents:
    seed_everything(spec.seed, spec.deterministic)  # same seed on every rank: identical initial weights
    task, model = task_and_model(spec, world.device)
    if spec.optimizer.param_groups or spec.unfreeze:
        freeze_for_good(model, spec)  # before wrapping: DDP and FSDP2 leave those out
    blocks = task.blocks(model) if task.blocks else default_blocks(model)
    model = wrap(model, spec, world, blocks)
    if spec.compile:
        model = torch.compile(model)
    peak = spec.optimizer.lr * lr_scale(spec.lr_scaling, world.size, spec.batch.grad_accumulation)
    optimizer = build_optimizer(model, spec, peak, world.device.type == "cuda")
    workers = loader_workers(spec.batch.loader_workers, spec.cpus_per_worker, task.in_memory)
    train, batches = training_batches(task, spec, world, workers)
    eval_bs = spec.batch.eval_size or spec.batch.size
    val = eval_loader(task.val, eval_bs, world, workers) if task.val is not None else None
    test = eval_loader(task.test, eval_bs, world, workers) if task.test is not None else None
    for name, ds in (("validation", task.val), ("test", task.test)):
        if ds is not None and len(ds) < world.size:  # type: ignore[arg-type]
            raise ValueError(f"the {name} set has {len(ds)} samples, fewer than the {world.size} workers")  # type: ignore[arg-type]
    micro = batches.micro_per_epoch
    total = total_steps_of(spec, None if micro is None else math.ceil(micro / spec.batch.grad_accumulation))
    return TrainComponents(
        spec=spec, world=world, task=task, model=model, optimizer=optimizer,
        precision=Precision(spec.precision, world.device, spec.grad_clip, spec.strategy.type == "fsdp"),
        schedule=LRSchedule(optimizer, spec.schedule, peak, total),
        train=train, batches=batches, val=val, test=test,
        augment_rng=torch.Generator().manual_seed(spec.seed * 7919 + world.rank + 1),  # per-rank stream
        total_steps=total, early=EarlyStopping(spec.early_stopping) if spec.early_stopping else None,
        params=[p for p in model.parameters() if p.requires_grad],
        loss_fn=loss_function(task, spec.compile),
    )


def micro_step(components: TrainComponents, batch: Any, group_size: int, sync: bool) -> torch.Tensor:
    """Forward + backward of one micro-batch; gradients are averaged over the accumulation group.
    Returns the undivided fp32 loss (on the device)."""
    with grad_sync(components.model, sync):
        with components.precision.autocast():
            outputs = components.task.forward(components.model, batch)
        loss = components.loss_fn(outputs, batch)
        components.precision.backward(loss / group_size)
    return loss.detach()


def optimizer_step(components: TrainComponents) -> torch.Tensor:
    norm = components.precision.step(components.optimizer, components.params)
    components.optimizer.zero_grad(set_to_none=True)
    components.schedule.step()
    return norm
