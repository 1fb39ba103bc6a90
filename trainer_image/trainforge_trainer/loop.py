"""The per-worker training loop: epochs of steps, evaluations, checkpoints and reports over the
components `components.build` makes. Launcher-agnostic: `worker.run_worker` runs it under torchrun and Ray Train."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from trainforge.checkpoints.owner import RunOwner

from . import lora
from .batches import StreamBatches
from .checkpoint.files import ModelOptimizer
from .checkpoint.manager import MODEL, TRAIN, Checkpointer
from .checkpoint.preempt import PreemptionWatch
from .checkpoint.rng import RNGState
from .checkpoint.state import Stateful
from .checkpoint.store import Store
from .components import TrainComponents, build, micro_step, optimizer_step
from .data import batch_size_of, to_device
from .ema import EmaWeights
from .evaluate import evaluate
from .freezing import Unfreezer
from .metrics import TrainMeter, peak_flops
from .model_init import load_pretrained, restore_best
from .profile import StepProfiler
from .reporting import Reporter
from .runlog import JsonlLog
from .tracking import Tracking
from .train_state import Position, TrainState
from .watchdog import StepWatchdog

__all__ = ["JsonlLog", "Loop", "TrainComponents", "build", "micro_step", "optimizer_step"]
"""The loop and what a caller needs to drive it (`build` lives in components.py)."""


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
