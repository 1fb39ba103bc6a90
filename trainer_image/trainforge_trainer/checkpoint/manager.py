"""The checkpointer: when to save, how all ranks write one consistent checkpoint, how a run resumes.

It is given the training state as named Stateful components (model and optimizer, schedule,
precision/scaler, early stopping, the train state, RNG) and a few plain facts of the run; each
component is saved through its own `state_dict()` and restores itself through `load_state_dict()`.
On disk (format 1): the model and optimizer in model.pt or dcp/, the rest in trainer.pt, where the
train state's keys sit at the top level and every other component's state under its name."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pickle
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch.distributed.checkpoint.api import CheckpointException
from trainforge.checkpoints import (
    CheckpointEntry,
    Manifest,
    Retention,
    list_checkpoints,
    verify,
    write_manifest,
)
from trainforge.checkpoints.final import FinalResult, write_result
from trainforge.checkpoints.manifest import digest
from trainforge.checkpoints.owner import RunOwner, StaleWriter, check_still_owner
from trainforge.checkpoints.retention import mark_complete, mark_corrupt
from trainforge.checkpoints.retry import Retry, ensure_bucket, storage_uri
from trainforge.spec import CheckpointConfig, TrainingJobSpec

from ..dist import World, all_reduce_max, all_reduce_min, distributed, from_main, gather_objects, same_on_all_ranks
from ..train_state import TrainState
from .files import (
    DCP_DIR,
    ModelOptimizer,
    local_fs,
    owned_files,
    read_model,
    read_trainer,
    write_full_state,
    write_model,
    write_trainer,
)
from .preempt import PreemptionWatch, StopVote, ray_preemption_notice
from .safe_load import UnsafeCheckpoint, unsafe_reason
from .snapshot import HostCopier, PendingSave, Writer
from .state import Stateful, scalars, spec_changes, spec_dict, spec_hash, versions
from .store import RayStore, Store

log = logging.getLogger("trainforge.checkpoint")

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again later, and the job will resume
MODEL = "model"
"""The component written to model.pt / dcp/: a `ModelOptimizer`."""
TRAIN = "train"
"""The component whose state is trainer.pt's top level: a `TrainState` (the checkpointer reads its position)."""


@dataclass
class Resumed:
    path: str
    step: int
    skipped: list[str] = field(default_factory=list)
    spec_changes: list[str] = field(default_factory=list)


class Checkpointer:
    """Saves and restores named Stateful components; knows nothing of the loop that trains them."""

    def __init__(self, components: dict[str, Stateful], store: Store, *, spec: TrainingJobSpec, world: World,
                 total_steps: int, watch: PreemptionWatch | None = None, init_from: str | None = None,
                 owner: RunOwner | None = None) -> None:
        missing = {MODEL, TRAIN} - components.keys()
        if missing:
            raise KeyError(f"the checkpointer needs the components {sorted(missing)}")
        self.components = components
        self.model = cast(ModelOptimizer, components[MODEL])
        self.train = cast(TrainState, components[TRAIN])
        self.spec, self.world, self.total_steps, self.store = spec, world, total_steps, store
        self.init_from = init_from
        self.owner = owner
        """The job and attempt that claimed the run (None: a run outside any job, e.g. a torchrun test):
        recorded in every manifest, and checked before every commit and prune."""
        """A checkpoint (path on the store's filesystem) to start from when the run has none of its
        own: how a PBT trial takes over a better trial's state."""
        self.cfg: CheckpointConfig = spec.checkpoint
        self.watch = watch or PreemptionWatch()
        self.vote = StopVote.for_world(self.watch.requested)
        """Read at every step: all ranks stop at the same one (a collective to create)."""
        self.pause: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
        """Wraps every save and commit: the loop's hang watchdog does not count their time."""
        self.last_saved_step = -1
        self.last_save_time = time.monotonic()
        self.noticed_drain = False
        self.check_every = spec.log_every_steps
        self.retry = Retry.for_config(self.cfg, storage_uri(store.fs, store.run_path))
        """Every storage operation of the run rides out outages up to spec.checkpoint.retryWindowSeconds."""
        store.retry = self.retry
        self.retention = Retention.for_spec(spec, self.retry)
        self.ray_notices = isinstance(store, RayStore)
        self.copier = HostCopier(world.device)
        self.writer = Writer()
        self.pending: PendingSave | None = None
        self.last_committed: str | None = None
        self.before_commit: Callable[[], None] | None = None
        """Run on rank 0 before each commit (the loop uploads its metrics log: a resumable checkpoint's
        steps are then always in the log a resumed run continues)."""
        """Name of the newest checkpoint this run committed."""
        """The save being written in the background; committed at a later step boundary."""

    # ---- saving -------------------------------------------------------------------------------

    def after_step(self) -> bool:
        """At an optimizer-step boundary. True when training must stop (preempted, saved).

        A stop request is read at every step (`StopVote`: a local check and an all-reduce on the CPU
        that overlaps the next step); lateness, the node-drain notice and background writes are
        agreed on every `log_every_steps` steps, as before (that all-reduce may sync the device)."""
        step = self.train.position.step
        due = bool(self.cfg.every_steps and step % self.cfg.every_steps == 0)
        if self.pending is not None and not distributed():
            with self.pause():
                self.finish_pending(wait=False)
        if self.copier.unprepared and self._background_writes() and self.world.is_main:
            self.copier.prepare(self.model.state_dict())  # once
        if self.vote.poll():
            self.save("preempted")
            return True
        if step % self.check_every == 0:
            late, drain, writing = self._agree_on_signals()
            if self.pending is not None and not writing:  # every rank's part is written
                with self.pause():
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

    def _agree_on_signals(self) -> tuple[bool, bool, bool]:
        """(a save is late, node drain, a rank is still writing): one all-reduce at a check step."""
        late = bool(self.cfg.every_seconds) and self.world.is_main and \
            time.monotonic() - self.last_save_time >= (self.cfg.every_seconds or 0)
        writing = self.pending is not None and not self.pending.files.done()
        flags = torch.tensor([float(late), float(writing)], device=self.world.device)
        late_all, writing_any = (bool(v) for v in all_reduce_max(flags).tolist())
        return late_all, self.ray_notices and ray_preemption_notice(), writing_any

    def before_optimizer_step(self) -> None:
        self.copier.wait_on_train_stream()

    def _background_writes(self, reason: str = "interval") -> bool:
        """Interval and epoch saves of full (unsharded) state leave the step when `async` is on; a
        preempted or final save is the last thing the run does, and DCP's sharded save is collective."""
        return self.cfg.async_ and not self.model.sharded and reason in ("interval", "epoch")

    def save(self, reason: str) -> None:
        with self.pause():
            self._save(reason)

    def _save(self, reason: str) -> None:
        self.finish_pending(wait=True)  # one save in flight: checkpoints commit in the order taken
        step, is_main = self.train.position.step, self.world.is_main
        if self.last_saved_step == step and reason != "preempted":
            return
        started = time.perf_counter()
        name = from_main(f"checkpoint_{step:09d}_{time.time_ns() // 1_000_000:x}")
        local = self.store.staging(name)
        trainer = self._trainer_state()  # on every rank: the RNG component gathers all ranks' streams
        trainer_file = trainer if is_main else None
        metrics = self._metrics(reason, name)
        manifest = self._manifest({}, metrics, reason)  # files are added once written
        background = self._background_writes(reason)
        if background:
            state = self.copier.copy(self.model.state_dict()) if is_main else None
            copied = self.copier.copied()
            files = self.writer.submit(lambda: self._write_files(local, state, trainer_file, copied))
        else:
            if self.model.sharded:
                (local / DCP_DIR).mkdir(exist_ok=True)
            write_model(self.model, local, is_main)
            files = Future()
            files.set_result(self._write_files(local, None, trainer_file, lambda: None))
        self.pending = PendingSave(name, step, reason, local, metrics, manifest, time.perf_counter() - started,
                                   files)
        self.last_saved_step, self.last_save_time = step, time.monotonic()
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
        return {rel: digest(str(local / rel)) for rel in owned_files(local, self.world.rank)}

    def finish_pending(self, wait: bool) -> None:
        """Commit the save written in the background: manifest last, then the store (Ray's report).
        Every rank calls this at the same step (it gathers), except `wait=False` on a single worker."""
        pending, is_main = self.pending, self.world.is_main
        if pending is None or (not wait and not pending.files.done()):
            return
        self.pending = None
        mine = pending.files.result()  # what the writer raised, raised here
        parts = gather_objects(mine)
        files = {k: v for part in parts for k, v in part.items()}
        self.check_owner()  # a stale attempt stops here, before its checkpoint could count
        if is_main:
            write_manifest(local_fs(), str(pending.local),
                           dataclasses.replace(pending.manifest, files=files, ranks=[sorted(p) for p in parts]))
        if is_main and self.before_commit is not None:
            self.before_commit()
        # A preemption grace period is short: that checkpoint is uploaded before the run stops.
        self.store.commit(pending.local if mine or is_main else None, pending.name,
                          {**pending.metrics, "checkpoint_blocking_s": pending.blocking_s},
                          self.cfg.async_ and pending.reason != "preempted")
        if not mine and not is_main and self.store.stages_locally:
            shutil.rmtree(pending.local, ignore_errors=True)
        self.last_committed = pending.name
        if is_main:
            log.info("checkpoint %s (%s, step %d) committed; the step waited %.2fs", pending.name, pending.reason,
                     pending.step, pending.blocking_s)
            if self.store.trainer_prunes:
                self.apply_retention()

    def _trainer_state(self) -> dict[str, Any]:
        """trainer.pt: the train state's keys at the top level, every other component (not the model)
        under its name."""
        others = {name: part.state_dict() for name, part in self.components.items() if name not in (MODEL, TRAIN)}
        return {**self.train.state_dict(), **others}

    def _metrics(self, reason: str, name: str) -> dict[str, Any]:
        pos = self.train.position
        return {"epoch": pos.epoch, "step": pos.step, "total_steps": self.total_steps,
                **self.train.last_eval, "checkpoint": name, "checkpoint_reason": reason,
                "preempted": reason == "preempted"}

    def _manifest(self, files: dict[str, Any], metrics: dict[str, Any], reason: str) -> Manifest:
        pos, spec = self.train.position, self.spec
        return Manifest(
            step=pos.step, epoch=pos.epoch, batches_in_epoch=pos.micro_in_epoch,
            samples_in_epoch=self.train.samples_in_epoch,
            world_size=self.world.size, strategy=spec.strategy.type, spec_hash=spec_hash(spec),
            files=files, metrics=scalars(metrics),
            spec=spec_dict(spec), versions=versions(), reason=reason,
            owner=self.owner.manifest_owner() if self.owner else {},
        )

    def apply_retention(self) -> None:
        if self.owner is not None:
            check_still_owner(self.store.fs, self.store.run_path, self.owner)
        self.retention.apply(self.store.fs, self.store.run_path, owner=self.owner)

    def record_result(self, metrics: dict[str, Any]) -> None:
        """At the end of a finished run (rank 0): its final report, for a later run of the same spec
        to report as it was (see `trainforge.checkpoints.final`)."""
        if not self.world.is_main or self.last_committed is None:
            return
        if self.owner is not None:
            check_still_owner(self.store.fs, self.store.run_path, self.owner)
        record = FinalResult(self.last_committed, self.train.position.step, scalars(metrics),
                             self.owner.manifest_owner() if self.owner else {})
        try:
            write_result(self.store.fs, self.store.run_path, record)
        except OSError:  # the run is done and its checkpoints are safe: only the record is missing
            log.exception("could not write the run's result record")

    def check_owner(self) -> None:
        """All ranks: raise StaleWriter when the run is no longer this attempt's (rank 0 reads the record)."""
        if self.owner is not None:
            owner, fs, run_path = self.owner, self.store.fs, self.store.run_path
            same_on_all_ranks((lambda: check_still_owner(fs, run_path, owner)) if self.world.is_main else None,
                              keep=(OSError, StaleWriter))

    # ---- resuming -----------------------------------------------------------------------------

    def candidates(self) -> tuple[list[CheckpointEntry], list[str]]:
        """On rank 0: checkpoints whose files are all there at the right size, newest first, and
        what was skipped (malformed manifests, missing parts). Contents are hashed after the fetch, so
        storage is read once. A checkpoint marked corrupt earlier is a candidate again once it verifies."""
        ensure_bucket(self.store.fs, self.store.run_path, self.retry)  # a missing bucket lists as empty
        found, skipped = [], []
        for entry in reversed(list_checkpoints(self.store.fs, self.store.run_path, check=True, retry=self.retry)):
            if self.owner is not None and entry.manifest and entry.manifest.owner \
                    and not self.owner.same_job(entry.manifest.owner):
                continue  # another job's (a run taken over with resumeFrom): never resumed, never pruned
            if entry.verdict.valid:
                found.append(entry)
            elif entry.malformed or (entry.manifest is not None and entry.manifest.status != "pruned"):
                skipped.append(self._reject(entry, entry.verdict.reason))
        if not found and self.init_from:
            found.extend(self._donor())
        return found, skipped

    def _donor(self) -> list[CheckpointEntry]:
        """The checkpoint this run was told to start from, if it is there and valid."""
        parent = self.init_from.rstrip("/").rsplit("/", 1)[0]  # type: ignore[union-attr]
        return [e for e in list_checkpoints(self.store.fs, parent, check=True, retry=self.retry)
                if e.path.rstrip("/") == self.init_from.rstrip("/") and e.verdict.valid]  # type: ignore[union-attr]

    def _reject(self, entry: CheckpointEntry, reason: str) -> str:
        """Warn, and record a complete checkpoint as corrupt (files and data kept: a later resume checks
        it again, and only retention removes it). A malformed manifest is reported and left as it is."""
        log.warning("checkpoint %s (step %d) is unusable: %s; trying the previous one",
                    entry.name, entry.step, reason)
        if entry.manifest is not None and entry.manifest.status == "complete":
            mark_corrupt(self.store.fs, entry, reason, self.retry)
        return f"{entry.name} (step {entry.step}): {reason}" if entry.manifest else f"{entry.name}: {reason}"

    def restore(self) -> Resumed | None:
        """Load the newest checkpoint every rank's copy of which verifies; None when there is none."""
        entries, skipped = same_on_all_ranks(self.candidates if self.world.is_main else None)
        if not entries and self.init_from:  # starting from scratch instead would quietly waste the trial
            raise FileNotFoundError(f"the checkpoint this run starts from is gone or invalid: {self.init_from}; "
                                    "keep more checkpoints (spec.checkpoint.keep) so they outlive a PBT exploit")
        for entry in entries:
            manifest = self._fetch_and_load(entry, skipped)
            if manifest is None:
                continue
            if self.world.is_main and entry.manifest is not None and entry.manifest.status == "corrupt":
                log.warning("checkpoint %s was marked corrupt (%s) and verifies now: resuming from it",
                            entry.name, entry.manifest.corrupt_reason)
                mark_complete(self.store.fs, entry, self.retry)
            self.last_saved_step = manifest.step
            changed = manifest.spec_hash != spec_hash(self.spec)
            changes = spec_changes(manifest.spec, spec_dict(self.spec)) if changed else []
            if changes and self.world.is_main:
                log.warning("the spec changed since checkpoint %s: %s", entry.path, "; ".join(changes))
            return Resumed(entry.path, manifest.step, skipped, changes)
        return None

    def _fetch_and_load(self, entry: CheckpointEntry, skipped: list[str]) -> Manifest | None:
        """Load `entry` into every component; None (and the reason in `skipped`) when a rank's copy
        does not verify or its contents would leave the checkpoint or run code."""
        try:
            with self.store.fetch(entry.path) as fetched:
                local = Path(fetched)
                verdict = verify(local_fs(), str(local), hashes=True)
                if not all_reduce_min(torch.tensor([float(verdict.valid)], device=self.world.device)).item():
                    if self.world.is_main:
                        skipped.append(self._reject(entry, verdict.reason or "a rank's copy did not verify"))
                    return None
                manifest = Manifest.from_json((local / "manifest.json").read_text())
                self._load(local, manifest)
                return manifest
        except (UnsafeCheckpoint, pickle.UnpicklingError, CheckpointException) as exc:
            reason = unsafe_reason(exc) or (str(exc) if isinstance(exc, pickle.UnpicklingError) else None)
            if reason is None:
                raise  # a DCP failure that is not about the contents (a peer died): not this checkpoint's fault
            if self.world.is_main:
                skipped.append(self._reject(entry, f"unsafe contents: {reason}"))
            return None

    def _load(self, local: Path, manifest: Manifest) -> None:
        """Every component restores itself; one the checkpoint holds no state for stays as it is
        (early stopping added to the spec since, say). The model goes first: the schedule sets its lr."""
        read_model(self.model, local, manifest.strategy == "fsdp")
        trainer = read_trainer(local)
        self.train.load_state_dict(trainer)
        for name, part in self.components.items():
            if name not in (MODEL, TRAIN) and trainer.get(name) is not None:
                part.load_state_dict(trainer[name])

    def close(self) -> None:
        self.watch.close()
        self.writer.close()
        self.copier.close()
        if self.pending is not None:  # the run failed before committing it: without a manifest it was never valid
            if self.store.stages_locally or self.world.is_main:
                shutil.rmtree(self.pending.local, ignore_errors=True)
            self.pending = None
        self.store.close()
        if self.world.is_main and self.store.trainer_prunes and self.last_saved_step >= 0:
            try:
                self.apply_retention()  # the last upload has landed: prune what it made surplus
            except OSError:
                log.exception("checkpoint retention failed at the end of the run")
