"""What a backend does for the client: store jobs, change their desired state, read their logs.

`TrainingJobClient` builds every user-facing method (wait, rank filters, storage reads) on these few
operations, so the kubernetes and local backends cannot drift apart in behaviour."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from ..spec import TrainingJob
from .types import JobEvent


class Backend(Protocol):
    namespace: str

    def create(self, job: TrainingJob) -> TrainingJob:
        """Store a new job (JobExists if the name is taken) and return it as stored."""

    def get(self, name: str) -> TrainingJob:
        """The job with its current status; JobNotFound if there is none."""

    def list(self, selector: str | None) -> list[TrainingJob]:
        """Jobs whose labels match the Kubernetes label selector (all when None)."""

    def set_suspend(self, name: str, suspend: bool) -> TrainingJob:
        """Set spec.suspend; whatever runs the job (operator or local supervisor) acts on it."""

    def delete(self, name: str) -> None:
        """Ask for the job's deletion; its attempts stop, its checkpoints stay."""

    def events(self, job: TrainingJob) -> list[JobEvent]:
        """Events about the job and its attempts, oldest first."""

    def attempt_log(self, job: TrainingJob, attempt: int, follow: bool) -> Iterator[str]:
        """The driver log of one attempt, line by line (no newlines). LogsUnavailable is raised
        before the first line when the log is gone or was never written."""
