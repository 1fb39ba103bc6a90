"""The operator's decisions as a pure function: (TrainingJob, its current RayJob and pods, now) →
(RayJob to create, RayJobs to delete, status patch, events). No I/O: the kopf side fetches and applies.

Every decision is idempotent: attempts have deterministic names (`<job>-a<N>`), the attempt counter
lives in the status, and a status written before a crash is read back before anything is redone."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from trainforge.spec import SpecValidationError, TrainingJobSpec, conditions, parse_job
from trainforge.spec.job import MUTABLE_WHILE_RUNNING
from trainforge.spec.status import TERMINAL_PHASES

from . import observed
from .observed import Observed
from .rayjob import ANNOTATION_SPEC_HASH, attempt_name, build_rayjob, payload_spec, storage_for
from .settings import OperatorSettings


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


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


MUTABLE_FIELDS = frozenset(name for name, info in TrainingJobSpec.model_fields.items()
                           if (info.alias or name) in MUTABLE_WHILE_RUNNING)
"""MUTABLE_WHILE_RUNNING by attribute name."""
REJECTED = ("only suspend, activeDeadlineSeconds, ttlSecondsAfterFinished and restartPolicy can change while "
            "the job has attempts; suspend the job to edit it (the edit applies when it resumes), or delete and "
            "re-create it")


def spec_hash(spec: Mapping[str, Any]) -> str:
    """Hash of the part of the spec a running attempt is built from."""
    fixed = {k: v for k, v in spec.items() if k not in MUTABLE_WHILE_RUNNING}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reconcile(obs: Observed, settings: OperatorSettings) -> Decision:
    return _Reconciler(obs, settings).run()


class _Reconciler:
    def __init__(self, obs: Observed, settings: OperatorSettings) -> None:
        self.obs, self.settings, self.now = obs, settings, obs.now
        self.meta: Mapping[str, Any] = obs.job.get("metadata") or {}
        self.generation: int | None = self.meta.get("generation")
        self.before: dict[str, Any] = copy.deepcopy(dict(obs.job.get("status") or {}))
        self.status: dict[str, Any] = copy.deepcopy(self.before)
        self.decision = Decision()
        self.rayjob = obs.rayjob
        self.hold = False
        self.invalid_edit = False
        """The job's spec no longer validates; `_parse` returned the accepted one (see there)."""
        """No attempt may be built: the spec the job accepted is nowhere to be read (see _guard_edits)."""

    # ---- the machine ---------------------------------------------------------------------------

    def run(self) -> Decision:
        if not self.status.get("phase"):
            self.status.update(phase="Created", attempt=0, restarts=0, preemptions=0,
                               conditions=conditions.initial(self.now, self.generation))
            self.event("Normal", "Created", "TrainingJob accepted")
        self._step()
        if self.status["phase"] in TERMINAL_PHASES and self.before.get("phase") not in TERMINAL_PHASES:
            self._after_finish()  # just finished: schedule the TTL
        if self.generation is not None and self.status.get("observedGeneration") != self.generation:
            self.status["observedGeneration"] = self.generation
        return self.finish()

    def finish(self) -> Decision:
        """The status patch: what changed, and null for what went."""
        self.decision.status = {k: v for k, v in self.status.items() if self.before.get(k) != v}
        for gone in set(self.before) - set(self.status):
            self.decision.status[gone] = None
        return self.decision

    def _step(self) -> None:
        if self.status["phase"] in TERMINAL_PHASES:
            return self._after_finish()
        spec = self._parse()
        if spec is None:
            return None
        spec = self._guard_edits(spec)
        if storage_for(spec, self.namespace, self.settings) is None:
            return self.fail("NoStorage", "spec.checkpoint.storage: set s3://bucket/prefix (or give the "
                                          "operator a default storage) so attempts can resume from checkpoints")
        if self._deadline_passed(spec):
            return None
        if not spec.suspend and self.status.get("suspendRequested"):  # un-suspended before it took effect
            self.status["suspendRequested"] = None
            self._set("Suspended", "False", "SuspendCancelled", "")
        if spec.suspend or self.status["phase"] == "Suspended":
            return self._suspension(spec)
        if self.status.get("attempt", 0) == 0:
            return self.start_attempt(spec, "Started", "attempt 1")
        if self.rayjob is None:
            return self._missing_rayjob(spec)
        if observed.is_terminal(self.rayjob):
            return self._attempt_ended(spec)
        return self._attempt_running(spec)

    def _parse(self) -> TrainingJobSpec | None:
        doc = {"apiVersion": self.obs.job.get("apiVersion"), "kind": self.obs.job.get("kind"),
               "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self.obs.job.get("spec")}
        try:
            return parse_job(doc).spec
        except SpecValidationError as err:
            problems = "; ".join(map(str, err.issues))
        base = None if self._not_started() else self._accepted_spec()
        if base is None:
            self.fail("InvalidSpec", problems)
            return None
        # An edit that broke the spec of a job with attempts: rejected like an immutable edit, and
        # the job goes on with the spec it accepted (nothing of the edit applies).
        self._reject_edit("InvalidEdit", f"the edited spec is invalid and was not applied: {problems}")
        self.invalid_edit = True
        return base

    def _guard_edits(self, spec: TrainingJobSpec) -> TrainingJobSpec:
        """Edits to the immutable part reach neither the running attempt nor its restarts, whatever the
        phase; they apply while the job is suspended (or before it started), as a suspended Job's
        template does. Returns the spec to go on with: the accepted one plus the current mutable fields."""
        if self.invalid_edit:
            return spec
        current = spec_hash(self.obs.job.get("spec") or {})
        accepted = self.status.get("specHash")
        if accepted is None or accepted == current or self._not_started():
            self.status["specHash"] = current
            self._set("SpecChangeRejected", "False", "", "")
            return spec
        base = self._accepted_spec()
        if base is None:
            # An interrupted restart: its RayJob is missing and so is every earlier one built from the
            # accepted spec. Building from the edited spec would apply it halfway; wait instead.
            self.hold = True
            message = f"{REJECTED}. The accepted spec is no longer readable: revert the edit to go on"
        else:
            changed = _changed_fields(base, spec)
            message = f"{', '.join(f'spec.{name}' for name in changed) or 'the spec'} changed: {REJECTED}"
        self._reject_edit("ImmutableFieldChanged", message)
        if base is None:
            return spec
        return base.model_copy(update={name: getattr(spec, name) for name in MUTABLE_FIELDS})

    def _reject_edit(self, reason: str, message: str) -> None:
        """SpecChangeRejected turns True; a Warning event when it turns so, or for another reason."""
        was = conditions.get(self.status.get("conditions") or [], "SpecChangeRejected") or {}
        self._set("SpecChangeRejected", "True", reason, message)
        if was.get("status") != "True" or was.get("reason") != reason:
            self.event("Warning", "SpecChangeRejected", message)

    def _not_started(self) -> bool:
        """No attempt has run, or none runs now because the job is suspended: an edit is safe to take.
        Created without a RayJob is an attempt 1 whose creation was interrupted."""
        phase = self.status["phase"]
        return phase == "Suspended" or self.status.get("attempt", 0) == 0 or \
            (phase == "Created" and self.rayjob is None and not self.obs.earlier)

    def _accepted_spec(self) -> TrainingJobSpec | None:
        """The spec attempts are built from: the current attempt's, else that of the newest earlier
        attempt built from the accepted spec (a restart whose RayJob is not created yet)."""
        if self.rayjob is not None:
            return payload_spec(self.rayjob)
        accepted = self.status.get("specHash")
        for rayjob in reversed(self.obs.earlier):
            if ((rayjob.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH) == accepted:
                return payload_spec(rayjob)
        return None

    def _deadline_passed(self, spec: TrainingJobSpec) -> bool:
        limit, started = spec.active_deadline_seconds, _time(self.status.get("startTime"))
        if limit is None or started is None or self.status["phase"] == "Suspended":
            return False
        left = limit - (self.now - started).total_seconds()
        if left > 0:
            self.requeue(left)
            return False
        self.fail("DeadlineExceeded", f"the job ran longer than spec.activeDeadlineSeconds ({limit} s)")
        return True

    def _suspension(self, spec: TrainingJobSpec) -> None:
        """Suspend (checkpoint first, then delete the attempt) or resume with a new attempt."""
        phase = self.status["phase"]
        if not spec.suspend:  # resuming: a new attempt continues from the checkpoints
            self.status["startTime"] = _stamp(self.now)  # the deadline clock restarts, as for a Job
            return self.start_attempt(spec, "Resumed", "resumed after suspension")
        if phase == "Suspended":
            if self.rayjob is not None and not observed.is_terminal(self.rayjob):  # deletion was interrupted
                self.decision.delete.append(self.rayjob["metadata"]["name"])
            return
        active = self.rayjob is not None and not observed.is_terminal(self.rayjob)
        asked = _time(self.status.get("suspendRequested"))
        if active and asked is None:
            self.status["suspendRequested"] = _stamp(self.now)
            self._set("Suspended", "Unknown", "Suspending", "the trainer checkpoints and stops")
            self.event("Normal", "Suspending", f"attempt {self.status['attempt']}: checkpointing before suspension")
            self.requeue(2.0)
            return
        if active and asked is not None and (self.now - asked).total_seconds() < self.settings.suspend_grace_s:
            self.requeue(2.0)
            return
        if self.rayjob is not None and active:
            self.decision.delete.append(self.rayjob["metadata"]["name"])
        self.status["suspendRequested"] = None
        self.enter("Suspended", "Suspended", "suspended; set spec.suspend: false to resume from the checkpoint")

    def _missing_rayjob(self, spec: TrainingJobSpec) -> None:
        if self.status["phase"] in ("Created", "Restarting"):
            # The status names the attempt but its RayJob is not there: creating it was interrupted.
            self.decision.create = self._build(spec, self.status["attempt"])
            return
        self._restart_or_fail(spec, preempted=False, why=f"RayJob {self.current_name} disappeared")

    def _attempt_ended(self, spec: TrainingJobSpec) -> None:
        if observed.succeeded(self.rayjob):
            self.status["completionTime"] = _stamp(self.now)
            self.enter("Succeeded", "Succeeded", f"attempt {self.status['attempt']} finished training")
            return
        why = self._outcome().get("message") or observed.failure_message(self.rayjob)
        self._restart_or_fail(spec, self._preempted(), why)

    def _attempt_running(self, spec: TrainingJobSpec) -> None:
        attempt = self.status["attempt"]
        if observed.disrupted(self.obs.pods) and self.status.get("disruptedAttempt") != attempt:
            # Remembered: a disrupted pod (or the head) may be gone by the time the attempt ends.
            self.status["disruptedAttempt"] = attempt
        if observed.cluster_name(self.rayjob) and observed.is_running(self.rayjob) \
                and not observed.head_present(self.obs.pods):
            missing = _time(self.status.get("headMissingSince"))
            if missing is None:
                self.status["headMissingSince"] = _stamp(self.now)
                return self.requeue(self.settings.head_lost_grace_s)
            waited = (self.now - missing).total_seconds()
            if waited < self.settings.head_lost_grace_s:
                return self.requeue(self.settings.head_lost_grace_s - waited)
            assert self.rayjob is not None
            self.decision.delete.append(self.rayjob["metadata"]["name"])  # KubeRay leaves it stuck
            why = f"the head pod of {observed.cluster_name(self.rayjob)} has been gone for {int(waited)} s"
            return self._restart_or_fail(spec, self._preempted(), why)
        if self.status.get("headMissingSince"):
            self.status["headMissingSince"] = None
        if observed.is_running(self.rayjob) and self.status["phase"] != "Running":
            self.enter("Running", "AttemptRunning", f"attempt {self.status['attempt']} is training")
        self.requeue(self.settings.resync_s)

    def _after_finish(self) -> None:
        ttl = (self.obs.job.get("spec") or {}).get("ttlSecondsAfterFinished")
        finished = _time(self.status.get("completionTime"))
        if ttl is None or finished is None:
            return
        left = ttl - (self.now - finished).total_seconds()
        if left <= 0:
            self.decision.delete_job = True
        else:
            self.requeue(left)

    # ---- transitions ---------------------------------------------------------------------------

    def _restart_or_fail(self, spec: TrainingJobSpec, preempted: bool, why: str) -> None:
        policy = spec.restart_policy
        attempt = self.status["attempt"]
        counts = not preempted or policy.count_preemptions
        if preempted:
            self.status["preemptions"] = self.status.get("preemptions", 0) + 1
            self.event("Warning", "Preempted", f"attempt {attempt} was preempted: {why}")
        if counts and self.status.get("restarts", 0) >= policy.max_restarts:
            return self.fail("RestartsExhausted", f"attempt {attempt} failed ({why}); "
                                                  f"restartPolicy.maxRestarts ({policy.max_restarts}) reached")
        if counts:
            self.status["restarts"] = self.status.get("restarts", 0) + 1
            if not preempted:
                self.event("Warning", "AttemptFailed", f"attempt {attempt} failed: {why}")
        self.start_attempt(spec, "Preempted" if preempted else "AttemptFailed", why)

    def start_attempt(self, spec: TrainingJobSpec, reason: str, message: str) -> None:
        attempt = self.status.get("attempt", 0) + 1
        after_suspension = self.status["phase"] == "Suspended"
        self.status.update(attempt=attempt, headMissingSince=None, suspendRequested=None, disruptedAttempt=None)
        if not self.status.get("startTime"):
            self.status["startTime"] = _stamp(self.now)
        self.decision.create = self._build(spec, attempt)
        if attempt > 1 or after_suspension:
            self.enter("Restarting", reason, f"attempt {attempt}: {message}")
        self.event("Normal", "AttemptCreated", f"RayJob {attempt_name(self.name, attempt)} for attempt {attempt}")

    def fail(self, reason: str, message: str) -> None:
        if self.rayjob is not None and not observed.is_terminal(self.rayjob):
            self.decision.delete.append(self.rayjob["metadata"]["name"])
        self.status["completionTime"] = _stamp(self.now)
        self.enter("Failed", reason, message, warning=True)

    def enter(self, phase: str, reason: str, message: str, warning: bool = False) -> None:
        previous = self.status.get("phase")
        self.status["conditions"] = conditions.enter_phase(
            self.status.get("conditions") or [], phase, reason, message, self.now, self.generation)
        self.status.update(phase=phase, reason=reason, message=message)
        if previous != phase:
            self.event("Warning" if warning else "Normal", phase, f"{previous} → {phase}: {message}")

    # ---- helpers -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.meta.get("name", "")

    @property
    def namespace(self) -> str:
        return self.meta.get("namespace") or "default"

    @property
    def current_name(self) -> str:
        return attempt_name(self.name, self.status.get("attempt", 0))

    def _build(self, spec: TrainingJobSpec, attempt: int) -> dict[str, Any] | None:
        if self.hold:
            self.requeue(self.settings.resync_s)
            return None
        return build_rayjob(self.obs.job, spec, attempt, self.settings, self.status.get("specHash"))

    def _outcome(self) -> dict[str, Any]:
        outcome = self.status.get("outcome") or {}
        return outcome if outcome.get("attempt") == self.status.get("attempt") else {}

    def _preempted(self) -> bool:
        """The trainer said so, or Kubernetes marked pods of this attempt for disruption, now or before."""
        return self._outcome().get("result") == "preempted" or bool(observed.disrupted(self.obs.pods)) \
            or self.status.get("disruptedAttempt") == self.status.get("attempt")

    def _set(self, type_: str, status: str, reason: str, message: str) -> None:
        current = conditions.get(self.status.get("conditions") or [], type_)
        if current is not None and (current.get("status"), current.get("reason"), current.get("message")) == \
                (status, reason, message):
            return
        self.status["conditions"] = conditions.set_condition(
            self.status.get("conditions") or [], type_, status, reason, message, self.now, self.generation)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.decision.events.append(Event(type_, reason, message))

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.5)
        current = self.decision.requeue_after
        self.decision.requeue_after = seconds if current is None else min(current, seconds)


def _changed_fields(before: TrainingJobSpec, after: TrainingJobSpec) -> list[str]:
    old, new = (s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in (before, after))
    return sorted(k for k in set(old) | set(new) if k not in MUTABLE_WHILE_RUNNING and old.get(k) != new.get(k))


def _stamp(now: datetime) -> str:
    return conditions.stamp(now)


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def refused(obs: Observed, settings: OperatorSettings, why: str) -> Decision:
    """The API server will not take the attempt's RayJob (invalid field, KubeRay missing): retrying
    cannot help, so the job fails with the server's own words."""
    r = _Reconciler(obs, settings)
    r.rayjob = None
    r.status.update(phase=r.status.get("phase") or "Created")
    r.fail("RayJobRejected", why)
    return r.finish()
