"""The trainforge SDK client: submit, watch and manage TrainingJobs on a cluster or on this machine."""

from .client import TrainingJobClient, to_job
from .errors import (
    ClusterUnreachable,
    CRDNotInstalled,
    InvalidJob,
    JobExists,
    JobNotFound,
    LogsUnavailable,
    PermissionDenied,
    StorageUnavailable,
    TrainforgeError,
    WaitTimeout,
)
from .types import JobEvent

__all__ = [
    "CRDNotInstalled", "ClusterUnreachable", "InvalidJob", "JobEvent", "JobExists", "JobNotFound",
    "LogsUnavailable", "PermissionDenied", "StorageUnavailable", "TrainforgeError", "TrainingJobClient",
    "WaitTimeout", "to_job",
]
