"""`TrainingJobClient`: one API for TrainingJobs on a cluster or on this machine."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from ..checkpoints import CheckpointEntry, list_checkpoints
from ..runs import MetricsLog, read_metrics
from ..spec import TrainingJob, parse_job
from ..spec.errors import SpecValidationError
from ..spec.load import load_jobs
from ..spec.phases import Phase
from ..spec.status import TERMINAL_PHASES
from .backend import Backend
from .errors import InvalidJob, JobNotFound, LogsUnavailable, TrainforgeError, WaitTimeout
from .ranklog import rank_lines
from .storage import job_storage, read_tune_results
from .types import JobEvent

BackendName = Literal["kubernetes", "local"]
JobSource = TrainingJob | str | Path | Mapping[str, Any]


class TrainingJobClient:
    """Submit, watch and manage TrainingJobs.

    backend="kubernetes" talks to the cluster of the kubeconfig `context` (or the in-cluster
    config), where the trainforge operator runs each job as KubeRay RayJobs. backend="local" runs
    each job in a background process on this machine with its state under `root`
    (default ./trainforge-runs). Code written against one runs unchanged on the other.
    """

    def __init__(self, backend: BackendName = "kubernetes", namespace: str | None = None,
                 context: str | None = None, *, root: str | Path | None = None, api_client: Any = None,
                 poll_s: float = 1.0) -> None:
        self.backend_name = backend
        self.poll_s = poll_s
        self._backend = _make_backend(backend, namespace, context, root, api_client)

    @property
    def namespace(self) -> str:
        return self._backend.namespace

    # ---- jobs -------------------------------------------------------------------------------

    def submit(self, job: JobSource) -> str:
        """Create the job (a TrainingJob, a manifest path, or a manifest dict); returns its name.

        A local spec.runtime.workingDir is shipped first: on Kubernetes packed and uploaded to the
        job's checkpoint storage (the created job holds the package's URI); locally kept in place.
        """
        return self._backend.create(self.with_code(to_job(job))).name

    def with_code(self, job: TrainingJob) -> TrainingJob:
        """The job as this backend runs it: its spec.runtime.workingDir uploaded (kubernetes) or
        made absolute (local, whose runs start in another directory)."""
        from ..code import CodeError, ship
        from ..code.ship import local_path

        runtime = job.spec.runtime
        if runtime is None or not runtime.needs_upload:
            return job
        try:
            if self.backend_name == "kubernetes":
                return ship(job)
            doc = job.model_dump(mode="json", by_alias=True, exclude_unset=True)
            doc["spec"]["runtime"]["workingDir"] = str(local_path(runtime).resolve())
            return TrainingJob.model_validate(doc)
        except CodeError as err:
            raise InvalidJob(str(err)) from None
        except OSError as err:  # StorageRefused / StorageUnavailable say which storage and the fix
            raise TrainforgeError(f"uploading spec.runtime.workingDir: {err}") from None

    def get(self, name: str) -> TrainingJob:
        return self._backend.get(name)

    def list(self, selector: str | None = None, phase: str | Collection[str] | None = None) -> list[TrainingJob]:
        """Jobs matching a label selector ("team=nlp,tier!=dev") and/or phase(s), by name."""
        phases = {phase} if isinstance(phase, str) else set(phase or ())
        jobs = self._backend.list(selector)
        if phases:
            jobs = [j for j in jobs if _phase(j) in phases]
        return sorted(jobs, key=lambda j: j.name)

    def wait(self, name: str, until: Collection[str] = TERMINAL_PHASES, timeout: float | None = None,
             on_progress: Callable[[TrainingJob], None] | None = None) -> TrainingJob:
        """Block until the job's phase is one of `until`; returns the job then. `on_progress` is
        called with the job each time its phase or progress changes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: Any = None
        while True:
            job = self.get(name)
            status = job.status
            mark = (status.phase, status.progress, status.attempt, status.latest_checkpoint) if status else None
            if on_progress is not None and mark != seen:
                on_progress(job)
            seen = mark
            if _phase(job) in until:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {name} is still {_phase(job) or 'pending'} after {timeout:g} s "
                                  f"(waited for {'/'.join(sorted(until))}); `trainforge status {name}` shows why")
            time.sleep(self.poll_s if deadline is None else max(0.0, min(self.poll_s, deadline - time.monotonic())))

    def delete(self, name: str, wait: bool = True, timeout: float = 120.0) -> None:
        """Delete the job; its running attempt stops and its checkpoints stay on storage."""
        self._backend.delete(name)
        deadline = time.monotonic() + timeout
        while wait:
            try:
                self._backend.get(name)
            except JobNotFound:
                return
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"job {name} still exists {timeout:g} s after its deletion was asked for "
                                  "(is the operator running? it removes its finalizer)")
            time.sleep(min(self.poll_s, 0.5))

    def suspend(self, name: str) -> TrainingJob:
        """Checkpoint and stop the job (phase Suspended); `resume` continues from that checkpoint."""
        return self._backend.set_suspend(name, True)

    def resume(self, name: str) -> TrainingJob:
        return self._backend.set_suspend(name, False)

    # ---- what a job left behind -------------------------------------------------------------

    def events(self, name: str) -> list[JobEvent]:
        return self._backend.events(self.get(name))

    def logs(self, name: str, follow: bool = False, attempt: int | None = None,
             rank: int | None = None) -> Iterator[str]:
        """Lines of an attempt's driver log (default: the current attempt), or of one worker rank.
        With follow, lines stream while the attempt runs, and on into later attempts until the job
        finishes when no attempt was named."""
        job = self.get(name)
        current = job.status.attempt if job.status else 0
        chosen = attempt if attempt is not None else current
        if chosen < 1 or chosen > current:
            have = f"attempts 1..{current}" if current else "no attempt yet"
            raise LogsUnavailable(f"job {name} has {have}; pick one with --attempt")
        lines = self._backend.attempt_log(job, chosen, follow)
        if follow and attempt is None:
            lines = self._later_attempts(name, chosen, lines)
        return rank_lines(lines, rank) if rank is not None else lines

    def _later_attempts(self, name: str, first: int, lines: Iterator[str]) -> Iterator[str]:
        """After the followed attempt ends: each later attempt's log, until the job stops."""
        yield from lines
        shown = first
        while True:
            job = self.get(name)
            latest = job.status.attempt if job.status else 0
            if latest > shown:
                try:
                    later = self._backend.attempt_log(job, latest, True)
                except LogsUnavailable:  # its driver has not started (or never will: checked next pass)
                    later = None
                if later is not None:
                    shown = latest
                    yield f"--- attempt {latest} ---"
                    yield from later
                    continue
            if _phase(job) in TERMINAL_PHASES or _phase(job) == Phase.SUSPENDED:
                return
            time.sleep(self.poll_s)

    def checkpoints(self, name: str, verify: bool = False, include_pruned: bool = False) -> list[CheckpointEntry]:
        """The job's checkpoints on its storage, oldest first, each with its validity (`verify`
        also checks every file's SHA-256). Pruned ones, kept only as a record, are left out."""
        job = self.get(name)
        target = job_storage(job, self.backend_name)
        entries = list_checkpoints(target.filesystem, target.run_path(job.name), hashes=verify)
        return [e for e in entries if include_pruned or e.manifest is None or e.manifest.status != "pruned"]

    def metrics(self, name: str) -> MetricsLog:
        """The job's metrics log from its storage (every attempt's reports, one continuous step axis)."""
        job = self.get(name)
        target = job_storage(job, self.backend_name)
        try:
            return read_metrics(target.filesystem, target.run_path(job.name))
        except (OSError, ValueError) as exc:
            raise TrainforgeError(f"job {name}: {exc}") from exc

    def tune_results(self, name: str) -> dict[str, Any]:
        """A sweep's trials and best trial: the full table from storage when it can be read, else
        the summary the trainer wrote into the status."""
        job = self.get(name)
        if job.spec.tune is None:
            raise TrainforgeError(f"job {name} is not a sweep (it has no spec.tune)")
        return read_tune_results(job, self.backend_name)


def to_job(source: JobSource) -> TrainingJob:
    """A TrainingJob from a model, a manifest path (exactly one job in it) or a manifest dict."""
    try:
        if isinstance(source, TrainingJob):
            return parse_job(source.model_dump(mode="json", by_alias=True, exclude_unset=True))
        if isinstance(source, Mapping):
            return parse_job(dict(source))
        jobs = load_jobs(source)
    except SpecValidationError as err:
        raise InvalidJob(str(err)) from None
    except OSError as err:
        raise InvalidJob(f"cannot read {source}: {err.strerror or err}") from None
    if len(jobs) != 1:
        raise InvalidJob(f"{source} holds {len(jobs)} TrainingJobs; submit them one file each")
    return jobs[0]


def _phase(job: TrainingJob) -> str | None:
    return job.status.phase if job.status else None


def _make_backend(kind: str, namespace: str | None, context: str | None, root: str | Path | None,
                  api_client: Any) -> Backend:
    if kind == "kubernetes":
        from .kube_backend import KubeBackend

        return KubeBackend(namespace, context, api_client)
    if kind == "local":
        from .local_backend import LocalBackend

        return LocalBackend(root, namespace)
    raise TrainforgeError(f"backend {kind!r} is not one of kubernetes, local")
