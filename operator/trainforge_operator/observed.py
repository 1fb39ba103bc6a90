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
from trainforge.spec.contract import API_GROUP, LABEL_ATTEMPT, LABEL_JOB_UID, attempt_name, parse_time

TERMINAL_DEPLOYMENT = frozenset({"Complete", "Failed"})
TERMINAL_JOB = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
WAITING_DEPLOYMENT = frozenset({None, "", "New", "Suspended"})
"""A suspended RayJob in these states runs nothing: queued (not admitted yet, or admitted and suspended again)."""
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
    others: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    """Pods with the job's label that are not the current attempt's: earlier attempts', or those of
    an earlier incarnation of the job (deleted and created again under the same name)."""
    foreign: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    """RayJobs with the job's label that this incarnation does not own, or that are being deleted:
    never adopted as an attempt."""
    kueue: str = ""
    """Kueue's word on the current attempt's workload while its RayJob is suspended (`kueue_message`)."""


def is_suspended(rayjob: Mapping[str, Any] | None) -> bool:
    """The RayJob waits for Kueue (created suspended), or Kueue suspended it again (its preemption)."""
    return bool(((rayjob or {}).get("spec") or {}).get("suspend"))


def kueue_message(workloads: Sequence[Mapping[str, Any]]) -> str:
    """Why Kueue holds a workload, from its conditions: an eviction's message (preempted to make room,
    ...), else why it has no quota reserved or is not admitted (couldn't assign flavors ...)."""
    wanted = (("Evicted", "True"), ("QuotaReserved", "False"), ("Admitted", "False"))
    for workload in workloads:
        found = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
        for type_, status in wanted:
            cond = found.get(type_)
            if cond is not None and cond.get("status") == status and cond.get("message"):
                return f"Kueue: {cond['message']}"
    return ""


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
               # Unknown: the node stopped reporting (a partition); the head may run on, unreachable.
               and (p.get("status") or {}).get("phase") not in ("Failed", "Succeeded", "Unknown") for p in pods)


def disrupted(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Pods Kubernetes marked for disruption (node drain, preemption, eviction): their loss is a
    preemption, not a failure of the job."""
    names = []
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):  # deleted (kubectl delete pod, a node going)
            names.append((pod.get("metadata") or {}).get("name", "?"))
            continue
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
                names.append((pod.get("metadata") or {}).get("name", "?"))
    return names


def attempt_view(obs: Observed, attempt: int, said_goodbye: int | None = None) -> AttemptView:
    """The current attempt as the lifecycle sees it. `said_goodbye`: the attempt whose trainer wrote
    its outcome (status.outcome.attempt)."""
    rayjob, name = obs.rayjob, (obs.job.get("metadata") or {}).get("name", "")
    if rayjob is None:
        return AttemptView(AttemptState.NONE, f"RayJob {attempt_name(name, attempt)} disappeared",
                           waiting_on=tuple(blockers(obs, attempt, said_goodbye)))
    hit = bool(disrupted(obs.pods))
    if is_terminal(rayjob):
        state = AttemptState.SUCCEEDED if succeeded(rayjob) else AttemptState.ENDED
        return AttemptView(state, failure_message(rayjob), disrupted=hit)
    if is_suspended(rayjob) and rayjob_status(rayjob).get("jobDeploymentStatus") not in WAITING_DEPLOYMENT:
        # Kueue suspended it after admitting it: KubeRay deletes its cluster, and the pods' preStop hooks
        # have the trainer checkpoint and write its outcome. It is over once KubeRay says Suspended.
        return AttemptView(AttemptState.RUNNING, obs.kueue, disrupted=True)
    if is_suspended(rayjob):
        return AttemptView(AttemptState.PENDING, obs.kueue, queued=True, disrupted=hit)
    cluster = cluster_name(rayjob)
    head_lost = bool(cluster) and is_running(rayjob) and not head_present(obs.pods)
    if not is_running(rayjob):
        return AttemptView(AttemptState.PENDING, pending_reasons(obs.pods), disrupted=hit,
                           created=parse_time((rayjob.get("metadata") or {}).get("creationTimestamp")))
    return AttemptView(AttemptState.RUNNING, f"the head pod of {cluster}" if head_lost else "", disrupted=hit,
                       head_lost=head_lost)


def pending_reasons(pods: Sequence[Mapping[str, Any]]) -> str:
    """Why an attempt's pods are not running, in the pods' own words (scheduler, kubelet)."""
    if not pods:
        return ("none of its pods exist yet; the RayCluster's events say why (FailedCreate: quota, Pod Security "
                "admission, an invalid field)")
    found: list[str] = []
    for pod in pods:
        name, status = (pod.get("metadata") or {}).get("name", "?"), pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                why = cond.get("reason") or "Unschedulable"
                found.append(f"pod {name}: {why}: {cond.get('message', '')}".rstrip(": "))
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") and waiting["reason"] not in ("ContainerCreating", "PodInitializing"):
                found.append(f"pod {name}: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": "))
    return "; ".join(found[:3]) or "its pods are starting"


# ---- fencing: who must be gone before a new attempt starts ----------------------------------------


def owner_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of the TrainingJob that controls `obj` (None: no TrainingJob owns it)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "TrainingJob" and str(ref.get("apiVersion", "")).startswith(f"{API_GROUP}/"):
            return ref.get("uid")
    return None


def being_deleted(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _live(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def blockers(obs: Observed, attempt: int, said_goodbye: int | None) -> list[str]:
    """What must be gone before attempt `attempt` may start: a RayJob under its name that is not
    this incarnation's (or is being deleted), and live pods that may still run a trainer of an
    earlier attempt or incarnation. Pods of an attempt whose Ray job ended (its RayJob says so) or
    whose trainer wrote its outcome (`said_goodbye`) only wait for their cluster's TTL: they block
    nothing."""
    meta = obs.job.get("metadata") or {}
    uid, name = meta.get("uid", ""), attempt_name(meta.get("name", ""), attempt)
    found = [f"RayJob {(r.get('metadata') or {}).get('name')}" + (" (being deleted)" if being_deleted(r) else
                                                                   " (of an earlier incarnation of the job)")
             for r in obs.foreign if (r.get("metadata") or {}).get("name") == name]
    done = {str(said_goodbye)} | {(r.get("metadata") or {}).get("labels", {}).get(LABEL_ATTEMPT)
                                  for r in obs.earlier if is_terminal(r)}
    shown = (obs.job.get("status") or {}).get("attempt")
    if obs.pods and shown != attempt and not (is_terminal(obs.rayjob) or said_goodbye == shown):
        found += [f"pod {(p.get('metadata') or {}).get('name')}" for p in obs.pods if _live(p)]
    for pod in obs.others:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        ours = labels.get(LABEL_JOB_UID, uid) == uid
        if not _live(pod) or (ours and labels.get(LABEL_ATTEMPT) in done | {str(attempt)}):
            continue  # gone, finished, or the new attempt's own (a create that already went through)
        found.append(f"pod {(pod.get('metadata') or {}).get('name')}")
    return found


def orphans(obs: Observed) -> list[str]:
    """RayJobs of a deleted incarnation of this job (another TrainingJob uid under the same name):
    the garbage collector removes them in time; the operator does it now, as that owner is gone."""
    uid = (obs.job.get("metadata") or {}).get("uid", "")
    return [r["metadata"]["name"] for r in obs.foreign
            if (owner := owner_uid(r)) is not None and owner != uid and not being_deleted(r)]
