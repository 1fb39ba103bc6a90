"""The SDK, one test module for both backends: the same calls must behave the same.

kubernetes: the operator (real kopf) on the emulated API server and the KubeRay stand-in running each
attempt's entrypoint on the session's Ray; logs come from the stand-in's submitter pod.
local: background supervisors on this machine, using the session's Ray through RAY_ADDRESS."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trainforge import Task, TrainingJob, TrainingJobClient
from trainforge.checkpoints import list_checkpoints, resolve_storage
from trainforge.client import JobNotFound, LogsUnavailable

from tests.support.chart import refused, render
from tests.support.kube import Kube, run_operator
from tests.support.kuberay_standin import KubeRayStandIn

pytestmark = pytest.mark.usefixtures("ray_session")
OPERATOR = "trainforge_operator.handlers"


@pytest.fixture(params=["kubernetes", "local"])
def client(request: pytest.FixtureRequest, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[TrainingJobClient]:
    import ray

    address = ray.get_runtime_context().gcs_address
    if request.param == "local":
        monkeypatch.setenv("RAY_ADDRESS", address)
        yield TrainingJobClient(backend="local", root=tmp_path / "runs", poll_s=0.3)
        return
    kube: Kube = request.getfixturevalue("kube")
    monkeypatch.setenv("TRAINFORGE_RESYNC_S", "0.5")
    with KubeRayStandIn(kube.api_client(), tmp_path, address, {"TRAINFORGE_STATUS_INTERVAL_S": "0"},
                        pod_log=kube.set_pod_log) as standin, run_operator(kube, module=OPERATOR):
        yield TrainingJobClient(backend="kubernetes", namespace="default", poll_s=0.3)
    assert not standin.errors, standin.errors
    assert not refused(kube.requests, render()), "the chart's RBAC would refuse these calls"


def digits(name: str, storage: Path, pause_s: float = 0.0, **spec: Any) -> TrainingJob:
    return TrainingJob(name=name, labels={"team": "vision"},
                       task=Task("tests.support.tasks:paced_digits", args={"hidden": 32, "pause_s": pause_s}),
                       workers=2, cpus_per_worker=1, batch={"size": 64}, log_every_steps=5,
                       checkpoint={"storage": str(storage), "everySteps": 5, "keep": 2}, **spec)


def test_submit_follow_suspend_resume_list_events_checkpoints_delete(client: TrainingJobClient,
                                                                     tmp_path: Path) -> None:
    """One job's whole life through the SDK (two Ray Train runs: each costs ~25 s of start-up on CI)."""
    name = client.submit(digits("digits", tmp_path / "ckpt", pause_s=0.05, max_steps=30))
    started = client.wait(name, until={"Running", "Succeeded", "Failed"}, timeout=60)
    assert started.status is not None and started.status.attempt == 1
    followed: list[str] = []
    follower = threading.Thread(target=lambda: followed.extend(client.logs(name, follow=True)), daemon=True)
    follower.start()
    with pytest.raises(LogsUnavailable, match=r"attempts 1\.\.1"):
        client.logs(name, attempt=2)

    _wait_for(lambda: (s := client.get(name).status) is not None and s.latest_checkpoint, 180, "a first checkpoint")
    client.suspend(name)
    suspended = client.wait(name, until={"Suspended", "Succeeded", "Failed"}, timeout=120)
    assert suspended.status is not None and suspended.status.phase == "Suspended", suspended.status
    assert suspended.status.preemptions == 0 and suspended.status.restarts == 0
    follower.join(60)  # a followed log ends when the job stops: here, suspended
    assert not follower.is_alive(), "logs(follow=True) did not end when the job was suspended"
    text = "\n".join(followed)
    assert "trainforge worker rank=0" in text and "trainforge worker rank=1" in text, text[-3000:]
    assert "attempt 1 preempted" in text, text[-3000:]

    client.resume(name)
    seen: list[Any] = []
    final = client.wait(name, timeout=240, on_progress=lambda job: seen.append(job.status.progress))
    assert final.status is not None and final.status.phase == "Succeeded", final.status
    assert final.status.attempt == 2 and final.status.progress is not None and final.status.progress.step == 30
    assert any(p is not None for p in seen) and final.status.latest_checkpoint

    second = "\n".join(client.logs(name, attempt=2))
    assert "resumed from step" in second and "attempt 2 succeeded" in second, second[-3000:]
    rank1 = list(client.logs(name, rank=1))
    assert rank1 and rank1[0].startswith("trainforge worker rank=1 ")
    assert not any("rank=0" in line for line in rank1)

    assert [j.name for j in client.list(phase="Succeeded")] == [name]
    assert [j.name for j in client.list(selector="team=vision")] == [name]
    assert client.list(selector="team=nlp") == [] and client.list(phase={"Running", "Failed"}) == []
    reasons = [e.reason for e in client.events(name)]
    assert "AttemptStarted" in reasons or "AttemptCreated" in reasons, reasons
    checkpoints = client.checkpoints(name)
    assert checkpoints and checkpoints[-1].step == 30 and all(c.verdict.valid for c in checkpoints)

    client.delete(name, wait=True, timeout=60)
    with pytest.raises(JobNotFound):
        client.get(name)
    with pytest.raises(JobNotFound):
        client.logs(name)
    target = resolve_storage(str(tmp_path / "ckpt"))
    assert list_checkpoints(target.filesystem, target.run_path(name)), "deleting a job keeps its checkpoints"


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")
