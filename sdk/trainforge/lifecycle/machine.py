"""The lifecycle's state machine: one decision about one job, on a working copy of its status."""

from __future__ import annotations

from datetime import datetime

from ..spec import TrainingJobSpec, TrainingJobStatus
from ..spec import conditions as conds
from ..spec.contract import attempt_name
from ..spec.job import MAX_ATTEMPTS
from ..spec.phases import AttemptResult, ConditionType, EventType, Phase, Reason
from ..spec.status import AttemptOutcome
from .types import Action, AttemptState, AttemptView, DeleteJob, Event, StartAttempt, StopAttempt, Timing, Transition

SUSPEND_POLL_S = 2.0
DEFAULT_TIMING = Timing()


def storage_backoff(timing: Timing, restarts: int) -> float:
    return timing.storage_backoff_s * 2 ** min(max(restarts - 1, 0), 3)
"""How often a suspending attempt is looked at until it has stopped."""


class Lifecycle:
    """Decides the next status of one job. Backends that check more than `advance` does (the
    operator's edit guard, its storage check) call `accept_spec`, `reject_edit` and `fail` first.

    Args:
        status: the status as read; it is not modified (the machine works on a copy).
        now: the backend's clock.
        generation: metadata.generation, mirrored into observedGeneration and the conditions.
        name: the job's name, for messages."""

    def __init__(self, status: TrainingJobStatus, now: datetime, generation: int | None = None,
                 name: str = "") -> None:
        self.before = status
        self.status = status.model_copy(deep=True)
        self.now, self.generation, self.name = now, generation, name
        self.actions: list[Action] = []
        self.events: list[Event] = []
        self.requeue_after: float | None = None
        self.timing = DEFAULT_TIMING
        """`advance`'s timing (the default for the calls backends make themselves)."""
        self.ttl_after_finished: int | None = None
        """spec.ttlSecondsAfterFinished; `advance` takes it from the spec."""
        if self.status.phase is None:
            self.status.phase, self.status.attempt = Phase.CREATED, 0
            self.status.conditions = conds.initial(now, generation)
            self.event(EventType.NORMAL, Reason.CREATED, "TrainingJob accepted")

    @property
    def phase(self) -> Phase:
        assert self.status.phase is not None  # set in __init__
        return self.status.phase

    @property
    def attempt(self) -> int:
        return self.status.attempt

    # ---- the machine ---------------------------------------------------------------------------

    def advance(self, spec: TrainingJobSpec, attempt: AttemptView, timing: Timing) -> None:
        self.ttl_after_finished, self.timing = spec.ttl_seconds_after_finished, timing
        if self.phase.is_terminal or self._deadline_passed(spec, attempt):
            return
        if not spec.suspend and self.status.suspend_requested:  # un-suspended before it took effect
            self.status.suspend_requested = None
            self.set_condition(ConditionType.SUSPENDED, "False", Reason.SUSPEND_CANCELLED, "")
        if attempt.state == AttemptState.SUCCEEDED and self.attempt > 0:
            return self._ended(spec, attempt)  # done, even if a suspension was on its way
        if spec.suspend or self.phase == Phase.SUSPENDED:
            return self._suspension(spec, attempt, timing)
        if self.attempt == 0:
            return self.start_attempt(Reason.CREATED, "attempt 1")
        if attempt.state == AttemptState.NONE:
            return self._missing(spec, attempt, timing)
        if attempt.state in (AttemptState.SUCCEEDED, AttemptState.ENDED):
            return self._ended(spec, attempt)
        return self._running(spec, attempt, timing)

    def transition(self) -> Transition:
        if self.phase.is_terminal:
            self._after_finish()
        if self.generation is not None and self.status.observed_generation != self.generation:
            self.status.observed_generation = self.generation
        return Transition(self.before, self.status, self.actions, self.events, self.requeue_after)

    def _deadline_passed(self, spec: TrainingJobSpec, attempt: AttemptView) -> bool:
        limit, started = spec.active_deadline_seconds, self.status.start_time
        if limit is None or started is None or self.phase == Phase.SUSPENDED:
            return False
        left = limit - (self.now - started).total_seconds()
        if left > 0:
            self.requeue(left)
            return False
        self.fail(Reason.DEADLINE_EXCEEDED, f"the job ran longer than spec.activeDeadlineSeconds ({limit} s)", attempt)
        return True

    def _suspension(self, spec: TrainingJobSpec, attempt: AttemptView, timing: Timing) -> None:
        """Suspend (the trainer checkpoints, then the attempt is stopped) or resume with a new attempt."""
        if not spec.suspend:  # resuming: a new attempt continues from the checkpoints
            if attempt.active:  # stopping the suspended one was interrupted: never two at once
                self.stop()
            self.status.start_time = self.now  # the deadline clock restarts, as for a Job
            return self.start_attempt(Reason.RESUMED, "resumed after suspension")
        if self.phase == Phase.SUSPENDED:
            if attempt.active:  # stopping it was interrupted
                self.stop()
            return
        asked = self.status.suspend_requested
        if attempt.queued:  # no trainer runs yet: nothing to checkpoint
            self.stop()
            self.status.suspend_requested = None
            return self.enter(Phase.SUSPENDED, Reason.SUSPENDED, "suspended while queued; set spec.suspend: false "
                                                                 "(`trainforge resume`) to queue it again")
        if attempt.active and asked is None:
            self.status.suspend_requested = self.now
            self.set_condition(ConditionType.SUSPENDED, "Unknown", Reason.SUSPENDING,
                               "the trainer checkpoints and stops")
            self.event(EventType.NORMAL, Reason.SUSPENDING, f"attempt {self.attempt}: checkpointing before suspension")
            return self.requeue(SUSPEND_POLL_S)
        if attempt.active and asked is not None and (self.now - asked).total_seconds() < timing.suspend_grace_s:
            return self.requeue(SUSPEND_POLL_S)
        if attempt.active:
            self.stop()
        self.status.suspend_requested = None
        self.enter(Phase.SUSPENDED, Reason.SUSPENDED,
                   "suspended; set spec.suspend: false (`trainforge resume`) to continue from the checkpoint")

    def _missing(self, spec: TrainingJobSpec, attempt: AttemptView, timing: Timing) -> None:
        if self.phase in (Phase.CREATED, Phase.RESTARTING):
            # The status names the attempt but it does not exist: not started yet, or starting it was
            # interrupted. Never two writers at once: an earlier attempt's pods go first.
            if attempt.waiting_on and self._still_fenced(attempt, timing):
                return
            if self.status.reason == Reason.STORAGE_UNAVAILABLE and self._backing_off(timing):
                return
            self.actions.append(StartAttempt(self.attempt))
            return
        why = attempt.message or f"attempt {self.attempt} disappeared"
        self._restart_or_fail(spec, self._preempted(attempt), why)  # gone after a disruption: a preemption

    def _ended(self, spec: TrainingJobSpec, attempt: AttemptView) -> None:
        if attempt.state == AttemptState.SUCCEEDED:
            self.status.completion_time = self.now
            self.enter(Phase.SUCCEEDED, Reason.SUCCEEDED, f"attempt {self.attempt} finished training")
            return
        outcome = self._outcome()
        why = (outcome.message if outcome else "") or attempt.message or f"attempt {self.attempt} ended"
        if outcome is not None and outcome.result == AttemptResult.REFUSED:
            return self.fail(Reason.RUN_REFUSED, why)
        self._restart_or_fail(spec, self._preempted(attempt), why)

    def _backing_off(self, timing: Timing) -> bool:
        since = conds.get(self.status.conditions, ConditionType.RESTARTING)
        left = storage_backoff(timing, self.status.restarts) - (
            (self.now - since.last_transition_time).total_seconds() if since else 0.0)
        if left > 0:
            self.requeue(left)
        return left > 0

    def _start_timed_out(self, spec: TrainingJobSpec, attempt: AttemptView) -> bool:
        """An attempt that never got running within spec.startTimeoutSeconds is stopped and fails."""
        limit = spec.start_timeout_seconds
        admitted = conds.get(self.status.conditions, ConditionType.QUEUED)
        since = attempt.created if admitted is None else max(attempt.created, admitted.last_transition_time)  # type: ignore[type-var]
        waited = (self.now - since).total_seconds()  # type: ignore[operator]
        if waited < limit:
            self.requeue(limit - waited)
            return False
        self.stop()
        why = f"attempt {self.attempt} did not start running within spec.startTimeoutSeconds ({limit} s): " \
              f"{attempt.message or 'no reason reported'}"
        self._restart_or_fail(spec, False, why, Reason.START_TIMEOUT)
        return True

    def _still_fenced(self, attempt: AttemptView, timing: Timing) -> bool:
        """Wait for `attempt.waiting_on` to go, up to `timing.fence_wait_s` since the phase began."""
        since = conds.get(self.status.conditions, ConditionType(self.phase.value))
        waited = (self.now - since.last_transition_time).total_seconds() if since else 0.0
        what = ", ".join(attempt.waiting_on[:5]) + (" ..." if len(attempt.waiting_on) > 5 else "")
        if waited < timing.fence_wait_s:
            message = f"attempt {self.attempt} waits for {what} to go (up to {int(timing.fence_wait_s)} s)"
            if self.status.reason != Reason.WAITING_FOR_PREVIOUS:
                self.event(EventType.NORMAL, Reason.WAITING_FOR_PREVIOUS, message)
            self.status.reason, self.status.message = Reason.WAITING_FOR_PREVIOUS.value, message
            self.requeue(min(2.0, timing.fence_wait_s - waited))
            return True
        message = (f"attempt {self.attempt} starts although {what} is still there after {int(waited)} s; "
                   "the run's owner record stops the earlier attempt's writes")
        self.event(EventType.WARNING, Reason.WAITING_FOR_PREVIOUS, message)
        self.status.message = message
        return False

    def _queued(self, spec: TrainingJobSpec, attempt: AttemptView, timing: Timing) -> None:
        """The attempt's RayJob is suspended for Kueue: waiting to be admitted, or, once it ran,
        suspended by Kueue's preemption (its pods' SIGTERM made the trainer checkpoint): a preemption,
        and the next attempt waits in the queue in its turn."""
        if self.phase == Phase.RUNNING:
            outcome = self._outcome()
            if outcome is not None and outcome.result == AttemptResult.SUCCEEDED:  # it finished first
                return self._ended(spec, AttemptView(AttemptState.SUCCEEDED))
            self.stop()
            why = f"Kueue suspended it{': ' + attempt.message if attempt.message else ''} (queue {spec.queue})"
            return self._restart_or_fail(spec, True, why)
        message = attempt.message or f"attempt {self.attempt} waits for Kueue to admit it from queue {spec.queue}"
        if self.phase != Phase.QUEUED:
            self.enter(Phase.QUEUED, Reason.QUEUED, message)
        elif self.status.message != message:  # Kueue's word on why changed
            self.status.message = message
            self.set_condition(ConditionType.QUEUED, "True", Reason.QUEUED, message)
        self.requeue(timing.resync_s)

    def _admitted(self) -> None:
        """Kueue unsuspended the attempt: it starts (spec.startTimeoutSeconds counts from now)."""
        phase = Phase.RESTARTING if self.attempt > 1 else Phase.CREATED
        self.enter(phase, Reason.ADMITTED, f"attempt {self.attempt} admitted by Kueue; its pods start")

    def _running(self, spec: TrainingJobSpec, attempt: AttemptView, timing: Timing) -> None:
        if attempt.queued:
            return self._queued(spec, attempt, timing)
        if self.phase == Phase.QUEUED:
            self._admitted()
        if attempt.disrupted and self.status.disrupted_attempt != self.attempt:
            # Remembered: a disrupted pod (or the head) may be gone by the time the attempt ends.
            self.status.disrupted_attempt = self.attempt
        if attempt.head_lost:
            missing = self.status.head_missing_since
            if missing is None:
                self.status.head_missing_since = self.now
                return self.requeue(timing.head_lost_grace_s)
            waited = (self.now - missing).total_seconds()
            if waited < timing.head_lost_grace_s:
                return self.requeue(timing.head_lost_grace_s - waited)
            self.stop()  # the backend would leave it stuck
            why = f"{attempt.message or 'the attempt head'} has been gone for {int(waited)} s"
            return self._restart_or_fail(spec, self._preempted(attempt), why)
        if self.status.head_missing_since:
            self.status.head_missing_since = None
        pending = attempt.state == AttemptState.PENDING and attempt.created is not None
        if pending and self._start_timed_out(spec, attempt):
            return
        if attempt.state == AttemptState.RUNNING and self.phase != Phase.RUNNING:
            self.enter(Phase.RUNNING, Reason.ATTEMPT_RUNNING, f"attempt {self.attempt} is training")
        self.requeue(timing.resync_s)

    def _after_finish(self) -> None:
        ttl, finished = self.ttl_after_finished, self.status.completion_time
        if ttl is None or finished is None:
            return
        left = ttl - (self.now - finished).total_seconds()
        if left <= 0:
            self.actions.append(DeleteJob())
        else:
            self.requeue(left)

    # ---- transitions ---------------------------------------------------------------------------

    def _restart_or_fail(self, spec: TrainingJobSpec, preempted: bool, why: str, reason: Reason | None = None) -> None:
        policy, attempt = spec.restart_policy, self.attempt
        counts = not preempted or policy.count_preemptions
        if preempted:
            self.status.preemptions += 1
            self.event(EventType.WARNING, Reason.PREEMPTED, f"attempt {attempt} was preempted: {why}")
        if attempt >= MAX_ATTEMPTS:
            return self.fail(Reason.RESTARTS_EXHAUSTED, f"attempt {attempt} ended ({why}); a job has at most "
                                                        f"{MAX_ATTEMPTS} attempts (attempt names must fit KubeRay's "
                                                        "limit): submit it again under a new name to go on")
        if counts and self.status.restarts >= policy.max_restarts:
            return self.fail(Reason.RESTARTS_EXHAUSTED, f"attempt {attempt} failed ({why}); "
                                                        f"restartPolicy.maxRestarts ({policy.max_restarts}) reached")
        if reason is None and Reason.STORAGE_UNAVAILABLE.value in why:
            reason = Reason.STORAGE_UNAVAILABLE
        if counts:
            self.status.restarts += 1
            if not preempted:
                self.event(EventType.WARNING, Reason.ATTEMPT_FAILED, f"attempt {attempt} failed: {why}")
        self.start_attempt(reason or (Reason.PREEMPTED if preempted else Reason.ATTEMPT_FAILED), why)

    def start_attempt(self, reason: Reason, message: str) -> None:
        attempt = self.attempt + 1
        after_suspension = self.phase == Phase.SUSPENDED
        self.status.attempt = attempt
        self.status.head_missing_since = self.status.suspend_requested = self.status.disrupted_attempt = None
        if not self.status.start_time:
            self.status.start_time = self.now
        if reason == Reason.STORAGE_UNAVAILABLE:  # started by a later pass, once the backoff is over
            self.requeue(storage_backoff(self.timing, self.status.restarts))
        else:
            self.actions.append(StartAttempt(attempt))
        if attempt > 1 or after_suspension:
            self.enter(Phase.RESTARTING, reason, f"attempt {attempt}: {message}")
        self.event(EventType.NORMAL, Reason.ATTEMPT_CREATED,
                   f"{attempt_name(self.name, attempt)} for attempt {attempt}" if self.name else f"attempt {attempt}")

    def stop(self) -> None:
        if StopAttempt(self.attempt) not in self.actions:
            self.actions.append(StopAttempt(self.attempt))

    def fail(self, reason: Reason, message: str, attempt: AttemptView | None = None) -> None:
        """The job fails for good; an attempt still running is stopped."""
        if attempt is not None and attempt.active:
            self.stop()
        self.status.completion_time = self.now
        self.enter(Phase.FAILED, reason, message, warning=True)

    def enter(self, phase: Phase, reason: Reason, message: str, warning: bool = False) -> None:
        previous = self.status.phase
        self.status.conditions = conds.enter_phase(self.status.conditions, phase, reason, message, self.now,
                                                   self.generation)
        self.status.phase, self.status.reason, self.status.message = phase, reason.value, message
        if previous != phase:
            self.event(EventType.WARNING if warning else EventType.NORMAL, phase.value,
                       f"{previous} → {phase}: {message}")

    # ---- the spec the job runs (for backends that guard edits) ---------------------------------

    def accept_spec(self, spec_hash: str) -> None:
        self.status.spec_hash = spec_hash
        self.set_condition(ConditionType.SPEC_CHANGE_REJECTED, "False", "", "")

    def reject_edit(self, reason: Reason, message: str) -> None:
        """SpecChangeRejected turns True; a Warning event when it turns so, or for another reason."""
        was = conds.get(self.status.conditions, ConditionType.SPEC_CHANGE_REJECTED)
        self.set_condition(ConditionType.SPEC_CHANGE_REJECTED, "True", reason, message)
        if was is None or was.status != "True" or was.reason != reason:
            self.event(EventType.WARNING, Reason.SPEC_CHANGE_REJECTED, message)

    # ---- helpers -------------------------------------------------------------------------------

    def _outcome(self) -> AttemptOutcome | None:
        outcome = self.status.outcome
        return outcome if outcome is not None and outcome.attempt == self.attempt else None

    def _preempted(self, attempt: AttemptView) -> bool:
        """Its pods were marked for disruption (now or before), or the trainer said so: on its word
        alone only where the backend trusts it (Timing.preemption_needs_evidence)."""
        seen = attempt.disrupted or self.status.disrupted_attempt == self.attempt
        outcome = self._outcome()
        said = outcome is not None and outcome.result == AttemptResult.PREEMPTED
        if said and not seen and self.timing.preemption_needs_evidence:
            self.event(EventType.WARNING, Reason.PREEMPTION_UNCONFIRMED,
                       f"attempt {self.attempt} reported a preemption that no pod of it shows (none was marked for "
                       "disruption or deleted): counted as a failure")
            return False
        return said or seen

    def set_condition(self, type_: ConditionType, status: str, reason: str, message: str) -> None:
        current = conds.get(self.status.conditions, type_)
        if current is not None and (current.status, current.reason, current.message) == (status, reason, message):
            return
        self.status.conditions = conds.set_condition(self.status.conditions, type_, status, reason, message,
                                                     self.now, self.generation)

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append(Event(type_, str(reason), message))

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.5)
        current = self.requeue_after
        self.requeue_after = seconds if current is None else min(current, seconds)
