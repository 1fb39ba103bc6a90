"""The real operator (kopf) against the emulated API server: RayJobs, status, events, restarts of the
operator itself, head loss, suspend, TTL, malformed jobs. RayJob status is written by the test here
(KubeRay's part); tests/integration/test_operator_e2e.py runs attempts for real."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest

from tests.support.kube import Kube, KubeApiError, run_operator
from tests.unit.manifests import MALFORMED, manifest

MODULE = "trainforge_operator.handlers"
# The chart's RBAC allows every call the operator makes here.
pytestmark = pytest.mark.usefixtures("rbac_checked")
TJ, RAY = "trainforge.dev/v1alpha1", "ray.io/v1"


@pytest.fixture(autouse=True)
def fast_operator(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TRAINFORGE_DEFAULT_STORAGE", "s3://ckpt/runs")
    monkeypatch.setenv("TRAINFORGE_RESYNC_S", "2")
    monkeypatch.setenv("TRAINFORGE_HEAD_LOST_GRACE_S", "1")
    monkeypatch.setenv("TRAINFORGE_SUSPEND_GRACE_S", "1")
    yield


def job_doc(name: str = "digits", **spec: Any) -> dict[str, Any]:
    doc = manifest(**spec)
    doc["metadata"] = {"name": name, "namespace": "default"}
    return doc


def status(kube: Kube, name: str = "digits") -> dict[str, Any]:
    return kube.get(TJ, "trainingjobs", "default", name).get("status") or {}


def wait_phase(kube: Kube, phase: str, name: str = "digits", timeout: float = 15) -> dict[str, Any]:
    return kube.wait_for(lambda: (s := status(kube, name)).get("phase") == phase and s, timeout,
                         f"{name} to reach {phase} (now {status(kube, name).get('phase')})")


def rayjob(kube: Kube, attempt: int, name: str = "digits", timeout: float = 15) -> dict[str, Any]:
    return kube.wait_for(lambda: kube.exists(RAY, "rayjobs", "default", f"{name}-a{attempt}")
                         and kube.get(RAY, "rayjobs", "default", f"{name}-a{attempt}"), timeout,
                         f"RayJob {name}-a{attempt}")


def set_rayjob(kube: Kube, attempt: int, job_status: str, deployment: str, **extra: Any) -> None:
    kube.patch_status(RAY, "rayjobs", "default", f"digits-a{attempt}",
                      {"jobStatus": job_status, "jobDeploymentStatus": deployment,
                       "rayClusterName": f"digits-a{attempt}-raycluster", **extra})


def head_pod(kube: Kube, attempt: int) -> None:
    """KubeRay's head pod of the attempt, owned by its RayJob (through the RayCluster in KubeRay): the
    garbage collector removes it with the RayJob, which the next attempt waits for."""
    rj = kube.get(RAY, "rayjobs", "default", f"digits-a{attempt}")["metadata"]
    owner = {"apiVersion": RAY, "kind": "RayJob", "name": rj["name"], "uid": rj["uid"], "controller": True}
    kube.create({"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": f"digits-a{attempt}-head", "namespace": "default", "ownerReferences": [owner],
                              "labels": {"trainforge.dev/job": "digits", "trainforge.dev/attempt": str(attempt),
                                         "ray.io/node-type": "head"}},
                 "spec": {"containers": [{"name": "ray-head", "image": "x"}]}, "status": {"phase": "Running"}})


def running_attempt(kube: Kube, attempt: int) -> None:
    """KubeRay's part for one attempt: its head pod is up and its RayJob runs."""
    rayjob(kube, attempt)
    head_pod(kube, attempt)
    set_rayjob(kube, attempt, "RUNNING", "Running")
    wait_phase(kube, "Running")


def events(kube: Kube, name: str = "digits") -> list[str]:
    items = kube.list("v1", "events", "default")
    return [e["reason"] for e in items if e.get("involvedObject", {}).get("name") == name]


def rayjobs(kube: Kube) -> list[str]:
    return sorted(r["metadata"]["name"] for r in kube.list(RAY, "rayjobs", "default"))


def test_a_job_becomes_a_rayjob_then_runs_and_succeeds(kube: Kube) -> None:
    with run_operator(kube, module=MODULE) as run:
        # The registry lives as long as the test process: count from here (other tests ran operators too).
        attempts_before = run.module.metrics.REGISTRY.get_sample_value("trainforge_attempts_total") or 0.0
        registry = run.module.metrics.REGISTRY
        succeeded_before = registry.get_sample_value("trainforge_jobs", {"phase": "Succeeded"}) or 0.0
        created = kube.create(job_doc(workers=2, gpusPerWorker=0))
        rj = rayjob(kube, 1)
        owner = rj["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("TrainingJob", created["metadata"]["uid"], True)
        assert rj["spec"]["entrypoint"] == "python -m trainforge_trainer.run" and rj["spec"]["backoffLimit"] == 0
        assert rj["spec"]["shutdownAfterJobFinishes"] is True
        assert rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2
        head_env = {e["name"]: e.get("value") for e in
                    rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
        # The job's Ray cluster is fenced before its first attempt: a token Secret and a NetworkPolicy, the job's.
        assert rj["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token", "secretName": "digits-ray-auth"}
        for api, plural, name in (("v1", "secrets", "digits-ray-auth"),
                                  ("networking.k8s.io/v1", "networkpolicies", "digits-ray")):
            owners = kube.get(api, plural, "default", name)["metadata"]["ownerReferences"]
            assert [o["uid"] for o in owners] == [created["metadata"]["uid"]], (plural, owners)
        payload = json.loads(head_env["TRAINFORGE_JOB"])
        assert (payload["storage"], payload["attempt"], payload["runName"]) == ("s3://ckpt/runs/default", 1, "digits")
        st = status(kube)
        assert st["phase"] == "Created" and st["attempt"] == 1 and st["observedGeneration"] == 1
        assert {c["type"] for c in st["conditions"]} >= {"Created", "Running", "Succeeded", "Failed"}
        head_pod(kube, 1)
        set_rayjob(kube, 1, "RUNNING", "Running")
        wait_phase(kube, "Running")
        set_rayjob(kube, 1, "SUCCEEDED", "Complete")
        st = wait_phase(kube, "Succeeded")
        assert st["completionTime"] and st["restarts"] == 0
        kube.wait_for(lambda: {"Created", "AttemptCreated", "Running", "Succeeded"} <= set(events(kube)), 5, "events")
        metrics = generate_latest(run.module.metrics.REGISTRY).decode()
        assert run.module.metrics.REGISTRY.get_sample_value("trainforge_attempts_total") == attempts_before + 1
        assert registry.get_sample_value("trainforge_jobs", {"phase": "Succeeded"}) == succeeded_before + 1
        assert "trainforge_reconcile_seconds_count" in metrics


def test_a_token_secret_planted_under_the_jobs_name_is_never_used(kube: Kube) -> None:
    """Whoever made it knows the token: the job fails naming the Secret instead of running behind it."""
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "digits-ray-auth", "namespace": "default"},
                 "data": {"auth_token": "a25vd24="}})
    with run_operator(kube, module=MODULE, check=False):  # the refusal is logged as an error
        kube.create(job_doc())
        st = wait_phase(kube, "Failed")
        assert "Secret digits-ray-auth exists and is not this job's" in st["message"], st
        assert not kube.exists(RAY, "rayjobs", "default", "digits-a1")


def test_an_operator_restart_mid_job_creates_no_duplicate_and_loses_no_state(kube: Kube) -> None:
    with run_operator(kube, module=MODULE):
        kube.create(job_doc())
        running_attempt(kube, 1)
    set_rayjob(kube, 1, "FAILED", "Failed", message="worker OOM")  # happens while no operator runs
    with run_operator(kube, module=MODULE):
        st = kube.wait_for(lambda: (s := status(kube)).get("attempt") == 2 and s, 15, "attempt 2")
        running_attempt(kube, 2)
    with run_operator(kube, module=MODULE):  # and once more, with nothing new to do
        kube.wait_for(lambda: events(kube).count("Running") >= 2, 5, "events")
    st = status(kube)
    assert rayjobs(kube) == ["digits-a1", "digits-a2"] and st["restarts"] == 1 and st["attempt"] == 2
    assert events(kube).count("AttemptCreated") == 2
    failed = [e["message"] for e in kube.list("v1", "events", "default") if e["reason"] == "AttemptFailed"]
    assert len(failed) == 1 and "worker OOM" in failed[0]


def test_a_lost_head_starts_the_next_attempt(kube: Kube) -> None:
    with run_operator(kube, module=MODULE):
        kube.create(job_doc())
        rayjob(kube, 1)
        set_rayjob(kube, 1, "RUNNING", "Running")  # no head pod: its node is gone, KubeRay does not notice
        st = kube.wait_for(lambda: (s := status(kube)).get("attempt") == 2 and s, 15, "attempt 2")
        assert st["restarts"] == 1 and "head pod" in st["message"] and st["phase"] == "Restarting"
        kube.wait_for(lambda: rayjobs(kube) == ["digits-a2"], 5, "the stuck RayJob deleted")


def metric(run: Any, name: str) -> float:
    # The registry lives as long as the test process: tests compare with a value read before.
    return run.module.metrics.REGISTRY.get_sample_value(name) or 0.0


def test_a_pod_disrupted_while_running_makes_the_failure_a_preemption(kube: Kube) -> None:
    with run_operator(kube, module=MODULE) as run:
        preemptions = metric(run, "trainforge_preemptions_total")
        kube.create(job_doc())
        running_attempt(kube, 1)
        kube.create({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": "digits-a1-worker", "namespace": "default",
                                  "labels": {"trainforge.dev/job": "digits", "trainforge.dev/attempt": "1",
                                             "ray.io/node-type": "worker"}},
                     "spec": {"containers": [{"name": "ray-worker", "image": "x"}]}})
        kube.patch_status("v1", "pods", "default", "digits-a1-worker", {"phase": "Running", "conditions": [
            {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]})
        # Kept in the status (the CRD must not prune it): the pod is gone by the time the attempt fails.
        kube.wait_for(lambda: status(kube).get("disruptedAttempt") == 1, 10, "the disruption recorded")
        kube.delete("v1", "pods", "default", "digits-a1-worker")
        kube.wait_for(lambda: not kube.exists("v1", "pods", "default", "digits-a1-worker"), 5, "the pod gone")
        set_rayjob(kube, 1, "FAILED", "Failed", message="worker lost")
        st = kube.wait_for(lambda: (s := status(kube)).get("attempt") == 2 and s, 15, "attempt 2")
        assert st["preemptions"] == 1 and st["restarts"] == 0 and "disruptedAttempt" not in st
        kube.wait_for(lambda: "Preempted" in events(kube), 5, "the Preempted event")
        assert metric(run, "trainforge_preemptions_total") == preemptions + 1


def test_the_events_of_an_attempt_survive_a_failed_rayjob_create(kube: Kube, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.client.exceptions import ApiException

    with run_operator(kube, module=MODULE, check=False) as run:
        monkeypatch.setattr(run.module, "ERROR_RETRY_S", 0.2)
        errors, attempts = metric(run, "trainforge_reconcile_errors_total"), metric(run, "trainforge_attempts_total")
        refused: list[Any] = []
        build = run.module.Kube.__init__

        def flaky_kube(self: Any, *args: Any, **kwargs: Any) -> None:
            """The operator's API client (built at its first pass), refusing the first RayJob create."""
            build(self, *args, **kwargs)
            create = self.custom.create_namespaced_custom_object

            def flaky_create(*args: Any, **kwargs: Any) -> Any:
                if not refused:  # after the status patch that recorded attempt 1 went through
                    refused.append(args)
                    raise ApiException(status=503, reason="Service Unavailable")
                return create(*args, **kwargs)

            self.custom.create_namespaced_custom_object = flaky_create

        monkeypatch.setattr(run.module.Kube, "__init__", flaky_kube)
        kube.create(job_doc())
        rayjob(kube, 1)
        kube.wait_for(lambda: {"Created", "AttemptCreated"} <= set(events(kube)), 5, "the first pass's events")
        assert events(kube).count("AttemptCreated") == 1 and refused
        assert metric(run, "trainforge_attempts_total") == attempts + 1
        assert metric(run, "trainforge_reconcile_errors_total") >= errors + 1
    assert run.runner.exit_code == 0
    errors_logged = [line for line in run.errors if "[ERROR" in line]
    assert errors_logged and all("reconcile of default/digits failed" in line for line in errors_logged), run.errors


def test_an_outcome_written_while_the_operator_reads_is_not_missed(kube: Kube, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainforge_operator.kube import Kube as OperatorKube
    from trainforge_operator.reconcile import reconcile
    from trainforge_operator.settings import OperatorSettings

    with run_operator(kube, module=MODULE):
        kube.create(job_doc())
        running_attempt(kube, 1)
    operator_kube, settings = OperatorKube(), OperatorSettings.from_env()
    api = operator_kube.custom.api_client
    call_api, calls = api.call_api, []

    def trainer_preempted_meanwhile(*args: Any, **kwargs: Any) -> Any:
        result = call_api(*args, **kwargs)
        if not calls:  # right after the operator's first read: the pod is evicted, the trainer reports and
            # exits, the RayJob fails
            kube.patch_status("v1", "pods", "default", "digits-a1-head", {"conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]})
            kube.patch_status(TJ, "trainingjobs", "default", "digits",
                              {"outcome": {"attempt": 1, "result": "preempted", "message": "SIGTERM at step 40"}})
            set_rayjob(kube, 1, "FAILED", "Failed")
        calls.append(args)
        return result

    monkeypatch.setattr(api, "call_api", trainer_preempted_meanwhile)
    first = reconcile(operator_kube.observe("default", "digits"), settings)
    assert "restarts" not in first.status  # it saw the RayJob running, or ended with the outcome: no failure
    operator_kube.apply(operator_kube.observe("default", "digits"), first)
    later = reconcile(operator_kube.observe("default", "digits"), settings)
    assert later.status.get("preemptions") == 1 and "restarts" not in later.status


def test_suspend_then_resume(kube: Kube) -> None:
    with run_operator(kube, module=MODULE):
        kube.create(job_doc())
        running_attempt(kube, 1)
        kube.patch(TJ, "trainingjobs", "default", "digits", {"spec": {"suspend": True}})
        st = wait_phase(kube, "Suspended")  # the trainer did not stop within the grace: deleted
        assert st["preemptions"] == 0
        kube.wait_for(lambda: rayjobs(kube) == [], 5, "the RayJob deleted (after the status is written)")
        kube.patch(TJ, "trainingjobs", "default", "digits", {"spec": {"suspend": False}})
        rayjob(kube, 2)
        st = wait_phase(kube, "Restarting")
        assert st["reason"] == "Resumed" and st["restarts"] == 0


def test_ttl_after_finished_deletes_the_job_and_its_rayjobs(kube: Kube) -> None:
    with run_operator(kube, module=MODULE):
        kube.create(job_doc(ttlSecondsAfterFinished=1))
        rayjob(kube, 1)
        set_rayjob(kube, 1, "SUCCEEDED", "Complete")
        kube.wait_for(lambda: not kube.exists(TJ, "trainingjobs", "default", "digits"), 15, "the job deleted")
        kube.wait_for(lambda: rayjobs(kube) == [], 5, "its RayJobs garbage-collected")


def test_malformed_jobs_are_refused_by_the_schema_or_fail_naming_the_field(kube: Kube) -> None:
    bad = [b for b in MALFORMED if b.path.startswith("spec")]
    refused_by_schema, pruned, failed = 0, [], []
    with run_operator(kube, module=MODULE):
        for i, case in enumerate(bad):
            doc = copy.deepcopy(case.doc)
            doc["metadata"] = {"name": f"bad-{i}", "namespace": "default"}
            try:
                stored = kube.create(doc)
            except KubeApiError as err:
                assert err.status == 422 and case.schema_catches, (case.id, err)
                assert case.path.removeprefix("spec.").split(".")[0] in json.dumps(err.body), (case.id, err.body)
                refused_by_schema += 1
                continue
            if stored["spec"] != doc["spec"]:
                # An unknown field: the API server prunes it (kubectl's default strict field validation
                # refuses it before that); the job that remains is valid.
                pruned.append(case.id)
                continue
            failed.append((f"bad-{i}", case))
        for name, case in failed:
            st = wait_phase(kube, "Failed", name)
            assert st["reason"] == "InvalidSpec" and case.path in st["message"], (case.id, st["message"])
            assert not kube.exists(RAY, "rayjobs", "default", f"{name}-a1")
    assert refused_by_schema >= 10 and len(failed) >= 15, (refused_by_schema, len(failed), pruned)


def test_the_operator_command_serves_health_and_metrics_and_reconciles(kube: Kube, tmp_path: Any) -> None:
    import socket
    import subprocess
    import sys
    import urllib.request

    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    log = (tmp_path / "operator.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "trainforge_operator", "-n", "default", "--standalone",
                             "--health-port", str(ports[0]), "--metrics-port", str(ports[1])],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        kube.create(job_doc())
        rayjob(kube, 1, timeout=30)

        def get(port: int, path: str) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                return resp.read().decode()

        kube.wait_for(lambda: get(ports[0], "/healthz"), 10, "/healthz")
        # The counter moves just after the RayJob is created: wait for it rather than race it.
        kube.wait_for(lambda: "trainforge_attempts_total 1.0" in get(ports[1], "/metrics"), 10, "/metrics")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    lines = [json.loads(line) for line in (tmp_path / "operator.log").read_text().splitlines() if line.startswith("{")]
    assert any("AttemptCreated" in line.get("message", "") for line in lines)  # structured (JSON) logs
