"""Attempt fencing in the operator's pure reconcile: which RayJobs are adopted, and what a new
attempt waits for (RayJobs and pods as the API server lists them, sorted by `kube.split_observed`)."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

from trainforge.spec.contract import LABEL_ATTEMPT, LABEL_JOB, LABEL_JOB_UID
from trainforge_operator.kube import split_observed
from trainforge_operator.reconcile import Decision, reconcile
from trainforge_operator.settings import OperatorSettings

from tests.unit.test_reconcile import SETTINGS, T0, applied, job

FENCE = OperatorSettings(default_storage="s3://ckpt/runs", fence_wait_s=120)


def pass_(doc: dict[str, Any], rayjobs: list[dict[str, Any]], pods: list[dict[str, Any]], at: float = 0,
          settings: OperatorSettings = FENCE) -> tuple[Decision, dict[str, Any]]:
    decision = reconcile(split_observed(doc, rayjobs, pods, T0 + timedelta(seconds=at)), settings)
    return decision, applied(doc, decision)


def with_status(rayjob: dict[str, Any], job_status: str, deployment: str) -> dict[str, Any]:
    doc = copy.deepcopy(rayjob)
    doc["status"] = {"jobStatus": job_status, "jobDeploymentStatus": deployment, "rayClusterName": "c1"}
    return doc


def pod(name: str, attempt: int, uid: str = "uid-1", phase: str = "Running", head: bool = True) -> dict[str, Any]:
    labels = {LABEL_JOB: "digits", LABEL_ATTEMPT: str(attempt), LABEL_JOB_UID: uid,
              "ray.io/cluster": "c1", "ray.io/node-type": "head" if head else "worker"}
    return {"metadata": {"name": name, "labels": labels}, "status": {"phase": phase}}


def old_incarnation_rayjob(first: Decision) -> dict[str, Any]:
    doc = with_status(first.create, "RUNNING", "Running")  # type: ignore[arg-type]
    doc["metadata"]["ownerReferences"][0]["uid"] = "uid-0"
    doc["metadata"]["labels"][LABEL_JOB_UID] = "uid-0"
    return doc


def test_a_recreated_job_never_adopts_the_old_incarnations_rayjob() -> None:
    first, _ = pass_(job(), [], [])
    old = old_incarnation_rayjob(first)
    decision, doc = pass_(job(), [old], [pod("c1-head", 1, uid="uid-0")])
    assert decision.create is None and decision.delete == ["digits-a1"]  # the orphan goes; nothing adopted
    decision, doc = pass_(doc, [old], [pod("c1-head", 1, uid="uid-0")], at=5)
    assert decision.create is None and doc["status"]["reason"] == "WaitingForPreviousAttempt"
    assert "RayJob digits-a1 (of an earlier incarnation of the job)" in doc["status"]["message"]
    assert "pod c1-head" in doc["status"]["message"] and doc["status"]["phase"] == "Created"
    decision, doc = pass_(doc, [], [], at=10)  # gone: attempt 1 of this incarnation starts
    assert decision.create is not None and decision.create["metadata"]["labels"][LABEL_JOB_UID] == "uid-1"


def test_a_rayjob_being_deleted_is_not_adopted() -> None:
    first, doc = pass_(job(), [], [])
    rj = with_status(first.create, "RUNNING", "Running")  # type: ignore[arg-type]
    rj["metadata"]["deletionTimestamp"] = "2026-11-22T12:00:00Z"
    decision, doc = pass_(doc, [rj], [], at=5)
    assert decision.create is None and "RayJob digits-a1 (being deleted)" in doc["status"]["message"]


def lost_head(settings: OperatorSettings = FENCE) -> tuple[dict[str, Any], dict[str, Any]]:
    """Attempt 1 running, then its head gone past the grace: attempt 2 decided, RayJob 1 deleted."""
    first, doc = pass_(job(), [], [], settings=settings)
    rj = with_status(first.create, "RUNNING", "Running")  # type: ignore[arg-type]
    worker = pod("c1-w0", 1, head=False)
    _, doc = pass_(doc, [rj], [pod("c1-head", 1), worker], at=1, settings=settings)
    _, doc = pass_(doc, [rj], [worker], at=2, settings=settings)
    decision, doc = pass_(doc, [rj], [worker], at=200, settings=settings)
    assert decision.delete == ["digits-a1"] and doc["status"]["attempt"] == 2
    return doc, worker


def test_a_new_attempt_waits_for_the_pods_of_the_one_it_replaces() -> None:
    doc, worker = lost_head()
    decision, doc = pass_(doc, [], [worker], at=201)  # RayJob 1 deleted, its worker pod still there
    assert decision.create is None and "pod c1-w0" in doc["status"]["message"]
    decision, doc = pass_(doc, [], [], at=205)
    assert decision.create is not None and decision.create["metadata"]["name"] == "digits-a2"


def test_the_wait_is_bounded_and_reported() -> None:
    doc, worker = lost_head()
    decision, doc = pass_(doc, [], [worker], at=250)
    assert decision.create is None
    decision, doc = pass_(doc, [], [worker], at=200 + 121)  # a partitioned node never confirms the pod gone
    assert decision.create is not None
    warning = [e for e in decision.events if e.reason == "WaitingForPreviousAttempt"]
    assert warning and "still there after 121 s" in warning[0].message and warning[0].type == "Warning"


def test_pods_of_an_attempt_whose_ray_job_ended_do_not_hold_the_next_one() -> None:
    first, doc = pass_(job(), [], [], settings=SETTINGS)
    running = with_status(first.create, "RUNNING", "Running")  # type: ignore[arg-type]
    pods = [pod("c1-head", 1), pod("c1-w0", 1, head=False)]
    _, doc = pass_(doc, [running], pods, at=1)
    failed = with_status(first.create, "FAILED", "Failed")  # type: ignore[arg-type]
    decision, doc = pass_(doc, [failed], pods, at=2)  # the cluster lingers for its TTL: not a writer
    assert doc["status"]["attempt"] == 2 and decision.create is not None


def test_a_stale_pod_of_another_incarnation_blocks_but_a_finished_one_does_not() -> None:
    decision, _ = pass_(job(), [], [pod("old-head", 1, uid="uid-0", phase="Succeeded")])
    assert decision.create is not None
