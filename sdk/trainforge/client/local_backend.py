"""The local backend: each job's attempts run under a background supervisor process on this machine,
with its state in its run directory (`<root>/<name>/.job/`, see trainforge.local.jobstate).

Between attempts — before the first, while suspended, after a supervisor was lost, after the end —
the backend itself runs the lifecycle pass (as the operator does on every resync), so a job behaves
as on a cluster: a lost supervisor is a lost attempt (restarted while restartPolicy allows), and a
finished job goes when its ttlSecondsAfterFinished has passed."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from ..lifecycle import AttemptState, AttemptView, Phase
from ..local.jobstate import STATE_DIR, JobDir, open_private
from ..local.passes import run_pass
from ..spec import TrainingJob
from ..spec.contract import DEFAULT_LOCAL_ROOT, LOCAL_ROOT_ENV, SUPERVISOR_MODULE, TRAINER_EXTRA_HINT
from ..spec.phases import TERMINAL_PHASES
from .errors import JobExists, JobNotFound, LogsUnavailable, TrainforgeError
from .labels import matches
from .types import JobEvent

FOLLOW_POLL_S = 0.2
STOP_WAIT_S = 30.0


class LocalBackend:
    def __init__(self, root: str | Path | None = None, namespace: str | None = None) -> None:
        self.root = Path(root or os.environ.get(LOCAL_ROOT_ENV) or DEFAULT_LOCAL_ROOT).resolve()
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
        if not job.spec.suspend:
            _require_trainer()
        job = job.model_copy(update={"metadata": job.metadata.model_copy(update={"namespace": self.namespace}),
                                     "status": None})
        jobdir.create(job)
        self._reconcile(jobdir)
        return jobdir.read_job()

    def get(self, name: str) -> TrainingJob:
        jobdir = self._dir(name)
        if jobdir.deleting() and jobdir.supervisor_pid() is None:
            jobdir.remove()
            raise JobNotFound(f"local TrainingJob {name} was deleted")
        if self._reconcile(jobdir):
            raise JobNotFound(f"local TrainingJob {name} was deleted after its ttlSecondsAfterFinished")
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
                # The trainer checkpoints and stops at once (its supervisor's next pass says Suspended).
                os.kill(pid, signal.SIGTERM)
            else:
                self._reconcile(jobdir)
        elif job.spec.suspend or phase == Phase.SUSPENDED:
            if pid is not None and phase == Phase.SUSPENDED:
                pid = _wait_exit(jobdir, STOP_WAIT_S)  # it has written Suspended and is shutting down
            if pid is not None:
                raise TrainforgeError(f"job {name} is still stopping (writing its checkpoint): resume it once "
                                      f"`trainforge status {name}` shows Suspended")
            jobdir.set_suspend(False)
            self._reconcile(jobdir)
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
                and status.get("phase") == Phase.RUNNING)

    # ---- the supervisor -----------------------------------------------------------------------

    def _start(self, jobdir: JobDir) -> None:
        _require_trainer()
        with os.fdopen(open_private(jobdir.path / "supervisor.log"), "ab") as out:
            process = subprocess.Popen([sys.executable, "-m", SUPERVISOR_MODULE, str(jobdir.path)],
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True, cwd=self.root)
        jobdir.record_process(process.pid)

    def _reconcile(self, jobdir: JobDir) -> bool:
        """A lifecycle pass while no supervisor runs the job; True when the job was deleted (TTL).

        No supervisor means no attempt: one that was running is lost (the local "node loss"), one
        the status names but never started is started now."""
        if jobdir.deleting() or jobdir.supervisor_pid() is not None:
            return False
        status = jobdir.read_status()
        lost = "" if status.get("phase") is None else (
            f"the local supervisor of attempt {status.get('attempt')} exited without finishing it "
            f"(see {jobdir.path / 'supervisor.log'})")
        transition = run_pass(jobdir, AttemptView(AttemptState.NONE, lost))
        if transition.delete_job:
            jobdir.remove()
            return True
        if transition.start is not None:
            self._start(jobdir)
        return False


def _require_trainer() -> None:
    if importlib.util.find_spec(SUPERVISOR_MODULE.split(".", 1)[0]) is None:
        raise TrainforgeError(f"running a job on the local backend needs the trainer: {TRAINER_EXTRA_HINT}")


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
