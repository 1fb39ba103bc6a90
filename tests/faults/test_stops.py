"""Stops that used to come too late: a suspend of a job whose steps are slow, with reports far apart.

Stop requests were read only every `logEverySteps`; with slow steps the suspend's grace ran out and
the attempt was SIGKILLed with no checkpoint. Here `logEverySteps` (1000) is beyond the run's end,
the operator gives a suspending attempt 2 s before it deletes the RayJob, and the pods' grace is
20 s (80 steps; time for Ray Train to wind down too): the stop must be read at the next step, and
the emergency checkpoint is taken at the step training stopped at."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.faults.operator_setup import (
    checkpoints,
    cluster,  # noqa: F401  (the operator + KubeRay stand-in fixture)
    digits_job,
    explained,
    record,
    since,
    stopped_step,
    wait_status,
)
from tests.support.kube import Kube
from tests.support.kuberay_standin import KubeRayStandIn

pytestmark = pytest.mark.usefixtures("ray_session", "rbac_checked")
TJ = "trainforge.dev/v1alpha1"
SUSPEND_GRACE_S, POD_GRACE_S, PAUSE_S = 2, 20, 0.25


@pytest.fixture
def short_suspend_grace(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Before `cluster` starts the operator, which reads its settings once."""
    monkeypatch.setenv("TRAINFORGE_SUSPEND_GRACE_S", str(SUSPEND_GRACE_S))
    yield


def test_a_suspend_with_slow_steps_checkpoints_within_the_grace(
        short_suspend_grace: None, kube: Kube, cluster: KubeRayStandIn,  # noqa: F811
        bucket: str, moto_endpoint: str) -> None:
    doc = digits_job("slow", bucket, moto_endpoint, pause_s=PAUSE_S, maxSteps=400,
                     terminationGracePeriodSeconds=POD_GRACE_S)
    doc["spec"]["logEverySteps"] = 1000  # 1000 x 0.25 s: far beyond the grace
    doc["spec"]["checkpoint"].update(everySteps=5, everyEpoch=False)
    with explained(cluster):
        kube.create(doc)
        first = cluster.attempt("default", "slow-a1")
        wait_status(kube, "slow", "a first checkpoint", lambda s: s.get("latestCheckpoint"), 300)
        started = time.monotonic()
        kube.patch(TJ, "trainingjobs", "default", "slow", {"spec": {"suspend": True}})
        st = wait_status(kube, "slow", "Suspended", lambda s: s.get("phase") == "Suspended", 90)
        suspended_s = since(started)
        code = first.process.wait(30)
        saved = checkpoints(bucket, moto_endpoint, "slow")
        last_periodic = max(step for step, reason in saved if reason == "interval")
        emergency, reason = saved[-1]
        assert reason == "preempted" and emergency > last_periodic, saved  # taken at the stop, within the grace
        assert code == 75 and st["phase"] == "Suspended"  # it ended itself as preempted, not SIGKILLed
        assert suspended_s < SUSPEND_GRACE_S + POD_GRACE_S + 10
        # The loop stops right after the emergency save: its last report is that step.
        stopped_at = stopped_step(first)
        assert stopped_at == emergency
        record("suspend with slow steps", fault="spec.suspend, 0.25 s steps, logEverySteps 1000, grace 2 + 20 s",
               outcome="Suspended with an emergency checkpoint", stopped_at_step=stopped_at,
               checkpoint_step=emergency, steps_lost=stopped_at - emergency,
               steps_a_periodic_checkpoint_would_lose=stopped_at - last_periodic,
               time_to_checkpointed_stop_s=suspended_s)
