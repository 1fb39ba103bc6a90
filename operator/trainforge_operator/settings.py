"""The operator's own configuration: what a TrainingJob does not say, the operator decides here.

Read once at start-up from flags and TRAINFORGE_* environment variables (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from trainforge import __version__

DEFAULT_IMAGE = f"ghcr.io/trainforge/trainer:{__version__}"
RAY_VERSION = "2.60.0"


@dataclass(frozen=True)
class OperatorSettings:
    trainer_image: str = DEFAULT_IMAGE
    """Image for jobs whose spec.image is unset."""
    default_storage: str | None = None
    """Checkpoint storage (s3://bucket/prefix) for jobs whose spec.checkpoint.storage is unset;
    each namespace gets its own prefix below it."""
    default_endpoint: str | None = None
    default_queue: str | None = None
    """Kueue LocalQueue for jobs whose spec.queue is unset (None: such jobs bypass Kueue)."""
    ray_version: str = RAY_VERSION
    head_cpu: str = "1"
    head_memory: str = "2Gi"
    head_lost_grace_s: float = 60.0
    """A RayJob that is not terminal while its head pod has been gone this long is an attempt lost."""
    termination_grace_s: int = 120
    """Pod terminationGracePeriodSeconds: time for an emergency checkpoint (save + upload) on eviction."""
    cluster_ttl_s: int = 60
    """RayJob ttlSecondsAfterFinished: how long a finished attempt's pods (and GPUs) linger for logs."""
    suspend_grace_s: float = 120.0
    """How long a suspending job's trainer gets to checkpoint and exit before its RayJob is deleted."""
    resync_s: float = 10.0
    """How often a job is looked at when nothing happens (head loss, deadlines, TTL)."""
    fence_wait_s: float = 120.0
    """How long a new attempt waits for the pods of an earlier attempt (or of a deleted incarnation
    of the job) to go before it starts anyway; storage fencing then stops the old writer."""
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    """Namespaces watched; empty means all."""
    trainer_service_account: str | None = None
    """ServiceAccount of RayJob pods whose spec.serviceAccountName is unset (the chart's trainer
    account, bound in each job namespace to the Role that may patch trainingjobs/status)."""
    allowed_service_accounts: tuple[str, ...] = field(default_factory=tuple)
    """Service accounts a job may name in spec.serviceAccountName besides the trainer account; empty:
    any but the operator's own (the chart always sets it)."""
    operator_service_account: str | None = None
    """The operator's own account and namespace (the chart passes them through the downward API):
    a job may never run as it."""
    operator_namespace: str | None = None
    jobs_in_own_namespace: bool = False
    """Whether jobs may run in the operator's own namespace (off: its account and secrets live there)."""
    ray_auth: bool = True
    """Ray token authentication on every attempt's cluster, with a per-job Secret (guard.py)."""
    network_policy: bool = True
    """A NetworkPolicy per job: only its own pods and the KubeRay operator reach its pods."""
    kuberay_namespace: str | None = None
    """The KubeRay operator's namespace, for the NetworkPolicy; None: its pods in any namespace."""
    kuberay_pod_labels: tuple[tuple[str, str], ...] = (("app.kubernetes.io/name", "kuberay-operator"),)
    """Labels of the KubeRay operator's pods (its chart's), for the NetworkPolicy."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OperatorSettings:
        env = os.environ if environ is None else environ
        return cls(
            trainer_image=env.get("TRAINFORGE_TRAINER_IMAGE", DEFAULT_IMAGE),
            default_storage=env.get("TRAINFORGE_DEFAULT_STORAGE") or None,
            default_endpoint=env.get("TRAINFORGE_DEFAULT_ENDPOINT") or None,
            default_queue=env.get("TRAINFORGE_DEFAULT_QUEUE") or None,
            ray_version=env.get("TRAINFORGE_RAY_VERSION", RAY_VERSION),
            head_cpu=env.get("TRAINFORGE_HEAD_CPU", "1"),
            head_memory=env.get("TRAINFORGE_HEAD_MEMORY", "2Gi"),
            head_lost_grace_s=float(env.get("TRAINFORGE_HEAD_LOST_GRACE_S", "60")),
            termination_grace_s=int(env.get("TRAINFORGE_TERMINATION_GRACE_S", "120")),
            cluster_ttl_s=int(env.get("TRAINFORGE_CLUSTER_TTL_S", "60")),
            suspend_grace_s=float(env.get("TRAINFORGE_SUSPEND_GRACE_S", "120")),
            resync_s=float(env.get("TRAINFORGE_RESYNC_S", "10")),
            fence_wait_s=float(env.get("TRAINFORGE_FENCE_WAIT_S", "120")),
            namespaces=_names(env.get("TRAINFORGE_WATCH_NAMESPACES", "")),
            trainer_service_account=env.get("TRAINFORGE_TRAINER_SERVICE_ACCOUNT") or None,
            allowed_service_accounts=_names(env.get("TRAINFORGE_ALLOWED_SERVICE_ACCOUNTS", "")),
            operator_service_account=env.get("TRAINFORGE_OPERATOR_SERVICE_ACCOUNT") or None,
            operator_namespace=env.get("TRAINFORGE_OPERATOR_NAMESPACE") or None,
            jobs_in_own_namespace=env.get("TRAINFORGE_JOBS_IN_OPERATOR_NAMESPACE", "").lower() in ("1", "true"),
            ray_auth=env.get("TRAINFORGE_RAY_AUTH", "true").lower() not in ("0", "false"),
            network_policy=env.get("TRAINFORGE_NETWORK_POLICY", "true").lower() not in ("0", "false"),
            kuberay_namespace=env.get("TRAINFORGE_KUBERAY_NAMESPACE") or None,
            kuberay_pod_labels=_labels(env.get("TRAINFORGE_KUBERAY_POD_LABELS",
                                               "app.kubernetes.io/name=kuberay-operator")),
        )


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    """`k=v,k2=v2` as pairs; a pair without `=` is a configuration error, said at start-up."""
    pairs = []
    for item in _names(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"TRAINFORGE_KUBERAY_POD_LABELS: {item!r} is not key=value")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())
