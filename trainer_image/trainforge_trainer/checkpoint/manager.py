"""The checkpointer: when to save, how all ranks write one consistent checkpoint, how a run resumes.

Every stateful part (model and optimizer, schedule, precision/scaler, early stopping, position,
RNG) is saved through its own `state_dict()` and restored through `load_state_dict()`."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as torch_dist
from trainforge.checkpoints import (
    CheckpointEntry,
    Manifest,
    Retention,
    list_checkpoints,
    prune,
    verify,
    write_manifest,
)
from trainforge.checkpoints.manifest import digest
from trainforge.spec import CheckpointConfig

from . import rng
from .files import DCP_DIR, full_state, read_model, read_trainer, write_full_state, write_model, write_trainer
from .preempt import PreemptionWatch, ray_preemption_notice
from .snapshot import HostCopier, PendingSave, Writer
from .state import scalars, spec_changes, spec_dict, spec_hash, versions
from .store import RayStore, Store

if TYPE_CHECKING:
    from ..loop import Loop

log = logging.getLogger("trainforge.checkpoint")

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again later, and the job will resume


def _distributed() -> bool:
    return torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def _gather(obj: Any) -> list[Any]:
    if not _distributed():
        return [obj]
    out: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def _from_main(obj: Any) -> Any:
    if not _distributed():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclass
class Resumed:
    path: str
    step: int
    skipped: list[str] = field(default_factory=list)
    spec_changes: list[str] = field(default_factory=list)


class Checkpointer:
    def __init__(self, loop: Loop, store: Store, watch: PreemptionWatch | None = None,
                 init_from: str | None = None) -> None:
        self.loop, self.store = loop, store
        self.init_from = init_from
        """A checkpoint (path on the store's filesystem) to start from when the run has none of its
        own: how a PBT trial takes over a better trial's state."""
        self.cfg: CheckpointConfig = loop.p.spec.checkpoint
        self.watch = watch or PreemptionWatch()
        self.last_saved_step = -1
        self.last_save_time = time.monotonic()
        self.noticed_drain = False
        self.check_every = loop.p.spec.log_every_steps
        self.pending_rng: dict[str, Any] | None = None
        self.retention = Retention.from_config(self.cfg)
        self.ray_notices = isinstance(store, RayStore)
        self.copier = HostCopier(loop.p.world.device)
        self.writer = Writer()
        self.pending: PendingSave | None = None
        """The save being written in the background; committed at a later step boundary."""

    # ---- saving -------------------------------------------------------------------------------

    def after_step(self) -> bool:
        """At an optimizer-step boundary. True when training must stop (preempted, saved)."""
        step = self.loop.pos.step
        due = bool(self.cfg.every_steps and step % self.cfg.every_steps == 0)
        if self.pending is not None and not _distributed():
            self.finish_pending(wait=False)
        if self.copier.unprepared and self._background_writes() and self.loop.p.world.is_main:
            self.copier.prepare(full_state(self.loop.p.model, self.loop.p.optimizer))  # once
        if step % self.check_every == 0:
            preempt, late, drain, writing = self._agree_on_signals()
            if preempt:
                self.save("preempted")
                return True
            if self.pending is not None and not writing:  # every rank's part is written
                self.finish_pending(wait=True)
            if drain and not self.noticed_drain:
                self.noticed_drain = True
                log.warning("Ray Train reports this run's node is being drained: checkpointing now")
                due = True
            due = due or late
        if due:
            self.save("interval")
        return False

    def after_epoch(self) -> None:
        if self.cfg.every_epoch:
            self.save("epoch")

    def at_end(self) -> None:
        self.save("final")

    def _agree_on_signals(self) -> tuple[bool, bool, bool, bool]:
        """(preempt, a save is late, node drain, a rank is still writing): one all-reduce at a check step."""
        world = self.loop.p.world
        late = bool(self.cfg.every_seconds) and world.is_main and \
            time.monotonic() - self.last_save_time >= (self.cfg.every_seconds or 0)
        writing = self.pending is not None and not self.pending.files.done()
        flags = torch.tensor([float(self.watch.requested.is_set()), float(late), float(writing)], device=world.device)
        if _distributed():
            torch_dist.all_reduce(flags, op=torch_dist.ReduceOp.MAX)
        preempt, late_all, writing_any = (bool(v) for v in flags.tolist())
        return preempt, late_all, self.ray_notices and ray_preemption_notice(), writing_any

    def before_optimizer_step(self) -> None:
        self.copier.wait_on_train_stream()

    def _background_writes(self, reason: str = "interval") -> bool:
        """Interval and epoch saves of full (unsharded) state leave the step when `async` is on; a
        preempted or final save is the last thing the run does, and DCP's sharded save is collective."""
        return self.cfg.async_ and not self.loop.p.sharded and reason in ("interval", "epoch")

    def save(self, reason: str) -> None:
        loop, p = self.loop, self.loop.p
        self.finish_pending(wait=True)  # one save in flight: checkpoints commit in the order taken
        if self.last_saved_step == loop.pos.step and reason != "preempted":
            return
        started = time.perf_counter()
        name = _from_main(f"checkpoint_{loop.pos.step:09d}_{time.time_ns() // 1_000_000:x}")
        local = self.store.staging(name)
        rng_states = _gather(rng.capture({"augment": p.augment_rng}))
        trainer = self._trainer_state(rng_states, reason) if p.world.is_main else None
        metrics = self._metrics(reason, name)
        manifest = self._manifest({}, metrics, reason)  # files are added once written
        background = self._background_writes(reason)
        if background:
            state = self.copier.copy(full_state(p.model, p.optimizer)) if p.world.is_main else None
            copied = self.copier.copied()
            files = self.writer.submit(lambda: self._write_files(local, state, trainer, copied))
        else:
            if p.sharded:
                (local / DCP_DIR).mkdir(exist_ok=True)
            write_model(p.model, p.optimizer, local, p.sharded, p.world.is_main)
            files = Future()
            files.set_result(self._write_files(local, None, trainer, lambda: None))
        self.pending = PendingSave(name, loop.pos.step, reason, local, metrics, manifest,
                                   time.perf_counter() - started, files)
        self.last_saved_step, self.last_save_time = loop.pos.step, time.monotonic()
        if not background:
            self.finish_pending(wait=True)

    def _write_files(self, local: Path, state: dict[str, Any] | None, trainer: dict[str, Any] | None,
                     copied: Callable[[], None]) -> dict[str, Any]:
        """This rank's files of the checkpoint (model state already written unless given), hashed."""
        copied()
        if state is not None:
            write_full_state(state, local)
        if trainer is not None:
            write_trainer(trainer, local)
        return {rel: digest(str(local / rel)) for rel in owned_files(local, self.loop.p.world.rank)}

    def finish_pending(self, wait: bool) -> None:
        """Commit the save written in the background: manifest last, then the store (Ray's report).
        Every rank calls this at the same step (it gathers), except `wait=False` on a single worker."""
        pending, p = self.pending, self.loop.p
        if pending is None or (not wait and not pending.files.done()):
            return
        self.pending = None
        mine = pending.files.result()  # what the writer raised, raised here
        files = {k: v for part in _gather(mine) for k, v in part.items()}
        if p.world.is_main:
            write_manifest(_local_fs(), str(pending.local), dataclasses.replace(pending.manifest, files=files))
        # A preemption grace period is short: that checkpoint is uploaded before the run stops.
        self.store.commit(pending.local if mine or p.world.is_main else None, pending.name,
                          {**pending.metrics, "checkpoint_blocking_s": pending.blocking_s},
                          self.cfg.async_ and pending.reason != "preempted")
        if not mine and not p.world.is_main and self.store.stages_locally:
            shutil.rmtree(pending.local, ignore_errors=True)
        if p.world.is_main:
            log.info("checkpoint %s (%s, step %d) committed; the step waited %.2fs", pending.name, pending.reason,
                     pending.step, pending.blocking_s)
            if self.store.trainer_prunes:
                self.apply_retention()

    def _trainer_state(self, rng_states: list[dict[str, Any]], reason: str) -> dict[str, Any]:
        loop, p = self.loop, self.loop.p
        return {
            "position": loop.pos.state_dict(),
            "schedule": p.schedule.state_dict(),
            "precision": p.precision.state_dict(),
            "early": p.early.state_dict() if p.early else None,
            "last_eval": dict(loop.last_eval),
            "rng": rng_states,
            "world_size": p.world.size,
            "batch_size": p.spec.batch.size,
            "stop_reason": loop.stop_reason or ("epochs" if reason == "final" else ""),
        }

    def _metrics(self, reason: str, name: str) -> dict[str, Any]:
        loop = self.loop
        return {"epoch": loop.pos.epoch, "step": loop.pos.step, "total_steps": loop.p.total_steps,
                **loop.last_eval, "checkpoint": name, "checkpoint_reason": reason,
                "preempted": reason == "preempted"}

    def _manifest(self, files: dict[str, Any], metrics: dict[str, Any], reason: str) -> Manifest:
        p, pos = self.loop.p, self.loop.pos
        return Manifest(
            step=pos.step, epoch=pos.epoch, batches_in_epoch=pos.micro_in_epoch,
            samples_in_epoch=pos.micro_in_epoch * p.spec.batch.size * p.world.size,
            world_size=p.world.size, strategy=p.spec.strategy.type, spec_hash=spec_hash(p.spec),
            files=files, metrics=scalars(metrics),
            spec=spec_dict(p.spec), versions=versions(), reason=reason,
        )

    def apply_retention(self) -> None:
        self.retention.apply(self.store.fs, self.store.run_path)

    # ---- resuming -----------------------------------------------------------------------------

    def candidates(self) -> tuple[list[CheckpointEntry], list[str]]:
        """On rank 0: checkpoints whose files are all there at the right size, newest first, and
        what was skipped. Contents are hashed after the fetch, so storage is read once."""
        found, skipped = [], []
        for entry in reversed(list_checkpoints(self.store.fs, self.store.run_path, check=True)):
            if entry.verdict.valid:
                found.append(entry)
            elif entry.manifest is not None and entry.manifest.status == "complete":
                skipped.append(self._reject(entry, entry.verdict.reason))
        if not found and self.init_from:
            found.extend(self._donor())
        return found, skipped

    def _donor(self) -> list[CheckpointEntry]:
        """The checkpoint this run was told to start from, if it is there and valid."""
        parent = self.init_from.rstrip("/").rsplit("/", 1)[0]  # type: ignore[union-attr]
        return [e for e in list_checkpoints(self.store.fs, parent, check=True)
                if e.path.rstrip("/") == self.init_from.rstrip("/") and e.verdict.valid]  # type: ignore[union-attr]

    def _reject(self, entry: CheckpointEntry, reason: str) -> str:
        """Warn, and mark the checkpoint corrupt so retention and later resumes ignore it."""
        log.warning("checkpoint %s (step %d) is unusable: %s; trying the previous one",
                    entry.name, entry.step, reason)
        prune(self.store.fs, entry, status="corrupt")
        return f"{entry.name} (step {entry.step}): {reason}"

    def restore(self) -> Resumed | None:
        p = self.loop.p
        entries, skipped = _from_main(self.candidates() if p.world.is_main else None)
        if not entries and self.init_from:  # starting from scratch instead would quietly waste the trial
            raise FileNotFoundError(f"the checkpoint this run starts from is gone or invalid: {self.init_from}; "
                                    "keep more checkpoints (spec.checkpoint.keep) so they outlive a PBT exploit")
        for entry in entries:
            path = entry.path
            with self.store.fetch(path) as fetched:
                local = Path(fetched)
                verdict = verify(_local_fs(), str(local), hashes=True)
                flag = torch.tensor([float(verdict.valid)], device=p.world.device)
                if _distributed():
                    torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MIN)
                if not flag.item():
                    if p.world.is_main:
                        skipped.append(self._reject(entry, verdict.reason or "a rank's copy did not verify"))
                    continue
                manifest = Manifest.from_json((local / "manifest.json").read_text())
                hyper = _hyperparameters(p.optimizer)
                read_model(p.model, p.optimizer, local, p.sharded, manifest.strategy == "fsdp")
                _set_hyperparameters(p.optimizer, hyper)
                self._load_trainer(read_trainer(local), manifest)
            self.last_saved_step = manifest.step
            changes = spec_changes(manifest.spec, spec_dict(p.spec)) if manifest.spec_hash != spec_hash(p.spec) else []
            if changes and p.world.is_main:
                log.warning("the spec changed since checkpoint %s: %s", path, "; ".join(changes))
            return Resumed(path, manifest.step, skipped, changes)
        return None

    def _load_trainer(self, state: dict[str, Any], manifest: Manifest) -> None:
        loop, p = self.loop, self.loop.p
        loop.pos.load_state_dict(state["position"])
        same_layout = state["world_size"] == p.world.size and state["batch_size"] == p.spec.batch.size
        if not same_layout:  # map the samples already seen onto this world size, rounded down
            per_step = p.world.size * p.spec.batch.size * p.spec.batch.grad_accumulation
            loop.pos.micro_in_epoch = manifest.samples_in_epoch // per_step * p.spec.batch.grad_accumulation
        p.schedule.load_state_dict(state["schedule"])
        p.precision.load_state_dict(state["precision"])
        if p.early and state.get("early"):
            p.early.load_state_dict(state["early"])
        loop.last_eval = dict(state.get("last_eval") or {})
        stopped = state.get("stop_reason", "")
        # A finished run stays finished, unless the spec now allows more steps than it ran.
        if stopped == "early_stopping" or (stopped and loop.pos.step >= p.total_steps):
            loop.stop_reason = stopped
        ranks = state["rng"]
        if p.world.rank < len(ranks):
            self.pending_rng = ranks[p.world.rank]  # applied once the epoch's data iterator exists

    def restore_rng(self) -> None:
        """Creating a DataLoader iterator draws from the torch RNG: restore after that, so the rest
        of the epoch sees exactly the random stream the uninterrupted run saw."""
        if self.pending_rng is not None:
            rng.restore(self.pending_rng, {"augment": self.loop.p.augment_rng})
            self.pending_rng = None

    def close(self) -> None:
        self.watch.close()
        self.writer.close()
        self.copier.close()
        if self.pending is not None:  # the run failed before committing it: without a manifest it was never valid
            if self.store.stages_locally or self.loop.p.world.is_main:
                shutil.rmtree(self.pending.local, ignore_errors=True)
            self.pending = None
        self.store.close()
        if self.loop.p.world.is_main and self.store.trainer_prunes and self.last_saved_step >= 0:
            try:
                self.apply_retention()  # the last upload has landed: prune what it made surplus
            except OSError:
                log.exception("checkpoint retention failed at the end of the run")


def owned_files(local: Path, rank: int) -> list[str]:
    """The files this rank wrote (ranks may share `local` under torchrun): DCP names shards by rank."""
    owned = []
    for path in sorted(local.rglob("*")):
        rel = path.relative_to(local).as_posix()
        if not path.is_file():
            continue
        if rel.startswith(f"{DCP_DIR}/"):
            base = rel.split("/", 1)[1]
            if base.startswith(f"__{rank}_") or (rank == 0 and not base.startswith("__")):
                owned.append(rel)
        elif rank == 0:
            owned.append(rel)
    return owned


def _hyperparameters(optimizer: Any) -> list[dict[str, Any]]:
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def _set_hyperparameters(optimizer: Any, hyper: list[dict[str, Any]]) -> None:
    """The spec's optimizer settings win over the checkpoint's: a PBT-perturbed or edited weight
    decay must take effect (the lr is the schedule's, set again when it loads)."""
    for group, values in zip(optimizer.param_groups, hyper, strict=True):
        group.update(values)


def _local_fs() -> Any:
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()
