"""Run TrainingJobs on this machine with embedded Ray: the same trainer code path as on a cluster."""

from .runner import LocalRun, RunOutcome, default_storage

__all__ = ["LocalRun", "RunOutcome", "default_storage"]
