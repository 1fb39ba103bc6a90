"""Before any worker starts: may this attempt use the run directory, and what is there to resume?

The driver claims the run (`owner.json`) for its job and attempt, and looks at the newest checkpoint
the job itself wrote: a run of another job is refused, a spec the checkpoint cannot be loaded into is
refused, and a run that already finished is reported as it finished instead of being trained again."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainforge.checkpoints import CheckpointEntry, StorageTarget, list_checkpoints
from trainforge.checkpoints.final import FinalResult, read_result
from trainforge.checkpoints.manifest import read_manifest
from trainforge.checkpoints.owner import (
    Claim,
    RunOwner,
    StaleWriter,
    decide_claim,
    foreign_message,
    read_owner,
    write_owner,
)
from trainforge.checkpoints.retry import Retry
from trainforge.spec import TrainingJobSpec

from .state import spec_changes, spec_dict, spec_hash

log = logging.getLogger("trainforge.checkpoint")

INCOMPATIBLE = ("spec.task.", "spec.optimizer.name:", "spec.strategy.type:")
"""Spec paths whose change makes a checkpoint unloadable (another model or optimizer state layout)."""
LENGTH = ("spec.task.", "spec.epochs:", "spec.maxSteps:", "spec.batch.size:", "spec.batch.gradAccumulation:",
          "spec.workers:")
"""Spec paths that change how long the run is: a finished run with none changed is complete."""


class RunOwnershipError(ValueError):
    """The run directory cannot be used by this job as it is; the message names the ways out."""


@dataclass(frozen=True)
class RunClaim:
    owner: RunOwner
    """The record as written: what the workers put into manifests and check before each commit."""
    init_from: str | None = None
    """`spec.checkpoint.resumeFrom`, when the run has no checkpoint of this job's own."""
    finished: FinalResult | None = None
    """How the run ended, when it already finished with this spec (nothing left to train)."""


def claim_run(target: StorageTarget, run_name: str, spec: TrainingJobSpec, me: RunOwner) -> RunClaim:
    """Claim the run for `me` (raising StaleWriter or RunOwnershipError when it may not), then say
    where it starts from."""
    fs, run_path, uri = target.filesystem, target.run_path(run_name), target.run_uri(run_name)
    retry = Retry.for_config(spec.checkpoint, uri)  # an outage at start-up is ridden out as at restore
    complete = [e for e in list_checkpoints(fs, run_path, check=False, retry=retry) if e.complete]
    current = read_owner(fs, run_path) or _writer_of(complete)
    others = [e for e in complete if e.manifest and e.manifest.owner and not me.same_job(e.manifest.owner)]
    takeover = spec.checkpoint.resume_from is not None
    verdict = decide_claim(current, me, bool(others), takeover)
    if verdict == Claim.STALE:
        raise StaleWriter(f"attempt {current.attempt} of this job already owns run {uri}; "  # type: ignore[union-attr]
                          f"attempt {me.attempt} is stale and does not start")
    if verdict == Claim.FOREIGN:
        raise RunOwnershipError(foreign_message(uri, current, me))  # type: ignore[arg-type]
    owner = write_owner(fs, run_path, RunOwner(me.name, me.namespace, me.uid, me.attempt, spec_hash(spec)))
    own = [e for e in complete if not e.manifest.owner or me.same_job(e.manifest.owner)]  # type: ignore[union-attr]
    if not own:
        return RunClaim(owner, init_from=resume_path(fs, spec))
    newest = own[-1]
    changes = spec_changes(newest.manifest.spec, spec_dict(spec))  # type: ignore[union-attr]
    check_compatible(uri, newest, changes)
    final = read_result(fs, run_path)
    done = final is not None and final.checkpoint == newest.name and (not final.owner or me.same_job(final.owner))
    finished = done and not any(c.startswith(LENGTH) for c in changes)
    return RunClaim(owner, finished=final if finished else None)


def resume_path(fs: Any, spec: TrainingJobSpec) -> str | None:
    """spec.checkpoint.resumeFrom as a path on the run's filesystem, once it is seen to be a checkpoint."""
    uri = spec.checkpoint.resume_from
    if uri is None:
        return None
    path = uri.split("://", 1)[1] if "://" in uri else str(Path(uri).expanduser().resolve())
    try:
        manifest = read_manifest(fs, path.rstrip("/"))
    except ValueError as exc:
        raise RunOwnershipError(f"spec.checkpoint.resumeFrom: {uri} has an unreadable manifest: {exc}") from None
    if manifest is None or manifest.status != "complete":
        state = "no checkpoint" if manifest is None else f"a {manifest.status} checkpoint"
        raise RunOwnershipError(f"spec.checkpoint.resumeFrom: {uri} is {state}; name a complete one "
                                "(`trainforge checkpoints NAME` lists them)")
    return path.rstrip("/")


def check_compatible(uri: str, newest: CheckpointEntry, changes: list[str]) -> None:
    """Refuse, before any worker starts, a spec whose model or optimizer the checkpoint cannot fill."""
    breaking = [c for c in changes if c.startswith(INCOMPATIBLE)]
    if breaking:
        raise RunOwnershipError(
            f"run {uri} has checkpoint {newest.name} (step {newest.step}) of a different model: "
            f"{'; '.join(breaking)}. It cannot be resumed with this spec: start over with "
            "`trainforge run --fresh` (discards the checkpoints), use another metadata.name, or set "
            "spec.checkpoint.resumeFrom to a checkpoint of a run with this model")


def _writer_of(complete: list[CheckpointEntry]) -> RunOwner | None:
    """The job that wrote the newest checkpoint, when the run has no (readable) owner record."""
    for entry in reversed(complete):
        raw: dict[str, Any] = entry.manifest.owner if entry.manifest else {}
        if raw.get("name"):
            try:
                return RunOwner.from_dict({**raw, "attempt": 0})
            except ValueError:
                continue
    return None
