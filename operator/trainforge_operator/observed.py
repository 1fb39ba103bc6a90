"""What the operator sees of one attempt: its KubeRay RayJob and the pods of its Ray cluster.

Reads KubeRay's RayJob status (ray.io/v1, KubeRay 1.x): `jobDeploymentStatus` says where the
RayJob's lifecycle is (Initializing, Running, Complete, Failed, Suspended ...), `jobStatus` what the
Ray job did (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from trainforge.lifecycle import AttemptState, AttemptView
from trainforge.spec.contract import attempt_name

TERMINAL_DEPLOYMENT = frozenset({"Complete", "Failed"})
TERMINAL_JOB = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
HEAD_LABEL = ("ray.io/node-type", "head")
CLUSTER_LABEL = "ray.io/cluster"


@dataclass(frozen=True)
class Observed:
    job: Mapping[str, Any]
    """The TrainingJob as read from the API (metadata, spec, status)."""
    rayjob: Mapping[str, Any] | None
    """The current attempt's RayJob, `<job>-a<status.attempt>`, if it exists."""
    now: datetime
    pods: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    """Pods of the current attempt's Ray cluster (head and workers)."""
    earlier: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    """RayJobs of the job's earlier attempts still in the API, oldest first."""


def rayjob_status(rayjob: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (rayjob or {}).get("status") or {}


def is_terminal(rayjob: Mapping[str, Any] | None) -> bool:
    status = rayjob_status(rayjob)
    return status.get("jobDeploymentStatus") in TERMINAL_DEPLOYMENT or status.get("jobStatus") in TERMINAL_JOB


def succeeded(rayjob: Mapping[str, Any] | None) -> bool:
    return rayjob_status(rayjob).get("jobStatus") == "SUCCEEDED"


def is_running(rayjob: Mapping[str, Any] | None) -> bool:
    status = rayjob_status(rayjob)
    return status.get("jobStatus") == "RUNNING" or status.get("jobDeploymentStatus") == "Running"


def cluster_name(rayjob: Mapping[str, Any] | None) -> str | None:
    return rayjob_status(rayjob).get("rayClusterName") or None


def failure_message(rayjob: Mapping[str, Any] | None) -> str:
    status = rayjob_status(rayjob)
    parts = [p for p in (status.get("reason"), status.get("message")) if p]
    return ": ".join(parts) or f"RayJob ended with jobStatus {status.get('jobStatus') or 'unknown'}"


def head_present(pods: Sequence[Mapping[str, Any]]) -> bool:
    key, value = HEAD_LABEL
    return any(((p.get("metadata") or {}).get("labels") or {}).get(key) == value
               and not (p.get("metadata") or {}).get("deletionTimestamp")
               and (p.get("status") or {}).get("phase") not in ("Failed", "Succeeded") for p in pods)


def disrupted(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Pods Kubernetes marked for disruption (node drain, preemption, eviction): their loss is a
    preemption, not a failure of the job."""
    names = []
    for pod in pods:
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
                names.append((pod.get("metadata") or {}).get("name", "?"))
    return names


def attempt_view(obs: Observed, attempt: int) -> AttemptView:
    """The current attempt as the lifecycle sees it."""
    rayjob, name = obs.rayjob, (obs.job.get("metadata") or {}).get("name", "")
    if rayjob is None:
        return AttemptView(AttemptState.NONE, f"RayJob {attempt_name(name, attempt)} disappeared")
    hit = bool(disrupted(obs.pods))
    if is_terminal(rayjob):
        state = AttemptState.SUCCEEDED if succeeded(rayjob) else AttemptState.ENDED
        return AttemptView(state, failure_message(rayjob), disrupted=hit)
    cluster = cluster_name(rayjob)
    head_lost = bool(cluster) and is_running(rayjob) and not head_present(obs.pods)
    return AttemptView(AttemptState.RUNNING if is_running(rayjob) else AttemptState.PENDING,
                       f"the head pod of {cluster}" if head_lost else "", disrupted=hit, head_lost=head_lost)
