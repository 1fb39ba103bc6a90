"""Attempts the cluster loses track of, whole jobs through the operator (real kopf, the emulated API
server, the KubeRay stand-in, moto S3): a head cut off by a network partition that keeps training,
and an attempt whose pods are never scheduled."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from trainforge.checkpoints import Manifest, list_checkpoints, resolve_storage
from trainforge.checkpoints.owner import RunOwner, read_owner

from tests.faults.operator_setup import checkpoints, cluster, digits_job, record, resumed_step, status, wait_status
from tests.faults.test_fencing import this_incarnations_attempt
from tests.support.kube import Kube
from tests.support.kuberay_standin import UNSCHEDULABLE, KubeRayStandIn

pytestmark = pytest.mark.usefixtures("ray_session", "rbac_checked")
__all__ = ["cluster"]


@pytest.fixture
def quick_fences(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Set before the operator starts (request it ahead of `cluster`): short graces, so that a lost
    head is given up on and its pods waited for in seconds rather than minutes."""
    monkeypatch.setenv("TRAINFORGE_HEAD_LOST_GRACE_S", "2")
    monkeypatch.setenv("TRAINFORGE_FENCE_WAIT_S", "6")
    yield


def test_a_partitioned_head_that_trains_on_is_fenced_and_stops_itself(
        quick_fences: None, cluster: KubeRayStandIn, kube: Kube, bucket: str, moto_endpoint: str) -> None:
    # Paced so attempt 1 is still training when attempt 2 claims the run (head-lost grace + resync +
    # fence wait + a driver start, ~15 s under load): finished first, attempt 2 would find a complete run.
    kube.create(digits_job("split", bucket, moto_endpoint, pause_s=0.4, epochs=3))
    first = cluster.attempt("default", "split-a1")
    wait_status(kube, "split", "a first checkpoint", lambda s: s.get("latestCheckpoint"), 300)
    cluster.partition_head(first)
    started = time.monotonic()
    st = wait_status(kube, "split", "attempt 2", lambda s: s.get("attempt") == 2, 120)
    second = this_incarnations_attempt(kube, cluster, "split-a2")
    resumed = resumed_step(second, kube, 300)
    recovered = time.monotonic() - started
    claimed = owner_record(bucket, moto_endpoint, "split")
    assert claimed.attempt == 2

    # Cut off, the old attempt learns it is stale from either fence: its status writes are refused
    # (it then checkpoints and stops), or its next commit finds attempt 2 in the run's owner record.
    # Either way it stops by itself (the stand-in never kills it), and commits nothing after the claim.
    code = first.process.wait(240)
    assert code in (1, 75), first.log_path.read_text()[-3000:]
    late = [m for m in manifests(bucket, moto_endpoint, "split")
            if m.owner.get("attempt") == 1 and m.created > claimed.renewed]
    assert not late, [m.step for m in late]
    assert resumed == max(m.step for m in manifests(bucket, moto_endpoint, "split") if m.owner.get("attempt") == 1
                          and m.created <= claimed.renewed)  # the newest step attempt 1 saved: nothing lost
    st = wait_status(kube, "split", "Succeeded", lambda s: s.get("phase") in ("Succeeded", "Failed"), 400)
    assert st["phase"] == "Succeeded" and st["progress"]["step"] == 60 and st["outcome"]["attempt"] == 2, st
    waited = [e for e in kube.list("v1", "events", "default") if e["reason"] == "WaitingForPreviousAttempt"]
    assert any("still there after" in e["message"] for e in waited)  # it waited for the pods, then said so
    assert checkpoints(bucket, moto_endpoint, "split")[-1][0] == 60
    cluster.heal(first)
    record("partitioned old head still running", outcome="attempt 2 after the bounded wait; old head fenced",
           resumed_step=resumed, seconds_to_recover=recovered)


def owner_record(bucket: str, endpoint: str, run: str) -> RunOwner:
    target = resolve_storage(f"s3://{bucket}/runs", endpoint)
    found = read_owner(target.filesystem, target.run_path(run))
    assert found is not None
    return found


def manifests(bucket: str, endpoint: str, run: str) -> list[Manifest]:
    target = resolve_storage(f"s3://{bucket}/runs", endpoint)
    return [e.manifest for e in list_checkpoints(target.filesystem, target.run_path(run), check=False)
            if e.manifest is not None and e.manifest.status != "corrupt"]


def test_an_attempt_that_never_gets_running_fails_with_the_pods_reason(
        cluster: KubeRayStandIn, kube: Kube, bucket: str, moto_endpoint: str) -> None:
    doc = digits_job("stuck", bucket, moto_endpoint, startTimeoutSeconds=3, restartPolicy={"maxRestarts": 1})
    doc["spec"]["nodeSelector"] = {UNSCHEDULABLE: "true"}
    started = time.monotonic()
    kube.create(doc)
    st = wait_status(kube, "stuck", "Failed", lambda s: s.get("phase") == "Failed", 60)
    took = time.monotonic() - started
    assert st["reason"] == "RestartsExhausted" and st["restarts"] == 1, st
    assert "startTimeoutSeconds (3 s)" in st["message"] and "Unschedulable" in st["message"], st
    assert "didn't match Pod's node affinity/selector" in st["message"]
    assert not kube.exists("ray.io/v1", "rayjobs", "default", "stuck-a2")  # stopped, not left to idle
    assert status(kube, "stuck")["attempt"] == 2
    record("an attempt that never gets Running", outcome="StartTimeout, restarted once, then Failed with the "
           "scheduler's reason", seconds_to_fail=took)
