"""The local backend: each job runs under a background supervisor process on this machine, with its
state in its run directory (`<root>/<name>/.job/`, see trainforge.local.jobstate)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from ..local.jobstate import STATE_DIR, SUPERVISOR_MODULE, JobDir, now
from ..spec import TrainingJob
from ..spec.conditions import enter_phase, initial, stamp
from ..spec.status import TERMINAL_PHASES
from .errors import JobExists, JobNotFound, LogsUnavailable, TrainforgeError
from .labels import matches
from .types import JobEvent

ROOT_ENV = "TRAINFORGE_LOCAL_ROOT"
DEFAULT_ROOT = "trainforge-runs"
FOLLOW_POLL_S = 0.2
STOP_WAIT_S = 30.0


class LocalBackend:
    def __init__(self, root: str | Path | None = None, namespace: str | None = None) -> None:
        self.root = Path(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT).resolve()
        self.namespace = namespace or "default"

    def _dir(self, name: str) -> JobDir:
        jobdir = JobDir.of(self.root, name)
        if not jobdir.exists():
            raise JobNotFound(f"no local TrainingJob {name} under {self.root}; `trainforge list --backend local` "
                              "shows the jobs there")
        return jobdir

    # ---- jobs -------------------------------------------------------------------------------

    def create(self, job: TrainingJob) -> TrainingJob:
        jobdir = JobDir.of(self.root, job.name)
        if jobdir.exists():
            raise JobExists(f"a local TrainingJob {job.name} already exists under {self.root}: delete it first "
                            f"(`trainforge delete {job.name} --backend local`) or choose another metadata.name")
        job = job.model_copy(update={"metadata": job.metadata.model_copy(update={"namespace": self.namespace}),
                                     "status": None})
        suspended = job.spec.suspend
        status = {"phase": "Suspended" if suspended else "Created", "attempt": 0, "restarts": 0, "preemptions": 0,
                  "conditions": initial(now(), None)}
        if suspended:
            status["conditions"] = enter_phase(status["conditions"], "Suspended", "Suspended",
                                               "created suspended", now(), None)
        jobdir.create(job, status)
        jobdir.event("Normal", "Created", f"submitted to the local backend ({self.root})")
        if not suspended:
            self._start(jobdir)
        return jobdir.read_job()

    def get(self, name: str) -> TrainingJob:
        jobdir = self._dir(name)
        self._notice_lost_supervisor(jobdir)
        if jobdir.deleting() and jobdir.supervisor_pid() is None:
            jobdir.remove()
            raise JobNotFound(f"local TrainingJob {name} was deleted")
        return jobdir.read_job()

    def list(self, selector: str | None) -> list[TrainingJob]:
        jobs = []
        for path in sorted(self.root.glob(f"*/{STATE_DIR}/job.yaml")):
            try:
                job = self.get(path.parent.parent.name)
            except JobNotFound:
                continue
            if matches(selector, job.metadata.labels):
                jobs.append(job)
        return jobs

    def set_suspend(self, name: str, suspend: bool) -> TrainingJob:
        job = self.get(name)
        jobdir = JobDir.of(self.root, name)
        phase = job.status.phase if job.status else None
        if phase in TERMINAL_PHASES:
            verb = "suspend" if suspend else "resume"
            raise TrainforgeError(f"job {name} already {phase}: there is nothing to {verb}")
        pid = jobdir.supervisor_pid()
        if suspend:
            jobdir.set_suspend(True)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)  # it checkpoints, stops, and writes phase Suspended
            elif phase != "Suspended":
                self._mark(jobdir, "Suspended", "Suspended", "suspended before an attempt started")
        elif job.spec.suspend or phase == "Suspended":
            if pid is not None and phase == "Suspended":
                pid = _wait_exit(jobdir, STOP_WAIT_S)  # it has written Suspended and is shutting down
            if pid is not None:
                raise TrainforgeError(f"job {name} is still stopping (writing its checkpoint): resume it once "
                                      f"`trainforge status {name}` shows Suspended")
            jobdir.set_suspend(False)
            self._start(jobdir)
        return jobdir.read_job()

    def delete(self, name: str) -> None:
        jobdir = self._dir(name)
        jobdir.mark_deleting()
        pid = jobdir.supervisor_pid()
        if pid is None:
            jobdir.remove()
        else:
            os.kill(pid, signal.SIGTERM)  # it checkpoints, stops and removes the state directory

    # ---- events and logs ----------------------------------------------------------------------

    def events(self, job: TrainingJob) -> list[JobEvent]:
        return [JobEvent(datetime.fromisoformat(e["time"].replace("Z", "+00:00")), e["type"], e["reason"],
                         e["message"], e["object"]) for e in self._dir(job.name).events()]

    def attempt_log(self, job: TrainingJob, attempt: int, follow: bool) -> Iterator[str]:
        jobdir = self._dir(job.name)
        path = jobdir.attempt_log(attempt)
        if not path.is_file():
            raise LogsUnavailable(f"attempt {attempt} of local job {job.name} has no log at {path} (not started, "
                                  "or its directory was removed)")
        return _tail(path, lambda: follow and self._attempt_running(jobdir, attempt))

    def _attempt_running(self, jobdir: JobDir, attempt: int) -> bool:
        status = jobdir.read_status()
        return (jobdir.supervisor_pid() is not None and status.get("attempt") == attempt
                and status.get("phase") == "Running")

    # ---- the supervisor -----------------------------------------------------------------------

    def _start(self, jobdir: JobDir) -> None:
        with (jobdir.path / "supervisor.log").open("ab") as out:
            process = subprocess.Popen([sys.executable, "-m", SUPERVISOR_MODULE, str(jobdir.path)],
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True, cwd=self.root)
        jobdir.record_process(process.pid)

    def _notice_lost_supervisor(self, jobdir: JobDir) -> None:
        """A supervisor killed outside our control (kill -9, reboot) leaves a Running job: fail it."""
        phase = jobdir.read_status().get("phase")
        if phase in ("Running", "Restarting", "Created") and jobdir.supervisor_pid() is None:
            time.sleep(0.2)  # it may be writing its final status right now
            if jobdir.read_status().get("phase") == phase and jobdir.supervisor_pid() is None:
                self._mark(jobdir, "Failed", "SupervisorLost", "the local supervisor process exited without "
                           f"finishing the job; see {jobdir.path / 'supervisor.log'}")

    @staticmethod
    def _mark(jobdir: JobDir, phase: str, reason: str, message: str) -> None:
        def update(current: dict[str, object]) -> dict[str, object]:
            conditions = enter_phase(current.get("conditions") or [], phase, reason, message, now(), None)  # type: ignore[arg-type]
            patch: dict[str, object] = {"phase": phase, "reason": reason, "message": message, "conditions": conditions}
            if phase in TERMINAL_PHASES:
                patch["completionTime"] = stamp(now())
            return patch

        jobdir.patch_status(update)
        jobdir.event("Warning" if phase == "Failed" else "Normal", reason, message)


def _wait_exit(jobdir: JobDir, timeout: float) -> int | None:
    """The supervisor's pid if it still runs after `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while (pid := jobdir.supervisor_pid()) is not None and time.monotonic() < deadline:
        time.sleep(FOLLOW_POLL_S)
    return pid


def _tail(path: Path, keep_following: Callable[[], bool]) -> Iterator[str]:
    """Lines of `path`; while `keep_following()` holds, wait for more (like `tail -f`)."""
    with path.open("rb") as f:
        pending = b""
        while True:
            chunk = f.read(65536)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
                continue
            if not keep_following():
                rest = f.read()
                pending += rest
                if not rest:
                    break
                continue
            time.sleep(FOLLOW_POLL_S)
        if pending:
            yield pending.decode(errors="replace")
