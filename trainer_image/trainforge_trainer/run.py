"""The cluster entrypoint: `python -m trainforge_trainer.run`, the command of every RayJob the operator
creates. The job arrives as JSON in the TRAINFORGE_JOB environment variable (never through a shell
string); the run name and storage are the same for every attempt, so each attempt resumes the last.

Exit codes: 0 succeeded, 1 failed, 75 preempted (checkpointed; the operator starts a new attempt),
78 refused (the run is another job's, or its checkpoint does not fit the spec: the job fails).
The outcome is also written to the TrainingJob's status.outcome, which is what the operator reads."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Protocol

from trainforge.checkpoints import StorageTarget, resolve_storage
from trainforge.checkpoints.owner import RunOwner
from trainforge.lifecycle import AttemptResult
from trainforge.spec import TrainingJobSpec
from trainforge.spec.contract import SPEC_ENV, STATUS_INTERVAL_ENV, TrainerPayload, lineage_id, utcnow
from trainforge.spec.status import AttemptOutcome

from .kube_status import FLUSH_S, BestTracker, JobRef, StatusWriter

log = logging.getLogger("trainforge.run")


class StatusSink(Protocol):
    """Where the trainer's status writes go: the TrainingJob on a cluster, status.json locally."""

    suspend_requested: bool

    def patch(self, status: dict[str, Any]) -> bool: ...


@dataclass(frozen=True)
class ClusterJob:
    ref: JobRef
    run_name: str
    spec: TrainingJobSpec
    target: StorageTarget

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ClusterJob:
        env = os.environ if environ is None else environ
        if SPEC_ENV not in env:
            raise SystemExit(f"{SPEC_ENV} is not set: this entrypoint runs inside a RayJob made by the operator")
        try:
            payload = TrainerPayload.from_json(env[SPEC_ENV])
        except ValueError as err:
            raise SystemExit(f"{SPEC_ENV} does not hold a trainer payload: {err}") from None
        spec = payload.spec
        target = resolve_storage(payload.storage, payload.endpoint, spec.checkpoint.region)
        ref = JobRef(payload.namespace, payload.name, payload.attempt, payload.uid)
        return cls(ref, payload.run_name, spec, target)

    @property
    def lineage(self) -> str:
        """This attempt's identity: names its stop flag, which the pods' preStop hooks set."""
        return lineage_id(self.ref.uid, self.ref.attempt)

    @property
    def owner(self) -> RunOwner:
        """This attempt's claim on the run directory."""
        return RunOwner(self.ref.name, self.ref.namespace, self.ref.uid, self.ref.attempt)


def uri_prefix(target: StorageTarget) -> str:
    scheme = target.uri.split("://", 1)[0] if "://" in target.uri else ""
    return f"{scheme}://" if scheme else ""


def best_tracker(spec: TrainingJobSpec) -> BestTracker:
    from trainforge.checkpoints.retention import BestRule

    rule = BestRule.for_spec(spec)  # the rule retention keeps by: bestCheckpoint is never pruned
    return BestTracker(rule.metric if rule else None, rule.mode if rule else "max")


def train(job: ClusterJob, writer: StatusSink, flag: Any = None) -> tuple[AttemptResult, str]:
    """One Ray Train run of the job; `flag` (a PreemptFlag actor) lets the caller stop it."""
    from .callbacks import StatusCallback
    from .driver import fit_run, make_flag

    flag = flag or make_flag(job.lineage)
    interval = float(os.environ.get(STATUS_INTERVAL_ENV, "10"))
    status = StatusCallback(writer, uri_prefix(job.target), best_tracker(job.spec), interval, flag)
    result = fit_run(job.spec, job.run_name, job.target, [status], flag=flag, owner=job.owner)
    return result.status, result.error or ""


def sweep(job: ClusterJob, writer: StatusSink) -> tuple[AttemptResult, str]:
    from .sweep.runner import run_sweep

    states: dict[str, str] = {}
    sent: set[str] = set()

    def write(tune: dict[str, Any]) -> None:
        # A merge patch merges maps: states no longer held by any trial must be nulled explicitly.
        counts = tune.setdefault("trials", {})
        writer.patch({"tune": {**tune, "trials": {**dict.fromkeys(sent - set(counts)), **counts}}})
        sent.clear()
        sent.update(counts)

    def on_result(trial: str, result: dict[str, Any]) -> None:
        states[trial] = result["state"]
        counts: dict[str, int] = {}
        for state in states.values():
            counts[state] = counts.get(state, 0) + 1
        write({"trials": counts})

    outcome = run_sweep(job.spec, job.run_name, job.target, on_result)
    write(outcome.status.model_dump(mode="json", by_alias=True, exclude_none=True))
    failed = [t for t in outcome.trials if t.state == "ERROR"]
    if outcome.best is None:
        return AttemptResult.FAILED, f"no trial reported {outcome.metric}" + (f"; {failed[0].error}" if failed else "")
    return AttemptResult.SUCCEEDED, ""


def run_attempt(job: ClusterJob, writer: StatusSink) -> tuple[AttemptResult, str]:
    """Fetch the job's code (spec.runtime), join the cluster's Ray as a job with that runtime_env, train."""
    import ray
    from trainforge.code import CodeError

    from .code_env import runtime_env_of

    try:
        runtime_env = runtime_env_of(job.spec, job.target.endpoint, job.target.region)
    except CodeError as exc:  # a package changed in storage, or a URI that names none: retrying cannot help
        return AttemptResult.REFUSED, str(exc)
    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=True, runtime_env=runtime_env or None)
    log.info("TrainingJob %s/%s attempt %d: run %s in %s", job.ref.namespace, job.ref.name, job.ref.attempt,
             job.run_name, job.target.uri)
    return (sweep if job.spec.tune else train)(job, writer)


def outcome_patch(attempt: int, result: AttemptResult, message: str) -> dict[str, Any]:
    """status.outcome, fenced by the attempt number: what the lifecycle reads to tell a preemption."""
    outcome = AttemptOutcome(attempt=attempt, result=result, message=message, time=utcnow())
    return {"outcome": outcome.model_dump(mode="json", by_alias=True, exclude_none=True)}


def main() -> int:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # dedup merges ranks' lines: `trainforge logs --rank` needs them
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = ClusterJob.from_env()
    writer = StatusWriter(job.ref)
    from .driver import prepare_ray_env

    prepare_ray_env()
    try:
        result, message = run_attempt(job, writer)
    except Exception as exc:  # still tell the operator why, then fail the attempt
        log.exception("the attempt failed")
        result, message = AttemptResult.FAILED, f"{type(exc).__name__}: {exc}"
    writer.patch(outcome_patch(job.ref.attempt, result, message))
    if not writer.flush():
        log.warning("the attempt's outcome could not be written to the TrainingJob within %.0f s", FLUSH_S)
    from .driver import EXIT_CODES

    log.info("attempt %d %s%s", job.ref.attempt, result, f": {message}" if message else "")
    return EXIT_CODES[result]


if __name__ == "__main__":
    sys.exit(main())
