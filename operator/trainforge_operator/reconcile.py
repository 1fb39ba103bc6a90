"""The operator's decision as a pure function: (TrainingJob, its current RayJob and pods, now) →
(RayJob to create, RayJobs to delete, status patch, events). No I/O: the kopf side fetches and applies.

What happens to a job is `trainforge.lifecycle`'s (the local backend uses the same); this module
only turns what the operator sees into the lifecycle's terms and its actions into Kubernetes objects."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from trainforge.lifecycle import Event, Lifecycle, Reason, Timing, Transition, parse_status
from trainforge.lifecycle.types import dump
from trainforge.spec.contract import attempt_name
from trainforge.spec.phases import EventType

from . import policy
from .edits import SpecToRun, spec_to_run
from .observed import Observed, attempt_view, blockers, orphans
from .rayjob import build_rayjob, storage_for
from .settings import OperatorSettings

log = logging.getLogger("trainforge.operator")


@dataclass
class Decision:
    status: dict[str, Any] = field(default_factory=dict)
    """Merge patch for .status (only what changed)."""
    create: dict[str, Any] | None = None
    delete: list[str] = field(default_factory=list)
    """RayJob names to delete."""
    delete_job: bool = False
    """The TrainingJob's TTL after finishing has passed."""
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    ledger: Ledger | None = None
    """What this decision leaves in the status's LEDGER_FIELDS, for the next pass to hold it to."""


LEDGER_FIELDS = ("attempt", "restarts", "preemptions", "startTime")
"""Counters and the deadline clock, which only the operator writes. The trainer's token can write
the status subresource (the chart's ValidatingAdmissionPolicy stops it where Kubernetes has one):
the operator remembers what it wrote and puts back anything else, so a job cannot buy itself
restarts or time. Kept in memory: after an operator restart the stored values are taken as read."""


@dataclass(frozen=True)
class Ledger:
    uid: str
    values: tuple[tuple[str, Any], ...]


def timing(settings: OperatorSettings) -> Timing:
    return Timing(suspend_grace_s=settings.suspend_grace_s, head_lost_grace_s=settings.head_lost_grace_s,
                  resync_s=settings.resync_s, fence_wait_s=settings.fence_wait_s,
                  preemption_needs_evidence=True)  # the trainer runs user code with a token: see Timing


def reconcile(obs: Observed, settings: OperatorSettings, ledger: Ledger | None = None) -> Decision:
    machine = _machine(obs, ledger)
    view = attempt_view(obs, machine.attempt, _said_goodbye(machine))
    to_run: SpecToRun | None = None
    if not machine.phase.is_terminal:
        to_run = spec_to_run(obs, machine, view)
    if to_run is not None:
        if (refused_why := policy.refusal(to_run.spec, _namespace(obs), settings)) is not None:
            machine.fail(Reason.NOT_ALLOWED, refused_why, view)
        elif storage_for(to_run.spec, _namespace(obs), settings) is None:
            machine.fail(Reason.NO_STORAGE, "spec.checkpoint.storage: set s3://bucket/prefix (or give the operator "
                                             "a default storage) so attempts can resume from checkpoints", view)
        elif to_run.spec.runtime is not None and to_run.spec.runtime.needs_upload:
            machine.fail(Reason.CODE_NOT_SHIPPED, f"spec.runtime.workingDir: {to_run.spec.runtime.working_dir} is a "
                         "local directory, which the cluster cannot read: submit with `trainforge submit` (it "
                         "uploads the directory), or apply the manifest `trainforge ship FILE` prints", view)
        else:
            machine.advance(to_run.spec, view, timing(settings))
    return _decision(obs, machine.transition(), to_run, settings)


def refused(obs: Observed, settings: OperatorSettings, why: str) -> Decision:
    """The API server will not take the attempt's RayJob (invalid field, KubeRay missing): retrying
    cannot help, so the job fails with the server's own words."""
    machine = _machine(obs)
    machine.fail(Reason.RAYJOB_REJECTED, why)
    return _decision(obs, machine.transition(), None, settings)


def _machine(obs: Observed, ledger: Ledger | None = None) -> Lifecycle:
    meta = obs.job.get("metadata") or {}
    raw = dict(obs.job.get("status") or {})
    restored = []
    if ledger is not None and ledger.uid == meta.get("uid"):
        for key, value in ledger.values:
            if raw.get(key) != value:
                restored.append(f"{key} {raw.get(key)!r} -> {value!r}")
                raw[key] = value
    status, dropped = parse_status(raw)
    if dropped:  # status is untrusted input: what does not validate is rewritten, never trusted
        log.warning("TrainingJob %s: status fields %s do not validate and are ignored", meta.get("name"), dropped)
    machine = Lifecycle(status, obs.now, meta.get("generation"), meta.get("name", ""))
    if restored:
        machine.event(EventType.WARNING, Reason.STATUS_RESTORED, "status written outside the operator, put back: "
                      + ", ".join(restored))
    ttl = (obs.job.get("spec") or {}).get("ttlSecondsAfterFinished")
    machine.ttl_after_finished = ttl if isinstance(ttl, int) and not isinstance(ttl, bool) else None
    return machine


def _decision(obs: Observed, transition: Transition, to_run: SpecToRun | None,
              settings: OperatorSettings) -> Decision:
    name = (obs.job.get("metadata") or {}).get("name", "")
    after = dump(transition.status)
    decision = Decision(status=transition.status_patch(obs.job.get("status") or {}),
                        ledger=Ledger((obs.job.get("metadata") or {}).get("uid", ""),
                                      tuple((key, after.get(key)) for key in LEDGER_FIELDS)),
                        delete=[attempt_name(name, n) for n in transition.stops],
                        delete_job=transition.delete_job, events=list(transition.events),
                        requeue_after=transition.requeue_after)
    decision.delete += [n for n in orphans(obs) if n not in decision.delete]
    start = transition.start
    if start is not None and to_run is not None:
        if start.number != machine_attempt(obs) and blockers(obs, start.number, _goodbye_of(transition)):
            # Decided in this pass: the ending attempt's pods are still there. The next pass sees the
            # new attempt missing and waits for them, boundedly, through the lifecycle.
            decision.requeue_after = min(decision.requeue_after or 1.0, 1.0)
        elif to_run.hold:
            decision.requeue_after = min(decision.requeue_after or settings.resync_s, settings.resync_s)
        else:
            decision.create = build_rayjob(obs.job, to_run.spec, start.number, settings, transition.status.spec_hash)
    return decision


def _said_goodbye(machine: Lifecycle) -> int | None:
    outcome = machine.status.outcome
    return outcome.attempt if outcome is not None else None


def _goodbye_of(transition: Transition) -> int | None:
    outcome = transition.status.outcome
    return outcome.attempt if outcome is not None else None


def machine_attempt(obs: Observed) -> int:
    """The attempt number the status named when observed."""
    raw = (obs.job.get("status") or {}).get("attempt")
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else 0


def _namespace(obs: Observed) -> str:
    return (obs.job.get("metadata") or {}).get("namespace") or "default"
