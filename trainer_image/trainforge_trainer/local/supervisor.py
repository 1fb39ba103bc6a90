"""`python -m trainforge_trainer.local.supervisor JOB_DIR`: the operator's part for one local job,
while its attempts run.

Started in the background by the local backend. It runs each attempt with the cluster entrypoint's
own code (`trainforge_trainer.run.train` / `.sweep`), which writes progress, checkpoints and the
outcome through a status writer — here one that merges into status.json — and decides what follows
with the same lifecycle passes as the operator (`trainforge.local.passes`): while an attempt runs, a
monitor thread passes every second (deadline, suspension); when it ends, the pass says whether
another starts (a failure within restartPolicy.maxRestarts, a preemption), or the job is suspended
or finished. SIGTERM is the local preemption: the trainer checkpoints and stops, and — unless a
suspend or delete asked for it — the next attempt resumes from that checkpoint, as on a cluster.
Uses the Ray at RAY_ADDRESS when set, else starts a private one for its lifetime."""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from trainforge.checkpoints import resolve_storage
from trainforge.lifecycle import AttemptResult, AttemptState, AttemptView
from trainforge.local.jobstate import JobDir, open_private
from trainforge.local.passes import LOCAL_TIMING, run_pass

from ..driver import make_flag, prepare_ray_env
from ..kube_status import JobRef
from ..run import ClusterJob, outcome_patch, sweep, train

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
        self.flag: Any = None
        """The running attempt's PreemptFlag actor (a Train run), or None."""
        self.in_sweep = False
        self.stop_asked = False
        self.wake = threading.Event()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        view = AttemptView(AttemptState.NONE)
        try:
            while not self.jobdir.deleting():
                transition = run_pass(self.jobdir, view)
                if transition.delete_job:
                    self.jobdir.mark_deleting()  # main() removes the state directory on the way out
                    break
                if transition.start is not None:
                    view = self.run_attempt(transition.start.number)
                elif transition.status.phase is not None and transition.status.phase.is_terminal \
                        and transition.requeue_after is not None:
                    self._shutdown_ray()  # nothing runs until the TTL: give the CPUs back meanwhile
                    self.wake.wait(transition.requeue_after)
                else:
                    break  # suspended, or finished for good
        finally:
            self._shutdown_ray()
        return 0

    # ---- one attempt --------------------------------------------------------------------------

    def run_attempt(self, attempt: int) -> AttemptView:
        """Run attempt N to its end under a monitor thread; write its outcome; say how it ended."""
        _redirect_output(self.jobdir.attempt_log(attempt))
        self._ensure_ray()
        job = self.jobdir.read_manifest()
        spec = job.spec
        target = resolve_storage(spec.checkpoint.storage or str(self.jobdir.path.parent.parent),
                                 spec.checkpoint.endpoint, spec.checkpoint.region)
        cluster_job = ClusterJob(JobRef(job.metadata.namespace or "default", job.name, attempt), job.name, spec,
                                 target)
        log.info("TrainingJob %s attempt %d: run %s in %s", job.name, attempt, job.name, target.uri)
        self.stop_asked, self.in_sweep = False, spec.tune is not None
        self.flag = None if self.in_sweep else make_flag()
        done = threading.Event()
        monitor = threading.Thread(target=self._monitor, args=(done,), name="trainforge-monitor", daemon=True)
        monitor.start()
        try:
            result, message = self._train(cluster_job)
        finally:
            self.in_sweep = False
            done.set()
            monitor.join(timeout=30)
            self._release_flag()
        log.info("attempt %d %s%s", attempt, result, f": {message}" if message else "")
        FileStatusWriter(str(self.jobdir.path)).patch(outcome_patch(attempt, result, message))
        state = AttemptState.SUCCEEDED if result == AttemptResult.SUCCEEDED else AttemptState.ENDED
        return AttemptView(state, message)

    def _train(self, job: ClusterJob) -> tuple[AttemptResult, str]:
        writer = FileStatusWriter(str(self.jobdir.path))
        try:
            return sweep(job, writer) if self.in_sweep else train(job, writer, self.flag)
        except KeyboardInterrupt:  # a sweep asked to stop: Tune saved its state
            return AttemptResult.PREEMPTED, "stopped by SIGTERM"
        except Exception as exc:  # the attempt fails; the job may get another
            log.exception("the attempt failed")
            return AttemptResult.FAILED, f"{type(exc).__name__}: {exc}"

    def _monitor(self, done: threading.Event) -> None:
        """Lifecycle passes while the attempt runs: Running, the deadline, a suspension's grace."""
        while not done.is_set():
            try:
                transition = run_pass(self.jobdir, AttemptView(AttemptState.RUNNING))
            except Exception:  # a pass must never take the attempt down; the next one retries
                log.exception("lifecycle pass failed")
                transition = None
            if self.jobdir.deleting() or (transition is not None and transition.stops):
                self.request_stop()
            wait = LOCAL_TIMING.resync_s if transition is None or transition.requeue_after is None \
                else min(transition.requeue_after, LOCAL_TIMING.resync_s)
            done.wait(wait)

    def request_stop(self) -> None:
        """The trainer checkpoints at the next step boundary and the attempt ends (preempted)."""
        if self.stop_asked:
            return
        self.stop_asked = True
        if self.in_sweep:
            _thread.interrupt_main()  # Tune saves its state on KeyboardInterrupt
        elif self.flag is not None:
            self.flag.set.remote()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        # During a Train run the driver's own handler (same flag) is installed instead of this one.
        self.wake.set()
        if self.in_sweep:
            raise KeyboardInterrupt
        self.request_stop()

    # ---- Ray ------------------------------------------------------------------------------------

    def _ensure_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        prepare_ray_env()
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
            return
        spec = self.jobdir.read_manifest().spec
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=spec.tune is not None,
                 log_to_driver=True, configure_logging=False)

    def _shutdown_ray(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()

    def _release_flag(self) -> None:
        import ray

        if self.flag is not None:
            with contextlib.suppress(Exception):  # fit_run killed it already
                ray.kill(self.flag)
        self.flag = None


def _redirect_output(path: Path) -> None:
    """The attempt's driver log: this process's stdout/stderr, where Ray also forwards the workers'."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = open_private(path)
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
