"""The lifecycle under Kueue (spec.queue): an attempt whose RayJob is suspended waits, Queued, with
Kueue's message; admitted, its start timeout counts from the admission; suspended by Kueue once it
ran, it is a preemption (not a failure) and the next attempt queues; a user's suspension of a queued
attempt stops it at once."""

from __future__ import annotations

from trainforge.lifecycle import AttemptState, AttemptView, Phase, Reason, StartAttempt, StopAttempt, advance
from trainforge.spec import conditions as conds

from tests.unit.test_lifecycle import TIMING, at, parse, reasons, running, spec_of, st

QUEUE = {"queue": "team-a"}
QUEUED = AttemptView(AttemptState.PENDING, queued=True)
NO_QUOTA = AttemptView(AttemptState.PENDING, "couldn't assign flavors to pod set head: insufficient quota",
                       queued=True)


def test_a_suspended_attempt_is_queued_with_kueues_message() -> None:
    first = advance(parse(st("Created", 1)), spec_of(QUEUE), QUEUED, at(5), TIMING, name="digits")
    assert first.status.phase == Phase.QUEUED and first.status.reason == Reason.QUEUED
    assert first.status.message == "attempt 1 waits for Kueue to admit it from queue team-a"
    assert reasons(first) == ["Queued"] and first.actions == [] and first.requeue_after == TIMING.resync_s
    second = advance(first.status, spec_of(QUEUE), NO_QUOTA, at(10), TIMING, name="digits")
    assert second.status.message == NO_QUOTA.message and reasons(second) == []
    queued = conds.get(second.status.conditions, "Queued")
    assert queued is not None and (queued.status, queued.message) == ("True", NO_QUOTA.message)


def test_queue_time_does_not_count_against_the_start_timeout() -> None:
    spec = spec_of(QUEUE | {"startTimeoutSeconds": 60})
    queued = advance(parse(st("Created", 1)), spec, QUEUED, at(5), TIMING, name="digits").status
    # Admitted after an hour in the queue; its RayJob was created at T0.
    pending = AttemptView(AttemptState.PENDING, "its pods are starting", created=at(0))
    admitted = advance(queued, spec, pending, at(3600), TIMING, name="digits")
    assert admitted.status.phase == Phase.CREATED and admitted.status.reason == Reason.ADMITTED
    assert admitted.actions == [] and conds.get(admitted.status.conditions, "Queued").status == "False"
    later = advance(admitted.status, spec, pending, at(3630), TIMING, name="digits")
    assert later.actions == [] and later.requeue_after == 10  # 30 s of its 60 left
    late = advance(admitted.status, spec, pending, at(3661), TIMING, name="digits")
    assert late.actions[0] == StopAttempt(1) and late.status.reason == Reason.START_TIMEOUT


def test_kueue_suspending_a_running_attempt_is_a_preemption_and_the_next_attempt_queues() -> None:
    evicted = advance(parse(running()), spec_of(QUEUE), QUEUED, at(50), TIMING, name="digits")
    status = evicted.status
    assert (status.phase, status.attempt, status.preemptions, status.restarts) == (Phase.RESTARTING, 2, 1, 0)
    assert evicted.actions == [StopAttempt(1), StartAttempt(2)]
    assert "Kueue suspended it (queue team-a)" in status.message
    assert reasons(evicted) == ["Preempted", "Restarting", "AttemptCreated"]
    requeued = advance(status, spec_of(QUEUE), QUEUED, at(55), TIMING, name="digits")
    assert requeued.status.phase == Phase.QUEUED and requeued.status.attempt == 2


def test_a_queued_attempt_suspended_by_its_user_stops_at_once() -> None:
    queued = advance(parse(st("Created", 1)), spec_of(QUEUE), QUEUED, at(5), TIMING, name="digits").status
    suspended = advance(queued, spec_of(QUEUE | {"suspend": True}), QUEUED, at(6), TIMING, name="digits")
    assert suspended.status.phase == Phase.SUSPENDED and suspended.actions == [StopAttempt(1)]
    assert suspended.status.suspend_requested is None


def test_an_attempt_that_finished_as_kueue_suspended_it_has_succeeded() -> None:
    done = running(outcome={"attempt": 1, "result": "succeeded", "message": "", "time": "2026-12-01T12:00:40Z"})
    finished = advance(parse(done), spec_of(QUEUE), QUEUED, at(50), TIMING, name="digits")
    assert finished.status.phase == Phase.SUCCEEDED and finished.status.preemptions == 0
    assert not any(isinstance(a, StartAttempt) for a in finished.actions)
