"""End to end on one machine: the operator (real kopf) on the emulated API server, the KubeRay
stand-in running each attempt's entrypoint (`python -m trainforge_trainer.run`) for real on the
session's Ray, checkpoints on moto S3, and the trainer writing progress into the TrainingJob."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trainforge.checkpoints import resolve_storage
from trainforge.checkpoints.results import load_outcome
from trainforge.runs import read_metrics

from tests.integration.test_operator import events
from tests.support.kube import Kube, run_operator
from tests.support.kuberay_standin import Attempt, KubeRayStandIn
from tests.unit.manifests import manifest

pytestmark = pytest.mark.usefixtures("ray_session", "rbac_checked")
MODULE = "trainforge_operator.handlers"
TJ = "trainforge.dev/v1alpha1"


@pytest.fixture
def cluster(kube: Kube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeRayStandIn]:
    import ray

    monkeypatch.setenv("TRAINFORGE_RESYNC_S", "2")
    with KubeRayStandIn(kube.api_client(), tmp_path, ray.get_runtime_context().gcs_address,
                        {"TRAINFORGE_STATUS_INTERVAL_S": "0"}) as standin, run_operator(kube, module=MODULE):
        yield standin
    assert not standin.errors, standin.errors


def digits_job(name: str, bucket: str, endpoint: str, pause_s: float = 0.0, **spec: Any) -> dict[str, Any]:
    doc = manifest(task={"entrypoint": "tests.support.tasks:paced_digits", "args": {"hidden": 64, "pause_s": pause_s}},
                   workers=1, cpusPerWorker=1, batch={"size": 64}, logEverySteps=5,
                   checkpoint={"storage": f"s3://{bucket}/runs", "endpoint": endpoint, "everySteps": 5,
                               "keep": 3, "keepBest": {"metric": "val_accuracy"}}, **spec)
    doc["metadata"] = {"name": name, "namespace": "default"}
    return doc


SEEN: list[dict[str, Any]] = []
"""Every status.progress the tests polled, in order: what the trainer wrote along the way."""


def status(kube: Kube, name: str) -> dict[str, Any]:
    found = kube.get(TJ, "trainingjobs", "default", name).get("status") or {}
    if found.get("progress"):
        SEEN.append(found["progress"])
    return found


def wait_status(kube: Kube, name: str, what: str, predicate: Any, timeout: float = 150) -> dict[str, Any]:
    return kube.wait_for(lambda: (s := status(kube, name)) and predicate(s) and s, timeout,
                         f"{name}: {what} (status now {status(kube, name)})")


def resumed_step(attempt: Attempt, kube: Kube, timeout: float = 90) -> int:
    found = kube.wait_for(lambda: re.search(r"resumed from step (\d+)", attempt.log_path.read_text()), timeout,
                          f"attempt {attempt.name} to resume")
    return int(found.group(1))


def step_of(checkpoint_uri: str) -> int:
    return int(re.search(r"checkpoint_(\d+)_", checkpoint_uri).group(1))  # type: ignore[union-attr]


def test_a_preempted_then_killed_job_resumes_each_time_and_succeeds(
        kube: Kube, cluster: KubeRayStandIn, bucket: str, moto_endpoint: str) -> None:
    SEEN.clear()
    kube.create(digits_job("flaky", bucket, moto_endpoint, pause_s=0.03, epochs=2))
    first = cluster.attempt("default", "flaky-a1")
    wait_status(kube, "flaky", "a first checkpoint", lambda s: s.get("latestCheckpoint"))
    # A preemption: Kubernetes marks the pod (the operator's evidence), the trainer gets SIGTERM,
    # checkpoints and exits 75 (a SIGTERM alone would count as a failure: see test_reconcile_preemption).
    kube.patch_status("v1", "pods", "default", f"{first.cluster}-head", {"conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]})
    os.killpg(first.process.pid, signal.SIGTERM)
    st = wait_status(kube, "flaky", "attempt 2", lambda s: s.get("attempt") == 2)
    assert first.process.wait(30) == 75
    assert (st["preemptions"], st["restarts"]) == (1, 0) and st["outcome"]["result"] == "preempted"

    second = cluster.attempt("default", "flaky-a2")
    assert resumed_step(second, kube) == step_of(st["latestCheckpoint"])  # the emergency checkpoint: 0 lost
    seen = st.get("latestCheckpoint")
    before_kill = wait_status(kube, "flaky", "a newer checkpoint",
                              lambda s: s.get("latestCheckpoint") not in (None, seen))["latestCheckpoint"]
    os.killpg(second.process.pid, signal.SIGKILL)  # a crash: no checkpoint, no outcome
    st = wait_status(kube, "flaky", "attempt 3", lambda s: s.get("attempt") == 3)
    assert (st["preemptions"], st["restarts"]) == (1, 1)

    third = cluster.attempt("default", "flaky-a3")
    assert resumed_step(third, kube) >= step_of(before_kill) > step_of(seen)  # not from 0, nor an older one
    assert events(kube, "flaky").count("Restarting") == 2  # Running → Restarting → Running, twice
    st = wait_status(kube, "flaky", "Succeeded", lambda s: s.get("phase") in ("Succeeded", "Failed"), 180)
    assert st["phase"] == "Succeeded", (st, third.log_path.read_text()[-3000:])
    assert st["progress"]["step"] == 40 and (st["attempt"], st["restarts"], st["preemptions"]) == (3, 1, 1)
    # A digits job that succeeded: progress, metrics and checkpoint URIs in its status.
    progress = st["progress"]
    assert progress["epoch"] == 2 and progress["step"] == progress["totalSteps"] == 40
    assert progress["metrics"]["val_accuracy"] > 0.5
    # The rates, percent and ETA as the real trainer wrote them: along the way, and at the end.
    assert (progress["percent"], progress["eta"], progress["etaSeconds"]) == (100.0, "0s", 0)
    assert any(p["samplesPerSecond"] > 0 for p in SEEN if "samplesPerSecond" in p)
    underway = [p for p in SEEN if 0 < p.get("percent", 0) < 100 and p.get("etaSeconds")]
    assert underway, SEEN[-5:]
    assert all(p["percent"] == round(100 * p["step"] / 40, 1) and p["eta"] for p in underway)
    assert st["latestCheckpoint"].startswith(f"s3://{bucket}/runs/flaky/checkpoint_")
    assert st["bestCheckpoint"]["metric"] == "val_accuracy" and st["bestCheckpoint"]["uri"].startswith("s3://")
    assert st["outcome"] == {**st["outcome"], "attempt": 3, "result": "succeeded"}
    # Its metrics.jsonl on S3: three attempts (one preempted, one killed), one step axis, every step once.
    target = resolve_storage(f"s3://{bucket}/runs", moto_endpoint)
    log = read_metrics(target.filesystem, target.run_path("flaky"))
    assert [r["step"] for r in log.steps if "loss" in r and not r.get("done")] == list(range(5, 41, 5))
    assert len(log.resumes) == 2


def test_a_sweep_runs_in_one_attempt_and_reports_its_trials(
        kube: Kube, cluster: KubeRayStandIn, bucket: str, moto_endpoint: str, tmp_path: Path) -> None:
    doc = digits_job("sweep", bucket, moto_endpoint, epochs=1)
    # Two trials at once on S3: before trials waited for Tune to take their last report (see
    # sweep/trial.py), a trial's end raced Ray's report hand-off and hung here in ~2 runs of 3.
    doc["spec"]["checkpoint"] = {"storage": f"s3://{bucket}/runs", "endpoint": moto_endpoint, "everySteps": 5,
                                 "keep": 3}
    doc["spec"]["tune"] = {"metric": "val_accuracy", "mode": "max", "numSamples": 1, "maxConcurrent": 2,
                           "space": {"optimizer.lr": {"choice": [1e-3, 3e-3]}}, "search": {"type": "grid"}}
    kube.create(doc)
    try:
        st = wait_status(kube, "sweep", "finished", lambda s: s.get("phase") in ("Succeeded", "Failed"), 300)
    except AssertionError as err:  # say where it stood, and what the attempt printed
        err.add_note(json.dumps(status(kube, "sweep").get("tune")))
        err.add_note(cluster.attempts[("default", "sweep-a1")].log_path.read_text()[-4000:])
        raise
    attempt = cluster.attempts[("default", "sweep-a1")]
    assert st["phase"] == "Succeeded", (st, attempt.log_path.read_text()[-3000:])
    tune = st["tune"]
    assert tune["trials"] == {"TERMINATED": 2} and tune["best"]["metric"] == "val_accuracy"
    assert tune["best"]["config"]["optimizer.lr"] in (1e-3, 3e-3) and tune["best"]["value"] > 0.5
    outcome = load_outcome(resolve_storage(f"s3://{bucket}/runs", moto_endpoint), "sweep")
    tried = {t["config"]["optimizer.lr"] for t in outcome["trials"]}  # type: ignore[index]
    assert tried == {1e-3, 3e-3}  # a grid tries every value once
    assert tune["best"]["checkpoint"].startswith(f"s3://{bucket}/runs/sweep/trials/")
    assert len(cluster.attempts) == 1 and st["attempt"] == 1
