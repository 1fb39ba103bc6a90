"""The per-worker training loop. Launcher-agnostic: Ray Train and torchrun both call `run_worker`."""

from __future__ import annotations

import gc
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from trainforge.checkpoints import resolve_storage
from trainforge.spec import TrainingJobSpec

from . import dist
from .checkpoint.manager import Checkpointer
from .checkpoint.preempt import PreemptionWatch
from .checkpoint.state import Position
from .checkpoint.store import DirStore, RayStore, Store, UploadStore
from .data import batch_size_of, eval_loader, loader_workers, to_device, to_float, train_loader
from .early_stop import EarlyStopping
from .evaluate import evaluate
from .metrics import JsonlLog, TrainMeter
from .optim import build_optimizer
from .parallel import default_blocks, grad_sync, wrap
from .precision import Precision
from .reporting import Reporter, reporter_for_launcher
from .schedules import LRSchedule, lr_scale
from .task import Task, build_task

# bf16 dense peak per GPU model, used for MFU when TRAINFORGE_PEAK_TFLOPS is not set.
_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def peak_flops(device: torch.device) -> float | None:
    if "TRAINFORGE_PEAK_TFLOPS" in os.environ:
        return float(os.environ["TRAINFORGE_PEAK_TFLOPS"]) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in _PEAK_TFLOPS.items() if key in name), None)


@dataclass
class Parts:
    """Everything one worker trains with; built once by `build`."""

    spec: TrainingJobSpec
    world: dist.World
    task: Task
    model: nn.Module
    optimizer: Optimizer
    precision: Precision
    schedule: LRSchedule
    train: DataLoader
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
    def micro_per_epoch(self) -> int:
        """Micro-batches in a whole epoch (the loader's length shrinks in a resumed epoch)."""
        return math.ceil(self.train.sampler.num_samples / self.spec.batch.size)  # type: ignore[attr-defined]

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_per_epoch / self.spec.batch.grad_accumulation)


def total_steps_of(spec: TrainingJobSpec, steps_per_epoch: int) -> int:
    limits = [spec.epochs * steps_per_epoch] if spec.epochs else []
    if spec.max_steps:
        limits.append(spec.max_steps)
    return min(limits)


def loss_function(task: Task, compiled: bool) -> Callable[[Any, Any], torch.Tensor]:
    """The task's loss on its outputs upcast to fp32. With spec.compile it is compiled like the model:
    the upcast then fuses into the loss kernels (forward and backward), so an LM's fp32 logits are
    never written to memory (gpt 1.3b, 16k tokens a step, H100: peak memory 55.2 -> 47.6 GiB and
    3 % more tokens/s; bench/RESULTS.md)."""

    def loss(outputs: Any, batch: Any) -> torch.Tensor:
        return task.loss(to_float(outputs), batch)

    return torch.compile(loss) if compiled else loss


def build(spec: TrainingJobSpec, world: dist.World) -> Parts:
    seed_everything(spec.seed, spec.deterministic)  # same seed on every rank: identical initial weights
    task = build_task(spec.task.resolved_entrypoint, spec.task.args)
    model = task.model().to(world.device)
    blocks = task.blocks(model) if task.blocks else default_blocks(model)
    model = wrap(model, spec, world, blocks)
    if spec.compile:
        model = torch.compile(model)
    peak = spec.optimizer.lr * lr_scale(spec.lr_scaling, world.size, spec.batch.grad_accumulation)
    optimizer = build_optimizer(model, spec.optimizer, peak, world.device.type == "cuda")
    workers = loader_workers(spec.batch.loader_workers, spec.cpus_per_worker, task.in_memory)
    train = train_loader(task.train, spec.batch.size, world, spec.seed, workers)
    eval_bs = spec.batch.eval_size or spec.batch.size
    val = eval_loader(task.val, eval_bs, world, workers) if task.val is not None else None
    test = eval_loader(task.test, eval_bs, world, workers) if task.test is not None else None
    for name, ds in (("validation", task.val), ("test", task.test)):
        if ds is not None and len(ds) < world.size:  # type: ignore[arg-type]
            raise ValueError(f"the {name} set has {len(ds)} samples, fewer than the {world.size} workers")  # type: ignore[arg-type]
    steps_per_epoch = math.ceil(len(train) / spec.batch.grad_accumulation)
    total = total_steps_of(spec, steps_per_epoch)
    return Parts(
        spec=spec, world=world, task=task, model=model, optimizer=optimizer,
        precision=Precision(spec.precision, world.device, spec.grad_clip, spec.strategy.type == "fsdp"),
        schedule=LRSchedule(optimizer, spec.schedule, peak, total),
        train=train, val=val, test=test,
        augment_rng=torch.Generator().manual_seed(spec.seed * 7919 + world.rank + 1),  # per-rank stream
        total_steps=total, early=EarlyStopping(spec.early_stopping) if spec.early_stopping else None,
        params=[p for p in model.parameters() if p.requires_grad],
        loss_fn=loss_function(task, spec.compile),
    )


def micro_step(parts: Parts, batch: Any, group_size: int, sync: bool) -> torch.Tensor:
    """Forward + backward of one micro-batch; gradients are averaged over the accumulation group.
    Returns the undivided fp32 loss (on the device)."""
    with grad_sync(parts.model, sync):
        with parts.precision.autocast():
            outputs = parts.task.forward(parts.model, batch)
        loss = parts.loss_fn(outputs, batch)
        parts.precision.backward(loss / group_size)
    return loss.detach()


def optimizer_step(parts: Parts) -> torch.Tensor:
    norm = parts.precision.step(parts.optimizer, parts.params)
    parts.optimizer.zero_grad(set_to_none=True)
    parts.schedule.step()
    return norm


class Loop:
    """Epochs of accumulation groups, evaluations, early stopping, checkpoints and reports."""

    def __init__(self, parts: Parts, reporter: Reporter, log: JsonlLog) -> None:
        self.p, self.reporter, self.log = parts, reporter, log
        self.pos = Position()
        self.last_eval: dict[str, float] = {}
        self.stop_reason = ""
        self.ckpt: Checkpointer | None = None
        self.meter = TrainMeter(parts.world, parts.task.tokens_per_sample, parts.task.flops_per_sample,
                                peak_flops(parts.world.device))

    def emit(self, metrics: dict[str, Any]) -> None:
        record = {"epoch": self.pos.epoch, "step": self.pos.step, "total_steps": self.p.total_steps, **metrics}
        self.reporter.report(record)
        if self.p.world.is_main:
            self.log.write(record)

    def resume(self) -> None:
        """Continue from the newest valid checkpoint of this run, if there is one."""
        if self.ckpt is None or (resumed := self.ckpt.restore()) is None:
            return
        self.emit({"resumed_from": resumed.path, "resumed_step": resumed.step,
                   "skipped_checkpoints": resumed.skipped, "spec_changes": resumed.spec_changes})

    def run_epoch(self) -> bool:
        """One epoch (or what remains of it); False when training must stop."""
        p, k, pos = self.p, self.p.spec.batch.grad_accumulation, self.pos
        sampler = p.train.sampler
        sampler.set_epoch(pos.epoch)  # type: ignore[attr-defined]
        sampler.start = pos.micro_in_epoch * p.spec.batch.size  # type: ignore[attr-defined]
        batches = iter(p.train)
        if self.ckpt:
            self.ckpt.restore_rng()
        for i, batch in enumerate(batches, start=pos.micro_in_epoch):
            group_start = (i // k) * k
            group_size = min(k, p.micro_per_epoch - group_start)  # the epoch's remainder is flushed
            boundary = i + 1 == group_start + group_size
            batch = to_device(batch, p.world.device)
            if p.task.augment:
                batch = p.task.augment(batch, p.augment_rng)
            self.meter.add_micro(micro_step(p, batch, group_size, boundary), batch_size_of(batch))
            if not boundary:
                continue
            if self.ckpt:
                self.ckpt.before_optimizer_step()  # a checkpoint copy still reading the weights finishes first
            last_norm = optimizer_step(p)
            pos.step, pos.micro_in_epoch = pos.step + 1, i + 1
            self.meter.add_step()
            if pos.step % p.spec.log_every_steps == 0:
                self.log_train(last_norm)
            every = p.spec.eval.every_steps
            if every and pos.step % every == 0 and not self.evaluate():
                return False
            if self.ckpt and self.ckpt.after_step():
                self.stop_reason = "preempted"
                return False
            if pos.step >= p.total_steps and i + 1 < p.micro_per_epoch:
                self.stop_reason = "max_steps"
                return False
        if pos.step >= p.total_steps and p.spec.max_steps and pos.step == p.spec.max_steps:
            self.stop_reason = "max_steps"
        return True

    def log_train(self, norm: torch.Tensor) -> None:
        self.p.precision.check()
        self.emit({**self.meter.flush(), "lr": self.p.schedule.lr, "grad_norm": float(norm),
                   "skipped_steps": int(self.p.precision.skipped)})

    def evaluate(self) -> bool:
        """Validation + early stopping; False when training should stop."""
        p = self.p
        if p.val is None:
            return True
        self.last_eval = evaluate(p.model, p.task, p.val, p.world, p.precision, "val", p.sharded,
                                  p.spec.eval.max_batches)
        p.schedule.observe(self.last_eval)
        stop = p.early.observe(self.last_eval, self.pos.step) if p.early else False
        self.emit(dict(self.last_eval))
        if stop:
            self.stop_reason = "early_stopping"
        return not stop

    def fit(self) -> dict[str, Any]:
        p, pos = self.p, self.pos
        self.resume()
        max_epochs = p.spec.epochs or math.ceil(p.total_steps / max(p.steps_per_epoch, 1))
        while pos.epoch < max_epochs and pos.step < p.total_steps and not self.stop_reason:
            if not self.run_epoch():
                break  # stopped inside the epoch: it is not complete, so epoch stays where it is
            pos.epoch, pos.micro_in_epoch = pos.epoch + 1, 0
            if p.spec.eval.every_epoch and not self.evaluate():
                break
            if self.ckpt:
                self.ckpt.after_epoch()
        if self.stop_reason == "preempted":
            return self.stop_preempted()
        return self.finish()

    def stop_preempted(self) -> dict[str, Any]:
        final = {"done": False, "preempted": True, "stop_reason": "preempted"}
        self.emit(final)
        return {"epoch": self.pos.epoch, "step": self.pos.step, "total_steps": self.p.total_steps, **final}

    def finish(self) -> dict[str, Any]:
        p = self.p
        if self.ckpt:
            self.ckpt.at_end()  # before the test set: the final weights are what gets evaluated
        final: dict[str, Any] = {**self.meter.flush(), **self.last_eval} if self.meter.steps else dict(self.last_eval)
        if p.test is not None:
            final.update(evaluate(p.model, p.task, p.test, p.world, p.precision, "test", p.sharded))
        final.update({"done": True, "stop_reason": self.stop_reason or "epochs",
                      "skipped_steps": int(p.precision.skipped)})
        if p.early and p.early.tracker.best is not None:
            final[f"best_{p.early.cfg.metric}"] = p.early.tracker.best
        self.emit(final)
        return {"epoch": self.pos.epoch, "step": self.pos.step, "total_steps": p.total_steps, **final}


def make_store(run_dir: str | None, spec: TrainingJobSpec) -> Store | None:
    """Ray Train's storage when running under it; else the run directory (local or remote) if any."""
    try:
        from ray.train import get_context

        get_context()
        return RayStore()
    except Exception:
        pass
    if not run_dir:
        return None
    if "://" not in run_dir:
        return DirStore(run_dir)
    target = resolve_storage(run_dir, spec.checkpoint.endpoint, spec.checkpoint.region)
    return UploadStore(target.filesystem, target.path)


def run_worker(spec: TrainingJobSpec, run_dir: str | None = None, reporter: Reporter | None = None,
               preempt_flag: Any = None, init_from: str | None = None) -> dict[str, Any]:
    world = dist.setup(spec.gpus_per_worker > 0 and torch.cuda.is_available())
    try:
        return _fit(spec, world, run_dir, reporter, preempt_flag, init_from)
    finally:
        # The model (with DDP's reducer, which holds the process group) must be gone before the group
        # is destroyed: freed after it, the reducer drops the group's last reference and gloo's
        # destructor joins its threads holding the GIL while one of them waits for the GIL to free a
        # finished work's tensors — a deadlock seen under torchrun at exit. _fit's frame is released
        # on return; collect() reaps what cycles kept alive.
        gc.collect()
        dist.teardown_if_owned()


def _fit(spec: TrainingJobSpec, world: dist.World, run_dir: str | None, reporter: Reporter | None,
         preempt_flag: Any, init_from: str | None) -> dict[str, Any]:
    loop: Loop | None = None
    try:
        parts = build(spec, world)
        local_dir = run_dir if run_dir and "://" not in run_dir and world.is_main else None
        log = JsonlLog(Path(local_dir) / "metrics.jsonl" if local_dir else None)
        loop = Loop(parts, reporter or reporter_for_launcher(world.is_main), log)
        store = make_store(run_dir, spec)
        if store is not None:
            loop.ckpt = Checkpointer(loop, store, PreemptionWatch(preempt_flag), init_from)
        return loop.fit()
    finally:
        if loop is not None and loop.ckpt is not None:
            loop.ckpt.close()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry: the spec arrives as JSON-compatible data, never as shell text."""
    spec = TrainingJobSpec.model_validate(config["spec"])
    announce_rank()
    run_worker(spec, config.get("run_dir"), preempt_flag=config.get("preempt_flag"),
               init_from=config.get("init_from"))


RANK_ANNOUNCEMENT = "trainforge worker rank={rank} world_size={world} host={host} pid={pid}"


def announce_rank() -> None:
    """One line per worker start, which the driver log shows behind Ray's `(RayTrainWorker pid=…)`
    prefix: `trainforge logs --rank R` maps that prefix to the rank through it."""
    import socket

    import ray.train

    ctx = ray.train.get_context()
    line = RANK_ANNOUNCEMENT.format(rank=ctx.get_world_rank(), world=ctx.get_world_size(),
                                    host=socket.gethostname(), pid=os.getpid())
    # Straight to fd 1: Ray Train copies print() into its logger, whose stderr handler would show
    # the line twice in the driver log.
    os.write(1, f"{line}\n".encode())
