"""TrainingJob status: written by the operator and the trainer, read by the SDK and kubectl."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema

from .base import NonNegativeInt, NonNegativeInt64, SpecModel
from .phases import PHASES, TERMINAL_PHASES, AttemptResult, ConditionType, Phase

__all__ = ["PHASES", "TERMINAL_PHASES", "AttemptOutcome", "CheckpointRef", "Condition", "Progress",
           "TrainingJobStatus", "TuneBest", "TuneStatus"]


def _parse_time(value: Any) -> Any:
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


def _format_time(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


Timestamp = Annotated[
    datetime,
    BeforeValidator(_parse_time),
    PlainSerializer(_format_time, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""RFC 3339 time in UTC, as metav1.Time writes it."""

# The enums take their wire strings (strict mode alone would want enum instances from Python input).
PhaseName = Annotated[Phase, Field(strict=False)]
ConditionName = Annotated[ConditionType, Field(strict=False)]
ResultName = Annotated[AttemptResult, Field(strict=False)]


class Condition(SpecModel):
    type: ConditionName
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: Timestamp
    observed_generation: NonNegativeInt64 | None = None


class Progress(SpecModel):
    epoch: NonNegativeInt = 0
    step: NonNegativeInt = 0
    """Optimizer steps taken."""
    total_steps: NonNegativeInt | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    percent: Annotated[float, Field(ge=0, le=100)] | None = None
    """Steps taken of the total, in percent (one decimal)."""
    eta_seconds: NonNegativeInt | None = None
    """Seconds left at the step rate measured over the last minutes of this attempt."""
    eta: str | None = None
    """The same as a duration (e.g. 1h05m), for `kubectl get`; both are as of update_time."""
    update_time: Timestamp | None = None


class CheckpointRef(SpecModel):
    uri: str
    step: NonNegativeInt | None = None
    metric: str | None = None
    value: float | None = None


class TuneBest(SpecModel):
    trial: str
    config: dict[str, Any] = Field(default_factory=dict)
    """The best trial's sampled values, keyed by spec path."""
    metric: str
    value: float | None = None
    checkpoint: str | None = None


class TuneStatus(SpecModel):
    trials: dict[str, NonNegativeInt] = Field(default_factory=dict)
    """Number of trials by state (PENDING, RUNNING, TERMINATED, ERROR ...)."""
    best: TuneBest | None = None


class AttemptOutcome(SpecModel):
    """How the trainer says an attempt ended, written by the trainer itself just before it exits:
    the operator tells a preemption from a failure by it."""

    attempt: NonNegativeInt
    result: ResultName
    message: str = ""
    time: Timestamp | None = None


class TrainingJobStatus(SpecModel):
    phase: PhaseName | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: NonNegativeInt64 | None = None
    attempt: NonNegativeInt = 0
    """Current attempt (RayJob <name>-a<attempt>)."""
    restarts: NonNegativeInt = 0
    """Attempts started after failures that count against restartPolicy.maxRestarts."""
    preemptions: NonNegativeInt = 0
    start_time: Timestamp | None = None
    completion_time: Timestamp | None = None
    progress: Progress | None = None
    latest_checkpoint: str | None = None
    best_checkpoint: CheckpointRef | None = None
    tune: TuneStatus | None = None
    message: str | None = None
    reason: str | None = None
    """Machine-readable reason of the last transition (e.g. DeadlineExceeded, RestartsExhausted)."""
    outcome: AttemptOutcome | None = None
    spec_hash: str | None = None
    """Hash of the spec's immutable part when the job was accepted; edits to it are not applied."""
    head_missing_since: Timestamp | None = None
    """When the current attempt's head pod was first seen gone while its RayJob was not finished."""
    suspend_requested: Timestamp | None = None
    """When the operator started suspending: the trainer checkpoints and exits, or the grace ends."""
    disrupted_attempt: NonNegativeInt | None = None
    """Attempt whose pods were seen marked DisruptionTarget while it ran: its end counts as a preemption."""
