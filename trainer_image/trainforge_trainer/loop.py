"""The per-worker training loop: components built from the spec, and epochs of steps, evaluations,
checkpoints and reports. Launcher-agnostic: `worker.run_worker` runs it under torchrun and Ray Train."""

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
from trainforge.checkpoints.owner import RunOwner
from trainforge.spec import TrainingJobSpec

from . import dist, lora
from .batches import BatchSource, StreamBatches
from .checkpoint.files import ModelOptimizer
from .checkpoint.manager import MODEL, TRAIN, Checkpointer
from .checkpoint.preempt import PreemptionWatch
from .checkpoint.rng import RNGState
from .checkpoint.state import Stateful
from .checkpoint.store import Store
from .data import batch_size_of, eval_loader, loader_workers, to_device, to_float, training_batches
from .early_stop import EarlyStopping
from .ema import EmaWeights
from .evaluate import evaluate
from .freezing import Unfreezer, freeze_for_good
from .metrics import TrainMeter, peak_flops
from .model_init import load_pretrained, restore_best
from .optim import build_optimizer
from .parallel import default_blocks, grad_sync, wrap
from .precision import Precision
from .profile import StepProfiler
from .reporting import Reporter
from .runlog import JsonlLog
from .schedules import LRSchedule, lr_scale
from .task import Task, build_task
from .tracking import Tracking
from .train_state import Position, TrainState
from .watchdog import StepWatchdog


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


def build(spec: TrainingJobSpec, world: dist.World) -> TrainComponents:
    seed_everything(spec.seed, spec.deterministic)  # same seed on every rank: identical initial weights
    task = build_task(spec.task.resolved_entrypoint, spec.task.args)
    model = task.model().to(world.device)
    if spec.lora is not None:
        model = lora.inject(model, spec.lora)
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


class Loop:
    """Epochs of accumulation groups, evaluations, early stopping, checkpoints and reports."""

    def __init__(self, components: TrainComponents, reporter: Reporter, log: JsonlLog) -> None:
        self.components, self.reporter, self.log = components, reporter, log
        spec, world = components.spec, components.world
        self.state = TrainState(spec.batch.size, spec.batch.grad_accumulation, world.size, components.total_steps)
        self.rng = RNGState(world.rank, {"augment": components.augment_rng})
        self.ckpt: Checkpointer | None = None
        self.tracking: Tracking | None = None
        self.run_dir: str | None = None
        """The run directory (a path or URI), where restoreBest finds the best checkpoint."""
        self.profiler: StepProfiler | None = None
        """MLflow and TensorBoard (rank 0); set by the launcher, like the checkpointer."""
        self.meter = TrainMeter(world, components.task.tokens_per_sample, components.task.flops_per_sample,
                                peak_flops(world.device))
        self.unfreezer = Unfreezer(components.model, spec) if spec.unfreeze else None
        self.ema = EmaWeights(components.model, spec.ema, components.sharded) if spec.ema else None
        self.watchdog = StepWatchdog(spec.hang_timeout_seconds, world.rank)
        """Ends this worker when its steps stop coming (see watchdog.py); ticked after every step."""

    @property
    def pos(self) -> Position:
        """The train state's data position: where training is."""
        return self.state.position

    def stateful(self) -> dict[str, Stateful]:
        """What a checkpoint of this loop holds, by name (checkpoint.manager says how it lies on disk)."""
        components = self.components
        found: dict[str, Stateful] = {
            MODEL: ModelOptimizer(components.model, components.optimizer, components.sharded,
                                  lora.is_adapter if components.spec.lora else None),
            TRAIN: self.state, "schedule": components.schedule, "precision": components.precision,
            "rng": self.rng,
        }
        if components.early:
            found["early"] = components.early
        if self.tracking is not None:
            found["tracking"] = self.tracking  # the MLflow run id: every attempt continues one run
        if self.ema is not None:
            found["ema"] = self.ema
        if isinstance(components.batches, StreamBatches):
            found["data"] = components.batches  # a map-style position is the train state's alone
        return found

    def checkpointer(self, store: Store, watch: PreemptionWatch | None = None,
                     init_from: str | None = None, owner: RunOwner | None = None) -> Checkpointer:
        """A checkpointer of this loop's Stateful components; the loop uses it once set as `self.ckpt`."""
        components = self.components
        ckpt = Checkpointer(self.stateful(), store, spec=components.spec, world=components.world,
                            total_steps=components.total_steps, watch=watch, init_from=init_from, owner=owner)
        ckpt.pause = self.watchdog.paused  # saves and commits are not a hang
        ckpt.before_commit = self.sync_logs
        return ckpt

    def emit(self, metrics: dict[str, Any]) -> None:
        pos = self.state.position
        record = {"epoch": pos.epoch, "step": pos.step, "total_steps": self.components.total_steps, **metrics}
        self.reporter.report(record)
        if self.components.world.is_main:
            self.log.write(record)
            if self.tracking is not None:
                self.tracking.log(record)

    def sync_logs(self) -> None:
        """Before a checkpoint commits (rank 0): the logs on storage then hold every step up to it."""
        self.log.sync(wait=True)
        if self.tracking is not None:
            self.tracking.sync()

    def resume(self) -> None:
        """Continue from the newest valid checkpoint of this run, if there is one; a run that has none
        starts from spec.init's pretrained weights, if it names any. Under spec.lora a checkpoint holds
        the adapters alone: the base is read from spec.init first in either case."""
        spec = self.components.spec
        if spec.init is not None and spec.lora is not None:
            self.load_init()
        if self.ckpt is None or (resumed := self.ckpt.restore()) is None:
            if spec.init is not None and spec.lora is None:
                self.load_init()
            return
        self.log.rewind(resumed.step)  # what a lost attempt logged past its checkpoint is trained again
        self.emit({"resumed_from": resumed.path, "resumed_step": resumed.step,
                   "skipped_checkpoints": resumed.skipped, "spec_changes": resumed.spec_changes})

    def load_init(self) -> None:
        spec, components = self.components.spec, self.components
        assert spec.init is not None
        cfg = spec.checkpoint
        self.emit(load_pretrained(components.model, spec.init, components.world, cfg.endpoint, cfg.region))

    def run_epoch(self) -> bool:
        """One epoch (or what remains of it); False when training must stop."""
        components, state, pos = self.components, self.state, self.state.position
        spec, source = components.spec, components.batches
        if self.unfreezer is not None and (trainable := self.unfreezer.at_epoch(pos.epoch)) is not None:
            self.emit({"trainable_params": trainable})
        groups = source.open(pos)
        self.rng.apply_pending()  # after the loader's iterator exists: creating it draws from the torch RNG
        for group in groups:
            if self.profiler:
                self.profiler.before_step(pos.step + 1)
            for j, batch in enumerate(group):
                batch = to_device(batch, components.world.device)
                if components.task.augment:
                    batch = components.task.augment(batch, components.augment_rng)
                if components.task.curriculum:
                    batch = components.task.curriculum(batch, pos.step)
                loss = micro_step(components, batch, len(group), j + 1 == len(group))
                self.meter.add_micro(loss, batch_size_of(batch))
            if self.ckpt:
                self.ckpt.before_optimizer_step()  # a checkpoint copy still reading the weights finishes first
            if self.unfreezer:
                self.unfreezer.drop_frozen_grads()
            last_norm = optimizer_step(components)
            self.watchdog.tick()
            pos.step, pos.micro_in_epoch = pos.step + 1, pos.micro_in_epoch + len(group)
            if self.ema:
                self.ema.after_step(pos.step)
            if self.profiler:
                self.profiler.after_step(pos.step)
            self.meter.add_step()
            if pos.step % spec.log_every_steps == 0:
                self.log_train(last_norm)
            every = spec.eval.every_steps
            if every and pos.step % every == 0 and not self.evaluate():
                return False
            if self.ckpt and self.ckpt.after_step():
                state.stop_reason = "preempted"
                return False
            if pos.step >= components.total_steps and not source.epoch_done(pos.micro_in_epoch):
                state.stop_reason = "max_steps"
                return False
        if pos.micro_in_epoch == 0 and source.micro_per_epoch is None:
            raise ValueError(f"spec.task: the training stream yielded no batch in epoch {pos.epoch}")
        if pos.step >= components.total_steps and spec.max_steps and pos.step == spec.max_steps:
            state.stop_reason = "max_steps"
        return True

    def log_train(self, norm: torch.Tensor) -> None:
        precision = self.components.precision
        precision.check()
        self.emit({**self.meter.flush(), "lr": self.components.schedule.lr, "grad_norm": float(norm),
                   "skipped_steps": int(precision.skipped)})

    def evaluate(self) -> bool:
        """Validation + early stopping; False when training should stop."""
        components = self.components
        if components.val is None:
            return True
        with self.watchdog.paused():
            metrics = evaluate(self.eval_model, components.task, components.val, components.world,
                               components.precision, "val", components.sharded, components.spec.eval.max_batches)
        self.state.last_eval = metrics
        components.schedule.observe(metrics)
        stop = components.early.observe(metrics, self.state.position.step) if components.early else False
        self.emit(dict(metrics))
        if stop:
            self.state.stop_reason = "early_stopping"
        return not stop

    def fit(self) -> dict[str, Any]:
        state = self.state
        self.resume()
        if self.tracking is not None:
            self.tracking.start()  # after the restore: the checkpoint names the MLflow run to continue
        self.watchdog.start()  # after the restore: the first step is timed from here
        try:  # stopped however training ends: a watchdog left armed would end the process later
            self.train_epochs()
        finally:
            self.watchdog.stop()
        if state.stop_reason == "preempted":
            return self.stop_preempted()
        return self.finish()

    def train_epochs(self) -> None:
        components, state, pos = self.components, self.state, self.state.position
        per_epoch = components.steps_per_epoch
        max_epochs = components.spec.epochs or (
            math.ceil(components.total_steps / max(per_epoch, 1)) if per_epoch is not None else math.inf)
        while pos.epoch < max_epochs and pos.step < components.total_steps and not state.stop_reason:
            if not self.run_epoch():
                break  # stopped inside the epoch: it is not complete, so epoch stays where it is
            pos.epoch, pos.micro_in_epoch = pos.epoch + 1, 0
            if components.spec.eval.every_epoch and not self.evaluate():
                break
            if self.ckpt:
                self.ckpt.after_epoch()

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation runs: the trained weights, or spec.ema's average when it says evalWith."""
        ema = self.ema
        return ema.module if ema is not None and ema.cfg.eval_with else self.components.model

    def result(self, final: dict[str, Any]) -> dict[str, Any]:
        """What `fit` returns: the final report with where training ended."""
        pos = self.state.position
        return {"epoch": pos.epoch, "step": pos.step, "total_steps": self.components.total_steps, **final}

    def stop_preempted(self) -> dict[str, Any]:
        final = {"done": False, "preempted": True, "stop_reason": "preempted"}
        self.emit(final)
        return self.result(final)

    def finish(self) -> dict[str, Any]:
        components, state = self.components, self.state
        state.stop_reason = state.stop_reason or "epochs"  # ran out of epochs: the final checkpoint says so too
        if components.early and components.early.cfg.restore_best:
            self.emit(restore_best(components, self.ckpt, self.run_dir))
        if self.ckpt:
            self.ckpt.at_end()  # before the test set: the final weights are what gets evaluated
        final: dict[str, Any] = {**self.meter.flush(), **state.last_eval} if self.meter.steps else dict(state.last_eval)
        if components.test is not None:
            final.update(evaluate(self.eval_model, components.task, components.test, components.world,
                                  components.precision, "test", components.sharded))
        final.update({"done": True, "stop_reason": state.stop_reason,
                      "skipped_steps": int(components.precision.skipped)})
        early = components.early
        if early and early.tracker.best is not None:
            final[f"best_{early.cfg.metric}"] = early.tracker.best
        self.emit(final)
        if self.ckpt:
            self.ckpt.record_result(self.result(final))
        return self.result(final)
