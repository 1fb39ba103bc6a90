"""The SDK's errors: each one a single line saying what went wrong and what to do about it.

The CLI prints `str(error)` as is and exits 1; scripts catch the class they care about."""

from __future__ import annotations


class TrainforgeError(Exception):
    """Base class: the message is one actionable line."""


class ClusterUnreachable(TrainforgeError):
    """No kubeconfig / in-cluster config, or the API server does not answer."""


class CRDNotInstalled(TrainforgeError):
    """The cluster answers but has no TrainingJob resource type: the chart is not installed."""


class PermissionDenied(TrainforgeError):
    """RBAC refused the request (HTTP 403)."""


class JobNotFound(TrainforgeError, LookupError):
    """No TrainingJob of that name (in that namespace)."""


class JobExists(TrainforgeError):
    """A TrainingJob of that name already exists."""


class InvalidJob(TrainforgeError, ValueError):
    """The job does not validate, or the cluster's schema refused it (HTTP 422)."""


class LogsUnavailable(TrainforgeError):
    """The pods or files holding the logs asked for are gone, or were never created."""


class WaitTimeout(TrainforgeError, TimeoutError):
    """`wait` gave up before the job reached one of the phases waited for."""


class StorageUnavailable(TrainforgeError):
    """The job's checkpoint storage is not known or cannot be read from here."""
