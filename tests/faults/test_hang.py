"""A hung rank: rank 1 of 2 stops making progress for good inside a training step (a deadlock, a read
that never returns). The step-time watchdog (spec.hangTimeoutSeconds: 3) dumps every rank's stacks
into the attempt's log and ends the workers; the attempt fails within seconds instead of the
process group's 30 minutes, and the job's next attempt resumes from the last checkpoint."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.faults.operator_setup import (
    checkpoints,
    cluster,  # noqa: F401  (the operator + KubeRay stand-in fixture)
    digits_job,
    explained,
    record,
    resumed_step,
    wait_status,
)
from tests.support.kube import Kube
from tests.support.kuberay_standin import KubeRayStandIn

pytestmark = pytest.mark.usefixtures("ray_session", "rbac_checked")
HANG_TIMEOUT_S = 3
HANG_AT_MICRO = 13  # rank 1's 13th micro-batch: step 13 (epoch 2 of 10 steps each), after checkpoint 10


def test_a_hung_rank_fails_the_attempt_fast_with_stacks_and_the_next_resumes(
        kube: Kube, cluster: KubeRayStandIn, bucket: str, moto_endpoint: str, tmp_path: Path) -> None:  # noqa: F811
    marker = tmp_path / "hung"
    doc = digits_job("hung", bucket, moto_endpoint, epochs=2, hangTimeoutSeconds=HANG_TIMEOUT_S,
                     restartPolicy={"maxWorkerFailures": 0})  # the attempt fails; the job restarts it
    doc["spec"]["workers"] = 2
    doc["spec"]["task"]["args"].update(hang_at_micro=HANG_AT_MICRO, hang_rank=1, hang_marker=str(marker))
    # Blocking saves: an async one is committed only at the next check step (logEverySteps), and
    # the step-10 save would still be uncommitted when rank 1 hangs in step 13.
    doc["spec"]["checkpoint"].update({"everyEpoch": False, "async": False})
    with explained(cluster):
        kube.create(doc)
        first = cluster.attempt("default", "hung-a1")
        kube.wait_for(marker.exists, 300, "rank 1 to hang")
        hung_at = time.monotonic()
        st = wait_status(kube, "hung", "attempt 2", lambda s: s.get("attempt") == 2, 120)
        assert first.process.wait(30) == 1
        failed_s = time.monotonic() - hung_at
        assert (st["restarts"], st["preemptions"]) == (1, 0) and st["outcome"]["result"] == "failed"
        log = first.log_path.read_text(errors="replace")
        for rank in (0, 1):  # every rank's stacks: the hung one, and the one waiting on it
            assert f"Stacks of rank {rank}" in log, log[-3000:]
        assert re.search(r"in forward\b", log) and "tasks.py" in log  # where rank 1 sleeps
        assert failed_s < HANG_TIMEOUT_S + 60  # not the process group's 30 minutes
        last_checkpoint = max(step for step, _ in checkpoints(bucket, moto_endpoint, "hung"))

        second = cluster.attempt("default", "hung-a2")
        resumed = resumed_step(second, kube, timeout=300)  # a fresh Ray Train start: slow on a busy 2-core box
        recovered_s = time.monotonic() - hung_at
        assert resumed == last_checkpoint == 10
        st = wait_status(kube, "hung", "Succeeded", lambda s: s.get("phase") in ("Succeeded", "Failed"), 180)
        assert st["phase"] == "Succeeded" and st["progress"]["step"] == 20  # the same total as an unbroken run
    record("hung rank", fault="rank 1 of 2 sleeps for good in step 13; hangTimeoutSeconds 3",
           outcome="attempt failed with both ranks' stacks; next attempt resumed, Succeeded",
           last_completed_step=HANG_AT_MICRO - 1, resumed_at_step=resumed, steps_lost=HANG_AT_MICRO - 1 - resumed,
           time_to_fail_s=failed_s, time_to_recover_s=recovered_s)
