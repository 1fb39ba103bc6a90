"""The SDK, one test module for both backends: the same calls must behave the same.

kubernetes: the operator (real kopf) on the emulated API server and the KubeRay stand-in running each
attempt's entrypoint on the session's Ray; logs come from the stand-in's submitter pod.
local: background supervisors on this machine, using the session's Ray through RAY_ADDRESS."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from trainforge import Task, TrainingJob, TrainingJobClient
from trainforge.checkpoints import list_checkpoints, resolve_storage
from trainforge.client import JobNotFound, LogsUnavailable
from trainforge.local.jobstate import JobDir

from tests.support.chart import refused, render
from tests.support.kube import Kube, run_operator
from tests.support.kuberay_standin import KubeRayStandIn

pytestmark = pytest.mark.usefixtures("ray_session")
OPERATOR = "trainforge_operator.handlers"


@dataclass
class Backend:
    client: TrainingJobClient
    sigterm_trainer: Callable[[str, int], None]
    """SIGTERM the process that drives attempt N of a job, as a node drain or spot reclaim does: the
    cluster attempt's entrypoint (in the KubeRay stand-in), or the local job's supervisor."""


@pytest.fixture(params=["kubernetes", "local"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    import ray

    address = ray.get_runtime_context().gcs_address
    if request.param == "local":
        monkeypatch.setenv("RAY_ADDRESS", address)
        root = tmp_path / "runs"

        def sigterm_supervisor(name: str, attempt: int) -> None:
            jobdir = JobDir.of(root, name)
            _wait_for(lambda: jobdir.read_status().get("attempt") == attempt, 60, f"attempt {attempt}")
            os.kill(_wait_for(jobdir.supervisor_pid, 30, "the supervisor"), signal.SIGTERM)

        yield Backend(TrainingJobClient(backend="local", root=root, poll_s=0.3), sigterm_supervisor)
        return
    kube: Kube = request.getfixturevalue("kube")
    monkeypatch.setenv("TRAINFORGE_RESYNC_S", "2")
    with KubeRayStandIn(kube.api_client(), tmp_path, address, {"TRAINFORGE_STATUS_INTERVAL_S": "0"},
                        pod_log=kube.set_pod_log) as standin, run_operator(kube, module=OPERATOR):

        def sigterm_entrypoint(name: str, attempt: int) -> None:
            # As a drain does: Kubernetes marks the pod first (the operator's evidence of a preemption).
            running = standin.attempt("default", f"{name}-a{attempt}")
            kube.patch_status("v1", "pods", "default", f"{running.cluster}-head", {"conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}]})
            os.killpg(running.process.pid, signal.SIGTERM)

        yield Backend(TrainingJobClient(backend="kubernetes", namespace="default", poll_s=0.3), sigterm_entrypoint)
    assert not standin.errors, standin.errors
    assert not refused(kube.requests, render()), "the chart's RBAC would refuse these calls"


@pytest.fixture
def client(backend: Backend) -> TrainingJobClient:
    return backend.client


def digits(name: str, storage: Path, pause_s: float = 0.0, **spec: Any) -> TrainingJob:
    return TrainingJob(name=name, labels={"team": "vision"},
                       task=Task("tests.support.tasks:paced_digits", args={"hidden": 32, "pause_s": pause_s}),
                       workers=2, cpus_per_worker=1, batch={"size": 64}, log_every_steps=5,
                       checkpoint={"storage": str(storage), "everySteps": 5, "keep": 2}, **spec)


def test_preempt_follow_suspend_resume_list_events_checkpoints_delete(backend: Backend, tmp_path: Path) -> None:
    """One job's whole life through the SDK, the same on both backends (three Ray Train runs: each
    costs ~25 s of start-up on CI): SIGTERMed (a preemption, not a suspension) it restarts and
    resumes; suspended it stops; resumed it finishes."""
    client = backend.client
    name = client.submit(digits("digits", tmp_path / "ckpt", pause_s=0.15, max_steps=60))
    started = client.wait(name, until={"Running", "Succeeded", "Failed"}, timeout=60)
    assert started.status is not None and started.status.attempt == 1
    _wait_for(lambda: (s := client.get(name).status) is not None and s.latest_checkpoint, 180, "a first checkpoint")
    backend.sigterm_trainer(name, 1)
    # Restarting lasts until attempt 2 runs (locally a moment): its traces are the counts and events.
    second = _wait_for(lambda: (s := client.get(name).status) is not None and s.attempt == 2 and s, 120, "attempt 2")
    assert (second.preemptions, second.restarts) == (1, 0) and second.phase in ("Restarting", "Running"), second
    # The status is written first and the pass's events right after it: a reader can fall between.
    _wait_for(lambda: {"Preempted", "Restarting"} <= {e.reason for e in client.events(name)}, 30,
              f"the preemption's events (seen: {[e.reason for e in client.events(name)]})")
    _wait_for(lambda: (s := client.get(name).status) is not None and s.phase == "Running", 120, "attempt 2 running")
    first = "\n".join(client.logs(name, attempt=1))
    assert "attempt 1 preempted" in first, first[-3000:]
    followed: list[str] = []
    follower = threading.Thread(target=lambda: followed.extend(client.logs(name, follow=True)), daemon=True)
    follower.start()
    with pytest.raises(LogsUnavailable, match=r"attempts 1\.\.2"):
        client.logs(name, attempt=3)

    seen_before = client.get(name).status.latest_checkpoint  # type: ignore[union-attr]
    _wait_for(lambda: (s := client.get(name).status) is not None and s.latest_checkpoint != seen_before, 180,
              "a checkpoint of attempt 2")
    client.suspend(name)
    suspended = client.wait(name, until={"Suspended", "Succeeded", "Failed"}, timeout=120)
    assert suspended.status is not None and suspended.status.phase == "Suspended", suspended.status
    assert suspended.status.preemptions == 1 and suspended.status.restarts == 0  # a suspension is neither
    follower.join(60)  # a followed log ends when the job stops: here, suspended
    assert not follower.is_alive(), "logs(follow=True) did not end when the job was suspended"
    text = "\n".join(followed)
    assert "trainforge worker rank=0" in text and "trainforge worker rank=1" in text, text[-3000:]
    assert "attempt 2 preempted" in text and "resumed from step" in text, text[-3000:]

    client.resume(name)
    seen: list[Any] = []
    final = client.wait(name, timeout=240, on_progress=lambda job: seen.append(job.status.progress))
    assert final.status is not None and final.status.phase == "Succeeded", final.status
    history = [f"{e.reason}: {e.message}" for e in client.events(name)]
    assert final.status.attempt == 3, (final.status, history)
    assert final.status.progress is not None and final.status.progress.step == 60
    assert (final.status.preemptions, final.status.restarts) == (1, 0)
    assert any(p is not None for p in seen) and final.status.latest_checkpoint

    third = "\n".join(client.logs(name, attempt=3))
    assert "resumed from step" in third and "attempt 3 succeeded" in third, third[-3000:]
    rank1 = list(client.logs(name, rank=1))
    assert rank1 and rank1[0].startswith("trainforge worker rank=1 ")
    assert not any("rank=0" in line for line in rank1)

    assert [j.name for j in client.list(phase="Succeeded")] == [name]
    assert [j.name for j in client.list(selector="team=vision")] == [name]
    assert client.list(selector="team=nlp") == [] and client.list(phase={"Running", "Failed"}) == []
    reasons = [e.reason for e in client.events(name)]
    assert reasons.count("AttemptCreated") == 3 and reasons.count("Preempted") == 1, reasons
    assert reasons.count("Restarting") == 2 and "Suspended" in reasons, reasons  # preempted, resumed
    checkpoints = client.checkpoints(name)
    assert checkpoints and checkpoints[-1].step == 60 and all(c.verdict.valid for c in checkpoints)

    client.delete(name, wait=True, timeout=60)
    with pytest.raises(JobNotFound):
        client.get(name)
    with pytest.raises(JobNotFound):
        client.logs(name)
    target = resolve_storage(str(tmp_path / "ckpt"))
    assert list_checkpoints(target.filesystem, target.run_path(name)), "deleting a job keeps its checkpoints"


def test_a_deadline_fails_the_job_and_its_ttl_deletes_it_keeping_checkpoints(backend: Backend,
                                                                            tmp_path: Path) -> None:
    """activeDeadlineSeconds and ttlSecondsAfterFinished, the same on both backends (one Ray Train run)."""
    client = backend.client
    # 60 s: a Ray Train start on the loaded 2-core CI machine takes up to ~40 s, and a checkpoint must
    # have been written before the deadline stops the run.
    name = client.submit(digits("slow", tmp_path / "ckpt", pause_s=0.3, max_steps=2000,
                                active_deadline_seconds=60, ttl_seconds_after_finished=4))
    failed = client.wait(name, until={"Failed", "Succeeded"}, timeout=150)
    assert failed.status is not None and failed.status.phase == "Failed", failed.status
    assert failed.status.reason == "DeadlineExceeded", failed.status
    assert "activeDeadlineSeconds (60 s)" in (failed.status.message or "")
    _wait_for(lambda: _gone(client, name), 60, "the TTL to delete the job")
    target = resolve_storage(str(tmp_path / "ckpt"))
    _wait_for(lambda: list_checkpoints(target.filesystem, target.run_path(name)), 60, "its checkpoints")


def _gone(client: TrainingJobClient, name: str) -> bool:
    try:
        client.get(name)
    except JobNotFound:
        return True
    return False


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")
