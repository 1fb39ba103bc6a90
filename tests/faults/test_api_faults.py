"""Faults of the Kubernetes API, for the operator (real kopf) and the trainer's status writer: an API
server that accepts and never answers, an operator restarted in the middle of an attempt transition,
stale writers, and fifty jobs at once. KubeRay's part (RayJob status) is written by the test, as in
tests/integration/test_operator.py; no attempt trains here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from trainforge_trainer.kube_status import JobRef, StatusWriter

from tests.faults.operator_setup import record
from tests.integration.test_operator import (
    MODULE,
    RAY,
    TJ,
    events,
    job_doc,
    rayjob,
    running_attempt,
    set_rayjob,
    status,
    wait_phase,
)
from tests.support.kube import Kube, run_operator
from tests.support.netfault import FlakyProxy, flaky_proxy

pytestmark = pytest.mark.usefixtures("rbac_checked")
HANG_S = 30.0


@pytest.fixture(autouse=True)
def fast_operator(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TRAINFORGE_DEFAULT_STORAGE", "s3://ckpt/runs")
    monkeypatch.setenv("TRAINFORGE_RESYNC_S", "2")
    yield


@pytest.fixture
def hung_api(kube: Kube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyProxy]:
    """Every client built from $KUBECONFIG (kopf, the operator's and the trainer's) goes through a
    proxy the test can hang; the test's own calls go straight to the emulator."""
    import kubernetes

    with flaky_proxy(int(kube.url.rsplit(":", 1)[1])) as proxy:
        config = yaml.safe_load(kube.kubeconfig.read_text())
        config["clusters"][0]["cluster"]["server"] = proxy.url
        path = tmp_path / "kubeconfig-proxied"
        path.write_text(yaml.safe_dump(config))
        monkeypatch.setenv("KUBECONFIG", str(path))
        for target in (kubernetes.config, kubernetes.config.kube_config):
            monkeypatch.setattr(target, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
        yield proxy


def running_job(kube: Kube, name: str = "digits", attempt: int = 1) -> dict[str, Any]:
    doc = kube.create(job_doc(name))
    kube.patch_status(TJ, "trainingjobs", "default", name, {"attempt": attempt, "phase": "Running"})
    return doc


def test_the_trainer_is_never_held_up_by_a_hung_api_server(kube: Kube, hung_api: FlakyProxy) -> None:
    uid = running_job(kube)["metadata"]["uid"]
    writer = StatusWriter(JobRef("default", "digits", 1, uid))
    writer.patch({"progress": {"step": 1}})
    assert writer.flush(10)
    hung_api.hang_for(HANG_S)
    started = time.monotonic()
    for step in range(2, 50):  # what the report handler does while the API server hangs
        assert writer.patch({"progress": {"step": step}})
    blocked = time.monotonic() - started
    assert blocked < 0.5  # queued, not sent: training goes on
    kube.wait_for(lambda: time.monotonic() - started > HANG_S, HANG_S + 5, "the hang to end")
    assert writer.flush(40), "the queued write never went through"
    recovered = time.monotonic() - started - HANG_S
    assert status(kube)["progress"]["step"] == 49  # the newest value, nothing lost
    record("API server hangs 30 s (trainer)", outcome="training never blocked; status caught up",
           blocked_s=blocked, seconds_to_recover=recovered)


def test_a_stale_attempt_or_an_old_incarnation_cannot_write_the_status(kube: Kube) -> None:
    uid = running_job(kube, attempt=2)["metadata"]["uid"]
    stale = StatusWriter(JobRef("default", "digits", 1, uid))
    assert not stale.send({"progress": {"step": 99}}) and stale.fenced
    old = StatusWriter(JobRef("default", "digits", 2, "uid-of-a-deleted-incarnation"))
    assert not old.send({"outcome": {"attempt": 2, "result": "succeeded"}}) and old.fenced
    current = StatusWriter(JobRef("default", "digits", 2, uid))
    assert current.send({"progress": {"step": 3}}) and not current.fenced
    st = status(kube)
    assert st["progress"] == {"step": 3} and "outcome" not in st


def test_the_operator_recovers_from_a_hung_api_server(kube: Kube, hung_api: FlakyProxy) -> None:
    with run_operator(kube, module=MODULE, check=False):
        kube.create(job_doc())
        running_attempt(kube, 1)
        hung_api.hang_for(HANG_S)
        started = time.monotonic()
        set_rayjob(kube, 1, "SUCCEEDED", "Complete")  # KubeRay's write goes straight to the emulator
        st = kube.wait_for(lambda: (s := status(kube)).get("phase") == "Succeeded" and s, HANG_S + 60,
                           "the job to succeed once the API server answers again")
        took = time.monotonic() - started
    assert st["attempt"] == 1 and st["restarts"] == 0 and kube.exists(RAY, "rayjobs", "default", "digits-a1")
    record("API server hangs 30 s (operator)", outcome="reconcile timed out and retried; job Succeeded",
           seconds_to_recover=took - HANG_S)


def test_an_operator_restarted_during_an_attempt_transition_starts_that_attempt_once(
        kube: Kube, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.client.exceptions import ApiException

    with run_operator(kube, module=MODULE):
        kube.create(job_doc())
        running_attempt(kube, 1)
    from trainforge_operator import kube as operator_kube

    build, refused = operator_kube.Kube.__init__, []

    def dies_before_create(self: Any, *args: Any, **kwargs: Any) -> None:
        """The operator's client: it writes attempt 2 into the status, then goes before creating it."""
        build(self, *args, **kwargs)

        def refuse(*a: Any, **k: Any) -> Any:
            refused.append(a)
            raise ApiException(status=503, reason="the operator pod is being deleted")

        self.custom.create_namespaced_custom_object = refuse

    monkeypatch.setattr(operator_kube.Kube, "__init__", dies_before_create)
    with run_operator(kube, module=MODULE, check=False):
        set_rayjob(kube, 1, "FAILED", "Failed", message="worker OOM")
        kube.wait_for(lambda: status(kube).get("attempt") == 2 and refused, 15, "attempt 2 decided, not created")
    assert not kube.exists(RAY, "rayjobs", "default", "digits-a2")
    monkeypatch.setattr(operator_kube.Kube, "__init__", build)  # the restarted operator's client works
    started = time.monotonic()
    with run_operator(kube, module=MODULE):
        rayjob(kube, 2)
        took = time.monotonic() - started
        running_attempt(kube, 2)
    st = status(kube)
    names = sorted(r["metadata"]["name"] for r in kube.list(RAY, "rayjobs", "default"))
    assert names == ["digits-a1", "digits-a2"] and st["restarts"] == 1 and st["attempt"] == 2
    assert events(kube).count("AttemptFailed") == 1
    record("operator restart during an attempt transition", outcome="attempt 2 created once, after the restart",
           duplicate_attempts=0, seconds_to_recover=took)


@pytest.mark.slow  # ~4-7 min: bound by the emulated API server (~50 ms a list, ~45 ms a status write) on 2 cores
def test_fifty_jobs_submitted_at_once_each_get_exactly_one_attempt(kube: Kube, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINFORGE_RESYNC_S", "10")  # the default order: events, not polling, drive 50 jobs
    names = [f"burst-{i:02d}" for i in range(50)]
    with run_operator(kube, module=MODULE, timeout=60):
        started = time.monotonic()
        for name in names:
            kube.create(job_doc(name))
        kube.wait_for(lambda: len(kube.list(RAY, "rayjobs", "default")) >= 50, 120, "50 RayJobs")
        created = time.monotonic() - started
        for name in names:  # KubeRay's part: every attempt runs, then completes
            kube.wait_for(lambda name=name: kube.patch_status(RAY, "rayjobs", "default", f"{name}-a1", {
                "jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}), 60, f"{name}-a1 marked complete")
        for name in names:
            wait_phase(kube, "Succeeded", name, timeout=120)
        took = time.monotonic() - started
    rayjobs = sorted(r["metadata"]["name"] for r in kube.list(RAY, "rayjobs", "default"))
    assert rayjobs == sorted(f"{n}-a1" for n in names)  # one attempt each, no duplicate
    assert all(status(kube, n)["attempt"] == 1 and status(kube, n)["restarts"] == 0 for n in names)
    record("50 jobs submitted at once", outcome="50 RayJobs, all Succeeded", seconds_to_all_created=created,
           seconds_to_all_succeeded=took)
