"""The lifecycle under faults: an attempt that never runs, storage outages, a run that refuses to
start, and a new attempt fenced by the pods of the one before (pure `advance`, no backend)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from trainforge.lifecycle import AttemptState, AttemptView, Phase, StartAttempt, StopAttempt, Timing, advance
from trainforge.spec import TrainingJobSpec, TrainingJobStatus
from trainforge.spec.status import AttemptOutcome

from tests.unit.manifests import manifest

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
TIMING = Timing(resync_s=10, storage_backoff_s=30, fence_wait_s=120)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def spec(**fields: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(manifest(**fields)["spec"])


def started(job: TrainingJobSpec) -> TrainingJobStatus:
    return advance(TrainingJobStatus(), job, AttemptView(AttemptState.NONE), T0, TIMING).status


def test_an_attempt_that_never_runs_fails_at_its_start_deadline_with_the_pods_reason() -> None:
    job = spec(startTimeoutSeconds=300)
    why = "pod digits-a1-raycluster-head: Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu"
    pending = AttemptView(AttemptState.PENDING, why, created=T0)
    waiting = advance(started(job), job, pending, at(299), TIMING)
    assert not waiting.actions and waiting.requeue_after is not None and waiting.requeue_after <= 10
    late = advance(waiting.status, job, pending, at(301), TIMING)
    assert late.actions == [StopAttempt(1), StartAttempt(2)] and late.status.restarts == 1
    assert late.status.reason == "StartTimeout" and "Insufficient nvidia.com/gpu" in (late.status.message or "")
    exhausted = advance(started(spec(startTimeoutSeconds=300, restartPolicy={"maxRestarts": 0})),
                        spec(startTimeoutSeconds=300, restartPolicy={"maxRestarts": 0}), pending, at(301), TIMING)
    assert exhausted.status.phase == Phase.FAILED and "startTimeoutSeconds (300 s)" in (exhausted.status.message or "")


def test_a_storage_failure_backs_off_before_the_next_attempt() -> None:
    job = spec()
    status = started(job)
    ended = AttemptView(AttemptState.ENDED, "StorageUnavailable: s3://ckpt/runs unreachable for 300 s")
    failed = advance(status, job, ended, at(10), TIMING)
    assert failed.status.attempt == 2 and failed.status.reason == "StorageUnavailable"
    assert failed.start is None and failed.requeue_after == 30  # not at once: the outage may last
    gone = AttemptView(AttemptState.NONE)
    assert advance(failed.status, job, gone, at(30), TIMING).start is None
    assert advance(failed.status, job, gone, at(41), TIMING).start == StartAttempt(2)


def test_a_refused_run_fails_the_job_at_once() -> None:
    job = spec()
    status = started(job)
    status.outcome = AttemptOutcome(attempt=1, result="refused",  # type: ignore[arg-type]
                                    message="run s3://x/exp holds checkpoints of another job")
    after = advance(status, job, AttemptView(AttemptState.ENDED, "exit code 78"), at(5), TIMING)
    assert after.status.phase == Phase.FAILED and after.status.reason == "RunRefused"
    assert after.status.restarts == 0 and after.start is None


def test_a_fenced_start_waits_then_starts_with_a_warning() -> None:
    job = spec()
    status = started(job)  # attempt 1 named in the status, its RayJob not created yet
    blocked = AttemptView(AttemptState.NONE, waiting_on=("pod old-head",))
    held = advance(status, job, blocked, at(60), TIMING)
    assert held.start is None and "waits for pod old-head" in (held.status.message or "")
    assert held.status.reason == "WaitingForPreviousAttempt"
    go = advance(held.status, job, blocked, at(121), TIMING)
    assert go.start == StartAttempt(1) and any(e.type == "Warning" for e in go.events)


def test_preemptions_end_at_the_last_attempt_a_name_has_room_for() -> None:
    """Preemptions are free, but attempt 1000's RayJob name would not fit KubeRay's limit."""
    job = spec()
    status = started(job)
    status.attempt = 999
    status.outcome = AttemptOutcome(attempt=999, result="preempted", message="SIGTERM")  # type: ignore[arg-type]
    after = advance(status, job, AttemptView(AttemptState.ENDED, "exit code 75"), at(5), TIMING)
    assert after.status.phase == Phase.FAILED and after.status.reason == "RestartsExhausted"
    assert "at most 999 attempts" in (after.status.message or "") and after.start is None
    status.attempt = 998
    status.outcome = AttemptOutcome(attempt=998, result="preempted", message="SIGTERM")  # type: ignore[arg-type]
    assert advance(status, job, AttemptView(AttemptState.ENDED, "exit code 75"), at(5), TIMING).start == \
        StartAttempt(999)
