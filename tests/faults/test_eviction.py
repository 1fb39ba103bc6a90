"""Pod eviction (spot reclaim, node drain) of a worker pod and of the head pod: the pod's preStop hook
sets the attempt's stop flag, every rank checkpoints at its next step boundary, the attempt ends as
preempted within the grace, and the next attempt's first step is the evicted step + 1 (0 lost).

The kubelet is the KubeRay stand-in's `evict_pod`: DisruptionTarget, the container's real preStop
command, then the pod goes (for the head, `ray start` takes the driver along: SIGKILL, nothing
forwarded). No periodic checkpoint is taken, so the only checkpoint attempt 2 can resume from is the
emergency one."""

from __future__ import annotations

import time

import pytest

from tests.faults.operator_setup import (
    checkpoints,
    cluster,  # noqa: F401  (the operator + KubeRay stand-in fixture)
    digits_job,
    explained,
    record,
    resumed_step,
    say,
    since,
    stopped_step,
    wait_status,
)
from tests.support.kube import Kube
from tests.support.kuberay_standin import KubeRayStandIn

pytestmark = pytest.mark.usefixtures("ray_session", "rbac_checked")
GRACE_S = 30


def evict_and_resume(kube: Kube, standin: KubeRayStandIn, bucket: str, endpoint: str, name: str,
                     pod_suffix: str) -> None:
    # 60 steps of 0.25 s: the hook (a Python start and a Ray connection, seconds here) lands mid-run.
    doc = digits_job(name, bucket, endpoint, pause_s=0.25, epochs=3, terminationGracePeriodSeconds=GRACE_S)
    # No periodic checkpoint: the only one attempt 2 can resume from is the emergency one.
    doc["spec"]["checkpoint"].update(everySteps=1000, everyEpoch=False)
    kube.create(doc)
    first = standin.attempt("default", f"{name}-a1")
    wait_status(kube, name, "training under way", lambda s: (s.get("progress") or {}).get("step", 0) >= 5, 300)
    started = time.monotonic()
    eviction = standin.evict_pod(first, f"{first.cluster}-{pod_suffix}")
    say(f"preStop hook: {eviction}")
    assert eviction.hook_exit == 0, eviction.hook_output
    assert "has stopped" in eviction.hook_output, eviction.hook_output  # it held the pod until the driver was done
    assert eviction.total_s < GRACE_S
    st = wait_status(kube, name, "attempt 2", lambda s: s.get("attempt") == 2)
    code = first.process.wait(30)
    # A worker pod's eviction leaves the driver to exit by itself, as preempted. The head's takes the
    # driver along once the hook returns: by then it has written its outcome (the flag actor goes last).
    assert code == (75 if pod_suffix != "head" else -9), first.log_path.read_text()[-3000:]
    assert (st["preemptions"], st["restarts"]) == (1, 0) and st["outcome"]["result"] == "preempted"
    stopped_at = stopped_step(first)  # attempt 1's last report: the step its loop stopped after
    saved = checkpoints(bucket, endpoint, name)
    assert saved == [(stopped_at, "preempted")]

    second = standin.attempt("default", f"{name}-a2")
    resumed = resumed_step(second, kube, timeout=300)  # a fresh Ray Train start: slow on a busy 2-core box
    recovered_s = since(started)
    assert resumed == stopped_at  # attempt 2's first step is stopped_at + 1: nothing trained is lost
    st = wait_status(kube, name, "Succeeded", lambda s: s.get("phase") in ("Succeeded", "Failed"), 180)
    assert st["phase"] == "Succeeded", (st, second.log_path.read_text()[-3000:])
    assert st["progress"]["step"] == 60 and (st["attempt"], st["preemptions"]) == (2, 1)  # same total as unbroken
    record(f"eviction of the {'head' if pod_suffix == 'head' else 'worker'} pod", fault="evict_pod (preStop, SIGTERM)",
           outcome="preempted, resumed, Succeeded", evicted_at_step=stopped_at, resumed_at_step=resumed,
           steps_lost=stopped_at - resumed, hook_s=eviction.hook_s, time_to_recover_s=recovered_s)


def test_evicting_a_worker_pod_checkpoints_at_the_next_step_and_loses_nothing(
        kube: Kube, cluster: KubeRayStandIn, bucket: str, moto_endpoint: str) -> None:  # noqa: F811
    with explained(cluster):
        evict_and_resume(kube, cluster, bucket, moto_endpoint, "evict-w", "workers-0")


def test_evicting_the_head_pod_checkpoints_at_the_next_step_and_loses_nothing(
        kube: Kube, cluster: KubeRayStandIn, bucket: str, moto_endpoint: str) -> None:  # noqa: F811
    with explained(cluster):
        evict_and_resume(kube, cluster, bucket, moto_endpoint, "evict-h", "head")
