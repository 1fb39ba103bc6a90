"""Kueue end to end on one machine: the operator (real kopf) on the emulated API server, the KubeRay
stand-in (which honours RayJob.spec.suspend as KubeRay does), checkpoints on moto S3. The test plays
Kueue: it writes the Workload's conditions and unsuspends or suspends the RayJob as Kueue's RayJob
integration does. A queued job waits Queued with Kueue's message, runs once admitted, and Kueue's
preemption mid-run checkpoints it, counts a preemption (not a failure), queues the next attempt,
and that attempt resumes from the emergency checkpoint and succeeds with no step trained twice."""

from __future__ import annotations

import json
from typing import Any

import pytest
from trainforge.checkpoints import resolve_storage
from trainforge.runs import read_metrics

from tests.integration.test_operator import events
from tests.integration.test_operator_e2e import cluster, digits_job, resumed_step, step_of, wait_status
from tests.support.kube import Kube
from tests.support.kuberay_standin import KubeRayStandIn

pytestmark = pytest.mark.usefixtures("ray_session", "rbac_checked")
__all__ = ["cluster"]  # the fixture, shared
RAY = "ray.io/v1"
KUEUE = "kueue.x-k8s.io/v1beta1"
NO_QUOTA = "couldn't assign flavors to pod set workers: insufficient unused quota for cpu in flavor default"
EVICTED = "Preempted to accommodate a workload (UID: 1234) due to prioritization in the ClusterQueue"


def workload_crd() -> dict[str, Any]:
    """Kueue's Workload CRD, schema-less (the operator reads its conditions only)."""
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "workloads.kueue.x-k8s.io"},
            "spec": {"group": "kueue.x-k8s.io", "scope": "Namespaced",
                     "names": {"plural": "workloads", "singular": "workload", "kind": "Workload"},
                     "versions": [{"name": "v1beta1", "served": True, "storage": True,
                                   "subresources": {"status": {}}}]}}


def admit(kube: Kube, rayjob: str, suspend: bool = False) -> None:
    kube.patch(RAY, "rayjobs", "default", rayjob, {"spec": {"suspend": suspend}})


def workload_says(kube: Kube, rayjob: dict[str, Any], condition: dict[str, str]) -> None:
    """Kueue's Workload of `rayjob` (created on first use) with one condition."""
    name = f"rayjob-{rayjob['metadata']['name']}"
    if not any(w["metadata"]["name"] == name for w in kube.list(KUEUE, "workloads", "default")):
        kube.create({"apiVersion": KUEUE, "kind": "Workload", "metadata": {
            "name": name, "namespace": "default", "labels": {"kueue.x-k8s.io/job-uid": rayjob["metadata"]["uid"]}},
            "spec": {"queueName": "team-a"}})
    kube.patch_status(KUEUE, "workloads", "default", name, {"conditions": [
        {"lastTransitionTime": "2026-12-04T00:00:00Z", "reason": "Pending", **condition}]})


def test_a_queued_job_waits_for_kueue_and_survives_its_preemption(
        kube: Kube, cluster: KubeRayStandIn, bucket: str, moto_endpoint: str) -> None:
    kube.register_crd(workload_crd(), validate=False, prune=False)
    kube.create(digits_job("queued", bucket, moto_endpoint, pause_s=0.3, epochs=2, queue="team-a",
                           priorityClassName="batch-high"))
    first = kube.wait_for(lambda: next(iter(kube.list(RAY, "rayjobs", "default")), None), 30, "attempt 1's RayJob")
    assert first["spec"]["suspend"] is True and first["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    cluster_spec = first["spec"]["rayClusterSpec"]
    assert cluster_spec["headGroupSpec"]["template"]["spec"]["priorityClassName"] == "batch-high"
    assert cluster_spec["workerGroupSpecs"][0]["template"]["spec"]["priorityClassName"] == "batch-high"
    st = wait_status(kube, "queued", "Queued", lambda s: s.get("phase") == "Queued")
    assert st["message"] == "attempt 1 waits for Kueue to admit it from queue team-a"
    workload_says(kube, first, {"type": "QuotaReserved", "status": "False", "message": NO_QUOTA})
    wait_status(kube, "queued", "Kueue's message", lambda s: s.get("message") == f"Kueue: {NO_QUOTA}")
    assert "queued-a1" not in {a.name for a in cluster.attempts.values()}  # nothing runs while queued

    admit(kube, "queued-a1")
    wait_status(kube, "queued", "Running", lambda s: s.get("phase") == "Running")
    running = cluster.attempt("default", "queued-a1")
    wait_status(kube, "queued", "a first checkpoint", lambda s: s.get("latestCheckpoint"))
    # Kueue preempts the workload: Evicted, and the RayJob suspended (KubeRay tears its cluster down).
    workload_says(kube, first, {"type": "Evicted", "status": "True", "reason": "Preempted", "message": EVICTED})
    admit(kube, "queued-a1", suspend=True)
    st = wait_status(kube, "queued", "attempt 2 queued", lambda s: s.get("attempt") == 2 and s.get("phase") == "Queued")
    assert (st["preemptions"], st["restarts"]) == (1, 0), st
    shown = json.dumps([{k: v for k, v in st.items() if k != "conditions"}, events(kube, "queued")])
    assert st.get("outcome", {}).get("attempt") == 1 and st["outcome"]["result"] == "preempted", shown
    assert running.process.poll() is not None
    saved = step_of(st["latestCheckpoint"])
    second = kube.get(RAY, "rayjobs", "default", "queued-a2")
    assert second["spec"]["suspend"] is True and second["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"

    admit(kube, "queued-a2")
    assert resumed_step(cluster.attempt("default", "queued-a2"), kube) == saved  # 0 steps lost
    st = wait_status(kube, "queued", "Succeeded", lambda s: s.get("phase") in ("Succeeded", "Failed"), 180)
    assert st["phase"] == "Succeeded" and (st["attempt"], st["restarts"], st["preemptions"]) == (2, 0, 1), st
    target = resolve_storage(f"s3://{bucket}/runs", moto_endpoint)
    log = read_metrics(target.filesystem, target.run_path("queued"))
    assert [r["step"] for r in log.steps if "loss" in r and not r.get("done")] == list(range(5, 41, 5))
