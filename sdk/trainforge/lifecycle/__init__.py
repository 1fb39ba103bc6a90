"""The job lifecycle, once for every backend: attempts, restarts vs preemptions, suspend and resume,
deadline and TTL. Pure: no Kubernetes, Ray or torch, no clock and no I/O.

A backend observes the current attempt (a RayJob and its pods on a cluster, the supervisor's own
attempt locally), describes it as an `AttemptView`, and calls `advance`. What comes back is the next
`TrainingJobStatus` and what to do about it (start attempt N, stop it, delete the job, post events);
the backend applies that in its own terms and writes `Transition.status_patch` — only the fields the
lifecycle owns, so the trainer's own writes (progress, checkpoints, outcome) are never overwritten.

Note:
    Every decision is idempotent: attempt numbers live in the status and a start is asked for again
    until the attempt is seen, so a status written before a crash is read back before anything is
    redone."""

from __future__ import annotations

from datetime import datetime

from ..spec import TrainingJobSpec, TrainingJobStatus
from ..spec.phases import AttemptResult, EventType, Phase, Reason
from .machine import Lifecycle
from .types import (
    OWNED_FIELDS,
    AttemptState,
    AttemptView,
    DeleteJob,
    Event,
    StartAttempt,
    StopAttempt,
    Timing,
    Transition,
    parse_status,
)

DEFAULT_TIMING = Timing()

__all__ = ["OWNED_FIELDS", "AttemptResult", "AttemptState", "AttemptView", "DeleteJob", "Event", "EventType",
           "Lifecycle", "Phase", "Reason", "StartAttempt", "StopAttempt", "Timing", "Transition", "advance",
           "parse_status"]


def advance(status: TrainingJobStatus, spec: TrainingJobSpec, attempt: AttemptView, now: datetime,
            timing: Timing = DEFAULT_TIMING, generation: int | None = None, name: str = "") -> Transition:
    """The next status and actions of a job whose current attempt is `attempt`.

    Args:
        status: the job's status as read (typed; see `parse_status`).
        spec: the spec attempts are built from (a backend that rejects edits passes the accepted one).
        attempt: the backend's view of attempt `status.attempt`.
        now: the backend's clock; the lifecycle reads none.
        timing: grace periods and the resync interval.
        generation: metadata.generation, for observedGeneration (None where there is none).
        name: the job's name, for messages."""
    machine = Lifecycle(status, now, generation, name)
    machine.advance(spec, attempt, timing)
    return machine.transition()
