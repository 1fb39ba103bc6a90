"""`python -m trainforge.local.supervisor JOB_DIR`: what the operator is on a cluster, for one local job.

Started in the background by the local backend. It runs the job's attempts with the cluster
entrypoint's own code (`trainforge_trainer.run.train` / `.sweep`), which writes progress,
checkpoints and the outcome through a status writer — here one that merges into status.json — and
decides phases like the operator: a failed attempt is followed by another that resumes from the
checkpoint while restartPolicy.maxRestarts allows, SIGTERM (suspend, delete) checkpoints and stops.
Uses the Ray at RAY_ADDRESS when set, else starts a private one for its lifetime."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ..spec import TrainingJob
from ..spec.conditions import enter_phase, stamp
from .jobstate import JobDir, now

log = logging.getLogger("trainforge.local")


class FileStatusWriter:
    """The trainer's status writer for a local job (same interface as the cluster's StatusWriter).
    Pickled into Ray Train's controller process, so it holds a path, not an open file."""

    def __init__(self, job_dir: str) -> None:
        self.job_dir = job_dir
        self.suspend_requested = False

    def patch(self, status: dict[str, Any]) -> bool:
        jobdir = JobDir(Path(self.job_dir))
        try:
            jobdir.patch_status(status)
        except OSError as exc:  # reporting must never fail training
            log.warning("could not update %s/status.json: %s", self.job_dir, exc)
            return False
        self.suspend_requested = jobdir.suspend_requested() or jobdir.deleting()
        return True


class Supervisor:
    def __init__(self, jobdir: JobDir) -> None:
        self.jobdir = jobdir
        self.job: TrainingJob = jobdir.read_job()
        self.stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        started_ray = self._start_ray()
        try:
            while True:
                attempt = self._begin()
                result, message = self._attempt(attempt)
                if not self._end(attempt, result, message):
                    return 0
        finally:
            if started_ray:
                import ray

                ray.shutdown()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        # Outside a Train run (sweeps, start-up) stop like Ctrl-C: Tune saves its state on it.
        self.stopping = True
        raise KeyboardInterrupt

    def _start_ray(self) -> bool:
        import ray

        from .runner import prepare_ray_env

        prepare_ray_env()
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
            return False
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=self.job.spec.tune is not None,
                 log_to_driver=True, configure_logging=False)
        return True

    def _begin(self) -> int:
        def start(current: dict[str, Any]) -> dict[str, Any]:
            attempt = int(current.get("attempt") or 0) + 1
            reason = {"Suspended": "Resumed", "Restarting": "Restarted"}.get(current.get("phase") or "", "Started")
            conditions = enter_phase(current.get("conditions") or [], "Running", reason,
                                     f"attempt {attempt} running (supervisor pid {os.getpid()})", now(), None)
            return {"phase": "Running", "attempt": attempt, "conditions": conditions, "reason": reason,
                    "startTime": current.get("startTime") or stamp(now()), "message": None, "outcome": None,
                    "completionTime": None}

        attempt = int(self.jobdir.patch_status(start)["attempt"])
        self._redirect_output(self.jobdir.attempt_log(attempt))
        self.jobdir.event("Normal", "AttemptStarted", f"attempt {attempt} started",
                          f"Attempt/{self.job.name}-a{attempt}")
        return attempt

    def _attempt(self, attempt: int) -> tuple[str, str]:
        from trainforge_trainer.kube_status import JobRef
        from trainforge_trainer.run import ClusterJob, sweep, train

        from ..checkpoints import resolve_storage

        self.job = self.jobdir.read_job()
        spec = self.job.spec
        storage = spec.checkpoint.storage or str(self.jobdir.path.parent.parent)
        target = resolve_storage(storage, spec.checkpoint.endpoint, spec.checkpoint.region)
        cluster_job = ClusterJob(JobRef(self.job.metadata.namespace or "default", self.job.name, attempt),
                                 self.job.name, spec, target)
        log.info("TrainingJob %s attempt %d: run %s in %s", self.job.name, attempt, self.job.name, target.uri)
        try:
            result, message = (sweep if spec.tune else train)(cluster_job, FileStatusWriter(str(self.jobdir.path)))
        except KeyboardInterrupt:
            result, message = "preempted", "stopped by SIGTERM"
        except Exception as exc:  # the attempt fails; the job may get another
            log.exception("the attempt failed")
            result, message = "failed", f"{type(exc).__name__}: {exc}"
        log.info("attempt %d %s%s", attempt, result, f": {message}" if message else "")
        return result, message

    def _end(self, attempt: int, result: str, message: str) -> bool:
        """Write how the attempt ended; True when another attempt should start."""
        status = self.jobdir.read_status()
        policy = self.job.spec.restart_policy
        restarts, preemptions = int(status.get("restarts") or 0), int(status.get("preemptions") or 0)
        outcome = {"attempt": attempt, "result": result, "message": message, "time": stamp(now())}
        retry = (result == "failed" and restarts < policy.max_restarts and not self.stopping
                 and not self.jobdir.deleting())
        if result == "succeeded":
            phase, reason, text = "Succeeded", "Succeeded", f"attempt {attempt} finished training"
        elif result == "preempted":
            asked = self.jobdir.suspend_requested() or self.jobdir.deleting()
            preemptions += 0 if asked else 1
            phase, reason = "Suspended", "Suspended" if asked else "Preempted"
            text = f"checkpointed and stopped ({message}); `trainforge resume {self.job.name}` continues"
        elif retry:
            restarts += 1
            phase, reason, text = "Restarting", "AttemptFailed", f"attempt {attempt} failed: {message}"
        else:
            phase = "Failed"
            reason = "RestartsExhausted" if policy.max_restarts else "AttemptFailed"
            text = f"attempt {attempt} failed: {message}"
        patch: dict[str, Any] = {"phase": phase, "reason": reason, "message": text, "outcome": outcome,
                                 "restarts": restarts, "preemptions": preemptions}
        patch["conditions"] = enter_phase(status.get("conditions") or [], phase, reason, text, now(), None)
        if phase in ("Succeeded", "Failed"):
            patch["completionTime"] = stamp(now())
        self.jobdir.patch_status(patch)
        self.jobdir.event("Warning" if phase in ("Failed", "Restarting") else "Normal", reason, text)
        return retry

    @staticmethod
    def _redirect_output(path: Path) -> None:
        """The attempt's driver log: this process's stdout/stderr, where Ray also forwards the workers'."""
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    jobdir = JobDir(Path(args[0]))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # dedup would merge ranks' lines: `logs --rank` needs them all
    os.environ.setdefault("TRAINFORGE_STATUS_INTERVAL_S", "1")  # a local file write is cheap
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return Supervisor(jobdir).run()
    finally:
        if jobdir.deleting():
            jobdir.remove()


if __name__ == "__main__":
    sys.exit(main())
