"""The names a TrainingJob's status is made of: phases, condition types, reasons, attempt results.

API constants live next to the API types, as Kubeflow Trainer keeps its condition and reason names:
every writer (operator, local supervisor, trainer) and every reader (SDK, CLI, kubectl columns) uses
these, never a string literal of its own."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    CREATED = "Created"
    QUEUED = "Queued"
    """The attempt waits for Kueue to admit it (spec.queue): its RayJob is suspended."""
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def is_terminal(self) -> bool:
        """Nothing more happens to the job but its TTL."""
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class ConditionType(StrEnum):
    CREATED = "Created"
    QUEUED = "Queued"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SPEC_CHANGE_REJECTED = "SpecChangeRejected"


class Reason(StrEnum):
    """Machine-readable reasons of transitions, conditions and events."""

    CREATED = "Created"
    ATTEMPT_CREATED = "AttemptCreated"
    ATTEMPT_RUNNING = "AttemptRunning"
    ATTEMPT_FAILED = "AttemptFailed"
    PREEMPTED = "Preempted"
    PREEMPTION_UNCONFIRMED = "PreemptionUnconfirmed"
    STATUS_RESTORED = "StatusRestored"
    RESTARTS_EXHAUSTED = "RestartsExhausted"
    SUCCEEDED = "Succeeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    SUSPENDING = "Suspending"
    SUSPENDED = "Suspended"
    SUSPEND_CANCELLED = "SuspendCancelled"
    RESUMED = "Resumed"
    QUEUED = "Queued"
    """The attempt's RayJob waits, suspended, for Kueue to admit it."""
    ADMITTED = "Admitted"
    """Kueue admitted the attempt (unsuspended its RayJob): its pods start."""
    INVALID_SPEC = "InvalidSpec"
    INVALID_EDIT = "InvalidEdit"
    IMMUTABLE_FIELD_CHANGED = "ImmutableFieldChanged"
    SPEC_CHANGE_REJECTED = "SpecChangeRejected"
    NO_STORAGE = "NoStorage"
    CODE_NOT_SHIPPED = "CodeNotShipped"
    """spec.runtime.workingDir is a local path, which no pod can read: it must be uploaded first."""
    RAYJOB_REJECTED = "RayJobRejected"
    RUN_REFUSED = "RunRefused"
    """The trainer would not start: the run belongs to another job, or its checkpoint does not fit the spec."""
    WAITING_FOR_PREVIOUS = "WaitingForPreviousAttempt"
    """A new attempt waits until the pods of an earlier attempt (or incarnation) are gone."""
    STORAGE_UNAVAILABLE = "StorageUnavailable"
    """The attempt failed because checkpoint storage was unreachable: the next one starts after a backoff.
    Also the name of the trainer's error type for it, which is how the lifecycle tells."""
    START_TIMEOUT = "StartTimeout"
    """An attempt did not start running within spec.startTimeoutSeconds."""
    NOT_ALLOWED = "NotAllowed"
    """The operator's policy refuses the job as written: a service account it may not run as, or a
    namespace it does not run jobs in (the message names the field and the way out)."""


class AttemptResult(StrEnum):
    """How the trainer says an attempt ended (status.outcome.result, and its exit code)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PREEMPTED = "preempted"
    REFUSED = "refused"
    """Refused to start (the run is another job's, or its checkpoint does not fit the spec): retrying
    the same spec cannot help, so the job fails at once."""


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


PHASES: tuple[str, ...] = tuple(p.value for p in Phase)
TERMINAL_PHASES = frozenset(p for p in Phase if p.is_terminal)
