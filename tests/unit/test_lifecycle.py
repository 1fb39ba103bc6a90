"""The lifecycle's transition table, shared by the operator and the local backend.

Each case is one pure `advance`: a status as read, spec overrides, the backend's view of the current
attempt and the clock (seconds after T0) in; the next phase, counters, actions, events and requeue
out. Both backends only translate AttemptViews in and actions out, so this table is their lifecycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from trainforge.lifecycle import (
    OWNED_FIELDS,
    AttemptState,
    AttemptView,
    DeleteJob,
    Lifecycle,
    Phase,
    Reason,
    StartAttempt,
    StopAttempt,
    Timing,
    Transition,
    advance,
    parse_status,
)
from trainforge.lifecycle.types import Action
from trainforge.spec import TrainingJobSpec, TrainingJobStatus
from trainforge.spec import conditions as conds

from tests.unit.manifests import manifest

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
TIMING = Timing(suspend_grace_s=120, head_lost_grace_s=60, resync_s=10)

NONE = AttemptView(AttemptState.NONE)
PENDING = AttemptView(AttemptState.PENDING)
RUNNING = AttemptView(AttemptState.RUNNING)
OK = AttemptView(AttemptState.SUCCEEDED)
ENDED = AttemptView(AttemptState.ENDED, "exit code 1")
HEAD_LOST = AttemptView(AttemptState.RUNNING, "the head pod of digits-a1", head_lost=True)

NO_RESTARTS = {"restartPolicy": {"maxRestarts": 0}}
COUNTED = {"restartPolicy": {"countPreemptions": True}}
SUSPEND = {"suspend": True}
DEADLINE = {"activeDeadlineSeconds": 100}
PREEMPTED_1 = {"attempt": 1, "result": "preempted", "message": "SIGTERM"}
CREATED_EVENTS = ("Created", "AttemptCreated")
FAILED_EVENTS = ("AttemptFailed", "Restarting", "AttemptCreated")
PREEMPTED_EVENTS = ("Preempted", "Restarting", "AttemptCreated")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ts(seconds: float) -> str:
    """The wire form of T0 + seconds, as the status serializes it."""
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def st(phase: str, attempt: int, reason: str | None = None, **extra: Any) -> dict[str, Any]:
    """A status as read: `phase` at attempt N, started at T0, plus wire-named fields."""
    doc: dict[str, Any] = {"phase": phase, "attempt": attempt, "startTime": ts(0), **extra}
    return doc if reason is None else {**doc, "reason": reason}


def running(attempt: int = 1, **extra: Any) -> dict[str, Any]:
    return st("Running", attempt, "AttemptRunning", **extra)


def spec_of(overrides: dict[str, Any]) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(manifest(**overrides)["spec"])


def parse(raw: dict[str, Any]) -> TrainingJobStatus:
    return TrainingJobStatus.model_validate(raw)


def wire(status: TrainingJobStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def reasons(transition: Transition) -> list[str]:
    return [e.reason for e in transition.events]


@dataclass(frozen=True)
class Case:
    id: str
    before: dict[str, Any]
    spec: dict[str, Any]
    view: AttemptView
    at: float
    phase: Phase
    reason: str | None
    attempt: int
    restarts: int = 0
    preemptions: int = 0
    actions: tuple[Action, ...] = ()
    events: tuple[str, ...] = ()
    requeue: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    """Wire fields of the status after; None: absent."""
    condition: tuple[str, str, str] | None = None
    """(type, status, reason) of one condition after."""


C = Case
P = Phase
CASES: list[Case] = [
    # ---- first sight
    C("first-sight", {}, {}, NONE, 0, P.CREATED, None, 1, actions=(StartAttempt(1),), events=CREATED_EVENTS,
      fields={"startTime": ts(0)}, condition=("Created", "True", "Created")),
    C("first-sight-suspended", {}, SUSPEND, NONE, 0, P.SUSPENDED, "Suspended", 0, events=("Created", "Suspended"),
      fields={"startTime": None}, condition=("Suspended", "True", "Suspended")),
    # ---- attempt pending / running
    C("pending", st("Created", 1), {}, PENDING, 5, P.CREATED, None, 1, requeue=10),
    C("running-entered", st("Created", 1), {}, RUNNING, 5, P.RUNNING, "AttemptRunning", 1, events=("Running",),
      requeue=10, condition=("Running", "True", "AttemptRunning")),
    C("running-after-restart", st("Restarting", 2, "AttemptFailed", restarts=1), {}, RUNNING, 5, P.RUNNING,
      "AttemptRunning", 2, restarts=1, events=("Running",), requeue=10,
      condition=("Restarting", "False", "AttemptRunning")),
    C("running-steady", running(), {}, RUNNING, 50, P.RUNNING, "AttemptRunning", 1, requeue=10),
    C("pending-again-stays-running", running(), {}, PENDING, 50, P.RUNNING, "AttemptRunning", 1, requeue=10),
    # ---- success and TTL
    C("succeeded", running(), {}, OK, 100, P.SUCCEEDED, "Succeeded", 1, events=("Succeeded",),
      fields={"completionTime": ts(100)}, condition=("Running", "False", "Succeeded")),
    C("succeeded-ttl-starts", running(), {"ttlSecondsAfterFinished": 30}, OK, 100, P.SUCCEEDED, "Succeeded", 1,
      events=("Succeeded",), requeue=30),
    C("succeeded-ttl-zero", running(), {"ttlSecondsAfterFinished": 0}, OK, 100, P.SUCCEEDED, "Succeeded", 1,
      actions=(DeleteJob(),), events=("Succeeded",)),
    C("finished-ttl-left", st("Succeeded", 1, "Succeeded", completionTime=ts(0)), {"ttlSecondsAfterFinished": 30},
      NONE, 10, P.SUCCEEDED, "Succeeded", 1, requeue=20),
    C("finished-ttl-passed", st("Succeeded", 1, "Succeeded", completionTime=ts(0)), {"ttlSecondsAfterFinished": 30},
      NONE, 30, P.SUCCEEDED, "Succeeded", 1, actions=(DeleteJob(),)),
    C("finished-no-ttl", st("Succeeded", 1, "Succeeded", completionTime=ts(0)), {}, RUNNING, 10_000, P.SUCCEEDED,
      "Succeeded", 1),
    # ---- terminal phases: nothing but the TTL
    C("failed-ttl-passed", st("Failed", 1, "RestartsExhausted", completionTime=ts(0)), {"ttlSecondsAfterFinished": 60},
      RUNNING, 61, P.FAILED, "RestartsExhausted", 1, actions=(DeleteJob(),)),
    C("failed-ignores-attempt", st("Failed", 1, "RestartsExhausted", completionTime=ts(0)), {}, ENDED, 61, P.FAILED,
      "RestartsExhausted", 1),
    C("failed-ignores-suspend", st("Failed", 1, "DeadlineExceeded", completionTime=ts(0)), SUSPEND, RUNNING, 61,
      P.FAILED, "DeadlineExceeded", 1),
    # ---- failures: restart while restarts are left
    C("failed-restarts", running(), {}, ENDED, 50, P.RESTARTING, "AttemptFailed", 2, restarts=1,
      actions=(StartAttempt(2),), events=FAILED_EVENTS, fields={"message": "attempt 2: exit code 1"}),
    C("failed-outcome-message", running(outcome={"attempt": 1, "result": "failed", "message": "CUDA OOM"}), {}, ENDED,
      50, P.RESTARTING, "AttemptFailed", 2, restarts=1, actions=(StartAttempt(2),), events=FAILED_EVENTS,
      fields={"message": "attempt 2: CUDA OOM"}),
    C("failed-last-restart", running(3, restarts=2), {}, ENDED, 50, P.RESTARTING, "AttemptFailed", 4, restarts=3,
      actions=(StartAttempt(4),), events=FAILED_EVENTS),
    C("restarts-exhausted", running(4, restarts=3), {}, ENDED, 50, P.FAILED, "RestartsExhausted", 4, restarts=3,
      events=("Failed",), fields={"completionTime": ts(50)}, condition=("Failed", "True", "RestartsExhausted")),
    C("no-restarts-allowed", running(), NO_RESTARTS, ENDED, 50, P.FAILED, "RestartsExhausted", 1, events=("Failed",)),
    # ---- preemptions: free unless countPreemptions; only the current attempt's outcome is trusted
    C("preempted", running(outcome=PREEMPTED_1), {}, ENDED, 50, P.RESTARTING, "Preempted", 2, preemptions=1,
      actions=(StartAttempt(2),), events=PREEMPTED_EVENTS, fields={"message": "attempt 2: SIGTERM"}),
    C("preempted-restarts-exhausted", running(outcome=PREEMPTED_1), NO_RESTARTS, ENDED, 50, P.RESTARTING,
      "Preempted", 2, preemptions=1, actions=(StartAttempt(2),), events=PREEMPTED_EVENTS),
    C("preempted-counted", running(outcome=PREEMPTED_1), COUNTED, ENDED, 50, P.RESTARTING, "Preempted", 2,
      restarts=1, preemptions=1, actions=(StartAttempt(2),), events=PREEMPTED_EVENTS),
    C("preempted-counted-exhausted", running(outcome=PREEMPTED_1),
      {"restartPolicy": {"countPreemptions": True, "maxRestarts": 0}}, ENDED, 50, P.FAILED, "RestartsExhausted", 1,
      preemptions=1, events=("Preempted", "Failed")),
    C("older-outcome-is-a-failure", running(2, restarts=1, outcome=PREEMPTED_1), {}, ENDED, 50, P.RESTARTING,
      "AttemptFailed", 3, restarts=2, actions=(StartAttempt(3),), events=FAILED_EVENTS),
    # ---- disrupted pods: remembered, and the end counts as a preemption
    C("disrupted-remembered", running(), {}, AttemptView(AttemptState.RUNNING, disrupted=True), 30, P.RUNNING,
      "AttemptRunning", 1, requeue=10, fields={"disruptedAttempt": 1}),
    C("disrupted-then-ended", running(disruptedAttempt=1), {}, ENDED, 50, P.RESTARTING, "Preempted", 2,
      preemptions=1, actions=(StartAttempt(2),), events=PREEMPTED_EVENTS, fields={"disruptedAttempt": None}),
    C("disrupted-at-end", running(), {}, AttemptView(AttemptState.ENDED, "evicted", disrupted=True), 50,
      P.RESTARTING, "Preempted", 2, preemptions=1, actions=(StartAttempt(2),), events=PREEMPTED_EVENTS),
    C("disrupted-older-attempt", running(2, preemptions=1, disruptedAttempt=1), {}, ENDED, 50, P.RESTARTING,
      "AttemptFailed", 3, restarts=1, preemptions=1, actions=(StartAttempt(3),), events=FAILED_EVENTS),
    # ---- head lost: a grace period, then stop and restart
    C("head-lost-first-seen", running(), {}, HEAD_LOST, 30, P.RUNNING, "AttemptRunning", 1, requeue=60,
      fields={"headMissingSince": ts(30)}),
    C("head-lost-within-grace", running(headMissingSince=ts(0)), {}, HEAD_LOST, 40, P.RUNNING, "AttemptRunning", 1,
      requeue=20),
    C("head-lost-past-grace", running(headMissingSince=ts(0)), {}, HEAD_LOST, 60, P.RESTARTING, "AttemptFailed", 2,
      restarts=1, actions=(StopAttempt(1), StartAttempt(2)), events=FAILED_EVENTS,
      fields={"headMissingSince": None, "message": "attempt 2: the head pod of digits-a1 has been gone for 60 s"}),
    C("head-lost-disrupted", running(headMissingSince=ts(0)), {},
      AttemptView(AttemptState.RUNNING, disrupted=True, head_lost=True), 90, P.RESTARTING, "Preempted", 2,
      preemptions=1, actions=(StopAttempt(1), StartAttempt(2)), events=PREEMPTED_EVENTS,
      fields={"message": "attempt 2: the attempt head has been gone for 90 s"}),
    C("head-lost-exhausted", running(headMissingSince=ts(0)), NO_RESTARTS, HEAD_LOST, 60, P.FAILED,
      "RestartsExhausted", 1, actions=(StopAttempt(1),), events=("Failed",)),
    C("head-back", running(headMissingSince=ts(0)), {}, RUNNING, 30, P.RUNNING, "AttemptRunning", 1, requeue=10,
      fields={"headMissingSince": None}),
    # ---- attempt missing: gone while running, or its creation was interrupted
    C("missing-while-running", running(), {}, NONE, 50, P.RESTARTING, "AttemptFailed", 2, restarts=1,
      actions=(StartAttempt(2),), events=FAILED_EVENTS, fields={"message": "attempt 2: attempt 1 disappeared"}),
    C("missing-with-message", running(), {}, AttemptView(AttemptState.NONE, "RayJob digits-a1 disappeared"), 50,
      P.RESTARTING, "AttemptFailed", 2, restarts=1, actions=(StartAttempt(2),), events=FAILED_EVENTS,
      fields={"message": "attempt 2: RayJob digits-a1 disappeared"}),
    C("missing-exhausted", running(), NO_RESTARTS, NONE, 50, P.FAILED, "RestartsExhausted", 1, events=("Failed",)),
    # A missing attempt honours the same preemption evidence as an ended one (disruptedAttempt here).
    C("missing-after-disruption", running(disruptedAttempt=1), {}, NONE, 50, P.RESTARTING, "Preempted", 2,
      preemptions=1, actions=(StartAttempt(2),), events=("Preempted", "Restarting", "AttemptCreated")),
    C("creation-interrupted", st("Created", 1), {}, NONE, 5, P.CREATED, None, 1, actions=(StartAttempt(1),)),
    C("restart-interrupted", st("Restarting", 2, "AttemptFailed", restarts=1), {}, NONE, 5, P.RESTARTING,
      "AttemptFailed", 2, restarts=1, actions=(StartAttempt(2),)),
    # ---- suspend and resume
    C("suspend-requested", running(), SUSPEND, RUNNING, 10, P.RUNNING, "AttemptRunning", 1, events=("Suspending",),
      requeue=2, fields={"suspendRequested": ts(10)}, condition=("Suspended", "Unknown", "Suspending")),
    C("suspend-within-grace", running(suspendRequested=ts(0)), SUSPEND, RUNNING, 60, P.RUNNING, "AttemptRunning", 1,
      requeue=2),
    C("suspend-grace-over", running(suspendRequested=ts(0)), SUSPEND, RUNNING, 120, P.SUSPENDED, "Suspended", 1,
      actions=(StopAttempt(1),), events=("Suspended",), fields={"suspendRequested": None},
      condition=("Suspended", "True", "Suspended")),
    C("suspend-attempt-ended", running(suspendRequested=ts(0), outcome=PREEMPTED_1), SUSPEND, ENDED, 30,
      P.SUSPENDED, "Suspended", 1, events=("Suspended",), fields={"suspendRequested": None}),
    # SUSPECTED BUG: an attempt that finished training while suspending is recorded as Suspended (no
    # completionTime); a resume then starts a needless attempt instead of the job being Succeeded.
    C("succeeded-while-suspending", running(suspendRequested=ts(0)), SUSPEND, OK, 30, P.SUCCEEDED, "Succeeded", 1,
      events=("Succeeded",), fields={"completionTime": ts(30)}),
    C("suspended-stays", st("Suspended", 1, "Suspended"), SUSPEND, NONE, 500, P.SUSPENDED, "Suspended", 1),
    C("suspended-stop-interrupted", st("Suspended", 1, "Suspended"), SUSPEND, RUNNING, 500, P.SUSPENDED,
      "Suspended", 1, actions=(StopAttempt(1),)),
    C("resume", st("Suspended", 1, "Suspended", restarts=1, preemptions=1), {}, NONE, 500, P.RESTARTING, "Resumed",
      2, restarts=1, preemptions=1, actions=(StartAttempt(2),), events=("Restarting", "AttemptCreated"),
      fields={"startTime": ts(500)}, condition=("Suspended", "False", "Resumed")),
    C("resume-never-started", {"phase": "Suspended", "attempt": 0, "reason": "Suspended"}, {}, NONE, 500,
      P.RESTARTING, "Resumed", 1, actions=(StartAttempt(1),), events=("Restarting", "AttemptCreated"),
      fields={"startTime": ts(500)}),
    # SUSPECTED BUG: resuming while the suspended attempt's stop is still pending (the view shows it
    # active) starts attempt N+1 without stopping attempt N, which keeps running beside it.
    C("resume-stop-interrupted", st("Suspended", 1, "Suspended"), {}, RUNNING, 500, P.RESTARTING, "Resumed", 2,
      actions=(StopAttempt(1), StartAttempt(2)), events=("Restarting", "AttemptCreated")),
    C("suspend-cancelled", running(suspendRequested=ts(0)), {}, RUNNING, 30, P.RUNNING, "AttemptRunning", 1,
      requeue=10, fields={"suspendRequested": None}, condition=("Suspended", "False", "SuspendCancelled")),
    # ---- activeDeadlineSeconds
    C("deadline-ahead", running(), DEADLINE, RUNNING, 95, P.RUNNING, "AttemptRunning", 1, requeue=5),
    C("deadline-far", running(), DEADLINE, RUNNING, 30, P.RUNNING, "AttemptRunning", 1, requeue=10),
    C("deadline-passed", running(), DEADLINE, RUNNING, 100, P.FAILED, "DeadlineExceeded", 1,
      actions=(StopAttempt(1),), events=("Failed",), fields={"completionTime": ts(100)},
      condition=("Failed", "True", "DeadlineExceeded")),
    C("deadline-passed-ttl", running(), {**DEADLINE, "ttlSecondsAfterFinished": 0}, RUNNING, 100, P.FAILED,
      "DeadlineExceeded", 1, actions=(StopAttempt(1), DeleteJob()), events=("Failed",)),
    C("deadline-before-restart", running(), DEADLINE, ENDED, 150, P.FAILED, "DeadlineExceeded", 1,
      events=("Failed",)),
    C("deadline-while-suspending", running(suspendRequested=ts(0)), {**DEADLINE, **SUSPEND}, RUNNING, 100,
      P.FAILED, "DeadlineExceeded", 1, actions=(StopAttempt(1),), events=("Failed",)),
    C("deadline-paused-while-suspended", st("Suspended", 1, "Suspended"), {**DEADLINE, **SUSPEND}, NONE, 1000,
      P.SUSPENDED, "Suspended", 1),
    C("deadline-restarts-on-resume", st("Suspended", 1, "Suspended"), DEADLINE, NONE, 1000, P.RESTARTING,
      "Resumed", 2, actions=(StartAttempt(2),), events=("Restarting", "AttemptCreated"),
      fields={"startTime": ts(1000)}),
]

PARAMS = [pytest.param(c, id=c.id) for c in CASES]


def test_case_ids_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", PARAMS)
def test_transition(case: Case) -> None:
    before = parse(case.before)
    result = advance(before, spec_of(case.spec), case.view, at(case.at), TIMING, name="digits")
    status = result.status
    assert (status.phase, status.reason, status.attempt, status.restarts, status.preemptions) == (
        case.phase, case.reason, case.attempt, case.restarts, case.preemptions)
    assert result.actions == list(case.actions)
    assert reasons(result) == list(case.events)
    assert result.requeue_after == case.requeue
    after = wire(status)
    assert {k: after.get(k) for k in case.fields} == case.fields
    if case.condition is not None:
        cond = conds.get(status.conditions, case.condition[0])
        assert cond is not None and (cond.status, cond.reason) == case.condition[1:]
    assert set(result.status_patch()) <= set(OWNED_FIELDS)
    assert result.before == parse(case.before)  # the machine worked on a copy


def test_running_is_entered_once_then_idempotent() -> None:
    spec, status, steps = spec_of({}), TrainingJobStatus(), []
    for i, view in enumerate([NONE, PENDING, RUNNING, RUNNING]):
        step = advance(status, spec, view, at(5 * i), TIMING, generation=1, name="digits")
        steps.append(step)
        status = step.status
    assert [reasons(s) for s in steps] == [list(CREATED_EVENTS), [], ["Running"], []]
    assert [s.actions for s in steps] == [[StartAttempt(1)], [], [], []]
    assert steps[0].events[1].message == "digits-a1 for attempt 1"
    assert steps[1].status_patch() == {} and steps[3].status_patch() == {}
    assert steps[3].requeue_after == TIMING.resync_s
    assert steps[3].status.observed_generation == 1


def machine_on(raw: dict[str, Any], seconds: float = 0) -> Lifecycle:
    return Lifecycle(parse(raw), at(seconds), generation=2, name="digits")


def rejected(status: TrainingJobStatus, reason: Reason, seconds: float = 0) -> Transition:
    machine = Lifecycle(status, at(seconds))
    machine.reject_edit(reason, f"edit rejected: {reason}")
    return machine.transition()


def test_fail_stops_the_running_attempt() -> None:
    machine = machine_on(running(), 30)
    machine.fail(Reason.NO_STORAGE, "no checkpoint storage", RUNNING)
    result = machine.transition()
    assert (result.status.phase, result.status.reason) == (Phase.FAILED, "NoStorage")
    assert result.actions == [StopAttempt(1)] and reasons(result) == ["Failed"]
    assert result.status_patch()["completionTime"] == ts(30)
    assert result.status.observed_generation == 2


def test_fail_on_first_sight_starts_nothing() -> None:
    machine = Lifecycle(TrainingJobStatus(), at(0))
    machine.fail(Reason.RAYJOB_REJECTED, "admission webhook denied the RayJob")
    result = machine.transition()
    assert (result.status.phase, result.status.attempt, result.actions) == (Phase.FAILED, 0, [])
    assert reasons(result) == ["Created", "Failed"]


def test_reject_edit_posts_one_event_per_reason() -> None:
    first = rejected(parse(running()), Reason.IMMUTABLE_FIELD_CHANGED)
    again = rejected(first.status, Reason.IMMUTABLE_FIELD_CHANGED, 10)
    other = rejected(again.status, Reason.INVALID_EDIT, 20)
    assert [reasons(t) for t in (first, again, other)] == [["SpecChangeRejected"], [], ["SpecChangeRejected"]]
    assert again.status_patch() == {}
    cond = conds.get(other.status.conditions, "SpecChangeRejected")
    assert cond is not None and (cond.status, cond.reason) == ("True", "InvalidEdit")


def test_accept_spec_records_the_hash_and_clears_the_rejection() -> None:
    machine = Lifecycle(rejected(parse(running()), Reason.INVALID_EDIT).status, at(10))
    machine.accept_spec("sha256:abc")
    result = machine.transition()
    assert result.status_patch()["specHash"] == "sha256:abc"
    assert result.events == [] and result.actions == []
    cond = conds.get(result.status.conditions, "SpecChangeRejected")
    assert cond is not None and (cond.status, cond.reason) == ("False", "")
    assert reasons(rejected(result.status, Reason.INVALID_EDIT, 20)) == ["SpecChangeRejected"]


@pytest.mark.parametrize(("raw", "kept", "dropped"), [
    pytest.param({"phase": "Bogus", "attempt": 2}, {"attempt": 2}, ["phase"], id="bogus-phase"),
    pytest.param(None, {}, [], id="none"),
    pytest.param({"phase": "Running", "attempt": -1, "restarts": "2"}, {"phase": "Running"}, ["attempt", "restarts"],
                 id="two-bad"),
    pytest.param({"attempt": 1, "headMissingSince": "yesterday"}, {"attempt": 1}, ["headMissingSince"], id="bad-time"),
    pytest.param({"attempt": 1, "progress": {"step": -1}}, {"attempt": 1}, ["progress"], id="bad-nested"),
    pytest.param({"attempt": 1, "colour": "red"}, {"attempt": 1}, ["colour"], id="unknown-field"),
])
def test_parse_status_drops_invalid_fields(raw: dict[str, Any] | None, kept: dict[str, Any],
                                           dropped: list[str]) -> None:
    status, gone = parse_status(raw)
    assert status.model_dump(mode="json", by_alias=True, exclude_defaults=True) == kept
    assert gone == dropped


def test_status_patch_leaves_trainer_fields_out() -> None:
    trainer = {"progress": {"epoch": 2, "step": 40}, "latestCheckpoint": "s3://ckpt/digits/step-40",
               "outcome": {"attempt": 1, "result": "succeeded"}}
    raw = running(**trainer)
    result = advance(parse(raw), spec_of({}), OK, at(100), TIMING)
    patch = result.status_patch(raw)
    assert set(patch) <= set(OWNED_FIELDS) and not set(patch) & set(trainer)
    assert (patch["phase"], patch["completionTime"]) == ("Succeeded", ts(100))
    assert result.status.progress == result.before.progress


def test_status_patch_nulls_a_field_that_went() -> None:
    result = advance(parse(running(headMissingSince=ts(0))), spec_of({}), RUNNING, at(30), TIMING)
    assert result.status_patch() == {"headMissingSince": None}
