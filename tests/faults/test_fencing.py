"""Fencing between incarnations and jobs, whole jobs through the operator (real kopf, the emulated
API server, the KubeRay stand-in, moto S3): nothing is adopted, overwritten or pruned across them."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.operator_setup import checkpoints, cluster, digits_job, record, resumed_step, wait_status
from tests.support.kube import Kube
from tests.support.kuberay_standin import KubeRayStandIn

pytestmark = pytest.mark.usefixtures("ray_session", "rbac_checked")
__all__ = ["cluster"]
TJ = "trainforge.dev/v1alpha1"


def in_namespace(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    doc["metadata"]["namespace"] = namespace
    return doc


def test_a_recreated_job_is_fenced_from_the_old_attempt_and_refuses_its_checkpoints(
        kube: Kube, cluster: KubeRayStandIn, bucket: str, moto_endpoint: str) -> None:
    kube.create(digits_job("again", bucket, moto_endpoint, pause_s=0.05, epochs=3))
    old = cluster.attempt("default", "again-a1")
    old_uid = kube.get(TJ, "trainingjobs", "default", "again")["metadata"]["uid"]
    wait_status(kube, "again", "a first checkpoint", lambda s: s.get("latestCheckpoint"))
    kube.delete(TJ, "trainingjobs", "default", "again")  # kubectl delete: the old attempt gets SIGTERM ...
    kube.wait_for(lambda: not kube.exists(TJ, "trainingjobs", "default", "again"), 30, "the old job to go")
    started = time.monotonic()
    kube.create(digits_job("again", bucket, moto_endpoint, pause_s=0.05, epochs=3))  # ... and kubectl apply
    new_uid = kube.get(TJ, "trainingjobs", "default", "again")["metadata"]["uid"]
    assert new_uid != old_uid

    st = wait_status(kube, "again", "the refusal", lambda s: s.get("phase") == "Failed", 120)
    took = time.monotonic() - started
    assert st["reason"] == "RunRefused" and f"uid {old_uid}" in st["message"], st
    assert "resumeFrom" in st["message"] and "metadata.name" in st["message"]
    assert old.process.poll() is not None  # the old attempt ended (checkpointed on SIGTERM) first
    assert "progress" not in st and st["outcome"]["attempt"] == 1  # the old trainer never wrote here
    assert st["attempt"] == 1 and st["restarts"] == 0
    kept = checkpoints(bucket, moto_endpoint, "again")
    assert kept and kept[-1][1] == "preempted"  # the old attempt's emergency checkpoint is there, untouched
    record("re-created job while the old attempt lingers", outcome="fenced, then RunRefused with the ways out",
           checkpoints_lost=0, seconds=took)

    # The way out the message names: take the run over from the old job's newest checkpoint.
    kube.delete(TJ, "trainingjobs", "default", "again")
    kube.wait_for(lambda: not kube.exists(TJ, "trainingjobs", "default", "again"), 30, "the refused job to go")
    newest = f"s3://{bucket}/runs/again/" + _name_of(bucket, moto_endpoint, kept[-1][0])
    taking = digits_job("again", bucket, moto_endpoint, epochs=3)
    taking["spec"]["checkpoint"]["resumeFrom"] = newest
    kube.create(taking)
    taken = this_incarnations_attempt(kube, cluster, "again-a1")
    assert resumed_step(taken, kube) == kept[-1][0]  # the step the old job checkpointed: nothing lost
    st = wait_status(kube, "again", "Succeeded", lambda s: s.get("phase") in ("Succeeded", "Failed"), 180)
    assert st["phase"] == "Succeeded" and st["progress"]["step"] == 60, st


def test_the_same_name_and_storage_in_two_namespaces_never_share_a_run(
        kube: Kube, cluster: KubeRayStandIn, bucket: str, moto_endpoint: str) -> None:
    kube.create(in_namespace(digits_job("twin", bucket, moto_endpoint, maxSteps=10), "team-a"))
    st = wait_status_in(kube, "team-a", "twin", lambda s: s.get("phase") in ("Succeeded", "Failed"), 400)
    assert st["phase"] == "Succeeded", st
    before = checkpoints(bucket, moto_endpoint, "twin")
    kube.create(in_namespace(digits_job("twin", bucket, moto_endpoint, maxSteps=20), "team-b"))
    st = wait_status_in(kube, "team-b", "twin", lambda s: s.get("phase") in ("Succeeded", "Failed"), 300)
    assert st["phase"] == "Failed" and st["reason"] == "RunRefused" and "team-a/twin" in st["message"], st
    assert checkpoints(bucket, moto_endpoint, "twin") == before  # nothing resumed, pruned or added
    record("same name and storage in two namespaces", outcome="second job refused (RunRefused)", checkpoints_lost=0)


def this_incarnations_attempt(kube: Kube, cluster: KubeRayStandIn, name: str) -> Any:
    """The stand-in's attempt of the RayJob `name` that exists now (not a deleted namesake's)."""
    uid = kube.wait_for(lambda: kube.exists("ray.io/v1", "rayjobs", "default", name)
                        and kube.get("ray.io/v1", "rayjobs", "default", name)["metadata"]["uid"], 60, f"RayJob {name}")
    return kube.wait_for(lambda: (a := cluster.attempts.get(("default", name))) is not None and a.uid == uid and a,
                         60, f"the stand-in to start {name}")


def wait_status_in(kube: Kube, namespace: str, name: str, predicate: Any, timeout: float) -> dict[str, Any]:
    def current() -> dict[str, Any]:
        return kube.get(TJ, "trainingjobs", namespace, name).get("status") or {}

    return kube.wait_for(lambda: (s := current()) and predicate(s) and s, timeout, f"{namespace}/{name}")


def _name_of(bucket: str, endpoint: str, step: int) -> str:
    from trainforge.checkpoints import list_checkpoints, resolve_storage

    target = resolve_storage(f"s3://{bucket}/runs", endpoint)
    entries = list_checkpoints(target.filesystem, target.run_path("again"), check=False)
    return next(e.name for e in reversed(entries) if e.complete and e.step == step)
