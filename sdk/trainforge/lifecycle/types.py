"""What the lifecycle takes (a view of the current attempt, timings) and gives (a transition)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from ..spec import TrainingJobStatus
from ..spec.phases import EventType

OWNED_FIELDS = ("phase", "conditions", "observedGeneration", "attempt", "restarts", "preemptions", "startTime",
                "completionTime", "message", "reason", "specHash", "headMissingSince", "suspendRequested",
                "disruptedAttempt")
"""Status fields the lifecycle writes (by wire name). The trainer writes the others."""


class AttemptState(StrEnum):
    NONE = "None"
    """No attempt exists: not created yet, or gone (deleted, its process lost)."""
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    ENDED = "Ended"
    """Ended without success; the trainer's outcome tells a preemption from a failure."""


@dataclass(frozen=True)
class AttemptView:
    """What a backend observed of the job's current attempt (`status.attempt`)."""

    state: AttemptState
    message: str = ""
    """Why it ended or went, in the backend's words (the trainer's outcome message wins)."""
    disrupted: bool = False
    """Its pods are marked for disruption (Kubernetes' DisruptionTarget): their loss is a preemption."""
    head_lost: bool = False
    """Its Ray head is gone while the attempt has not ended (cluster only)."""
    created: datetime | None = None
    """With state PENDING: when the attempt was created (its start deadline counts from then)."""
    queued: bool = False
    """With state PENDING: its RayJob is suspended, waiting for Kueue to admit it (`message` is
    Kueue's word on why, when there is one). Seen after the attempt ran, it is Kueue's preemption."""
    waiting_on: tuple[str, ...] = ()
    """With state NONE: what must be gone before the attempt may start (pods of an earlier attempt
    or incarnation that may still run a trainer). Empty: nothing is in the way."""

    @property
    def active(self) -> bool:
        return self.state in (AttemptState.PENDING, AttemptState.RUNNING)


@dataclass(frozen=True)
class Timing:
    suspend_grace_s: float = 120.0
    """How long a suspending attempt gets to checkpoint and stop before it is stopped."""
    head_lost_grace_s: float = 60.0
    resync_s: float = 10.0
    """How soon to look again at a running attempt when nothing wakes the backend."""
    storage_backoff_s: float = 30.0
    """After an attempt that storage failed, the next starts this long after (doubling per restart, up
    to 8x): an outage should not burn restarts back to back while the data is intact."""
    fence_wait_s: float = 120.0
    """How long a new attempt waits for an earlier one's pods to go; after that it starts anyway
    (with a Warning) and the run's owner record stops the old writer."""
    preemption_needs_evidence: bool = False
    """Count a trainer's "preempted" as a (free) preemption only when the backend saw it too: a pod
    marked for disruption or deleted, or a suspension. On a cluster the trainer runs the user's code
    with a token that can write the job's status; a preemption claimed alone counts as a failure."""


@dataclass(frozen=True)
class StartAttempt:
    number: int


@dataclass(frozen=True)
class StopAttempt:
    number: int


@dataclass(frozen=True)
class DeleteJob:
    """ttlSecondsAfterFinished has passed: delete the job (its checkpoints stay)."""


Action = StartAttempt | StopAttempt | DeleteJob


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass
class Transition:
    before: TrainingJobStatus
    status: TrainingJobStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    """Look again after this many seconds at the latest (deadline, TTL, grace periods)."""

    @property
    def start(self) -> StartAttempt | None:
        return next((a for a in self.actions if isinstance(a, StartAttempt)), None)

    @property
    def stops(self) -> list[int]:
        return [a.number for a in self.actions if isinstance(a, StopAttempt)]

    @property
    def delete_job(self) -> bool:
        return any(isinstance(a, DeleteJob) for a in self.actions)

    def status_patch(self, current: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Merge patch of the owned fields that differ from `current` (the status as read; by
        default the one the transition started from), with null for those that went."""
        current = dump(self.before) if current is None else current
        after = dump(self.status)
        patch = {k: after[k] for k in OWNED_FIELDS if k in after and current.get(k) != after[k]}
        patch.update({k: None for k in OWNED_FIELDS if k in current and k not in after})
        return patch


def dump(status: TrainingJobStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def parse_status(raw: Mapping[str, Any] | None) -> tuple[TrainingJobStatus, list[str]]:
    """The status as read from the API or a file, typed. Status is untrusted input: a field that
    does not validate is dropped (and named in the second value), never fatal."""
    doc = dict(raw or {})
    dropped: list[str] = []
    while True:
        try:
            return TrainingJobStatus.model_validate(doc), dropped
        except ValueError as err:
            errors = err.errors() if hasattr(err, "errors") else []
            bad = {str(e["loc"][0]) for e in errors if e.get("loc")} & set(doc)
            if not bad:
                return TrainingJobStatus(), [*dropped, *doc]
            dropped += sorted(bad)
            doc = {k: v for k, v in doc.items() if k not in bad}
