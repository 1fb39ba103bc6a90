"""The operator's pure reconcile, table by table: plain dicts in, a Decision out, no I/O."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from trainforge.spec.contract import SPEC_ENV
from trainforge_operator.observed import Observed
from trainforge_operator.reconcile import Decision, reconcile, refused
from trainforge_operator.settings import OperatorSettings

from tests.unit.manifests import MALFORMED, manifest

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
SETTINGS = OperatorSettings(default_storage="s3://ckpt/runs", head_lost_grace_s=60, suspend_grace_s=120)


def job(status: dict[str, Any] | None = None, generation: int = 1, **spec: Any) -> dict[str, Any]:
    doc = manifest(**spec)
    doc["metadata"].update(namespace="team-a", uid="uid-1", generation=generation)
    if status is not None:
        doc["status"] = status
    return doc


def rayjob(decision_or_doc: Any, job_status: str = "", deployment: str = "", cluster: str | None = "c1",
           **extra: Any) -> dict[str, Any]:
    doc = copy.deepcopy(decision_or_doc.create if isinstance(decision_or_doc, Decision) else decision_or_doc)
    doc["status"] = {"jobStatus": job_status, "jobDeploymentStatus": deployment, **extra}
    if cluster:
        doc["status"]["rayClusterName"] = cluster
    return doc


def pod(head: bool = True, disrupted: bool = False, name: str = "c1-head") -> dict[str, Any]:
    labels = {"ray.io/cluster": "c1", "ray.io/node-type": "head" if head else "worker"}
    conditions = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}] \
        if disrupted else []
    return {"metadata": {"name": name, "labels": labels}, "status": {"phase": "Running", "conditions": conditions}}


def step(doc: dict[str, Any], rj: dict[str, Any] | None = None, pods: tuple = (), at: float = 0,
         settings: OperatorSettings = SETTINGS, earlier: tuple = ()) -> tuple[Decision, dict[str, Any]]:
    """One reconcile at T0 + `at` seconds; returns the decision and the job with its status applied."""
    decision = reconcile(Observed(doc, rj, T0 + timedelta(seconds=at), pods, earlier), settings)
    return decision, applied(doc, decision)


def applied(doc: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """The job with the decision's status merge patch applied, as the API server would."""
    after = copy.deepcopy(doc)
    status = after.setdefault("status", {})
    for key, value in decision.status.items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = value
    return after


def reasons(decision: Decision) -> list[str]:
    return [e.reason for e in decision.events]


def cond(doc: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in doc["status"]["conditions"] if c["type"] == type_)


def started() -> tuple[Decision, dict[str, Any]]:
    return step(job())


def running() -> tuple[Decision, dict[str, Any], dict[str, Any]]:
    first, doc = started()
    rj = rayjob(first, "RUNNING", "Running")
    _, doc = step(doc, rj, (pod(),), at=5)
    return first, doc, rj


# ---- first sight, idempotence, the happy path ---------------------------------------------------

def test_a_new_job_gets_conditions_and_its_first_attempt() -> None:
    decision, doc = started()
    status = doc["status"]
    assert status["phase"] == "Created" and status["attempt"] == 1 and status["restarts"] == 0
    assert {c["type"] for c in status["conditions"]} == {
        "Created", "Queued", "Running", "Restarting", "Suspended", "Succeeded", "Failed", "SpecChangeRejected"}
    assert cond(doc, "Created")["status"] == "True" and cond(doc, "Running")["status"] == "False"
    assert status["observedGeneration"] == 1 and status["startTime"] == "2026-11-22T12:00:00Z"
    assert decision.create is not None and decision.create["metadata"]["name"] == "digits-a1"
    assert reasons(decision) == ["Created", "AttemptCreated"]


def test_reconciling_again_with_nothing_new_changes_nothing() -> None:
    first, doc = started()
    again, _ = step(doc, rayjob(first), at=1)
    assert again.status == {} and again.create is None and again.events == [] and not again.delete


def test_running_then_succeeded() -> None:
    first, doc, rj = running()
    assert doc["status"]["phase"] == "Running" and cond(doc, "Running")["status"] == "True"
    created_at = cond(doc, "Created")["lastTransitionTime"]
    again, doc = step(doc, rj, (pod(),), at=30)
    assert again.status == {} and again.requeue_after == SETTINGS.resync_s
    done, doc = step(doc, rayjob(first, "SUCCEEDED", "Complete"), at=60)
    assert doc["status"]["phase"] == "Succeeded" and doc["status"]["completionTime"] == "2026-11-22T12:01:00Z"
    assert cond(doc, "Running")["status"] == "False" and cond(doc, "Succeeded")["status"] == "True"
    assert cond(doc, "Created")["lastTransitionTime"] == created_at  # only changed conditions move
    assert "Succeeded" in reasons(done)
    after, _ = step(doc, rayjob(first, "SUCCEEDED", "Complete"), at=90)
    assert after.status == {} and after.create is None


# ---- failures, preemptions, head loss -----------------------------------------------------------

def test_a_failed_attempt_starts_the_next_with_the_same_run() -> None:
    first, doc, _ = running()
    decision, doc = step(doc, rayjob(first, "FAILED", "Failed", message="OOM in worker 1"), at=60)
    assert doc["status"]["phase"] == "Restarting" and doc["status"]["attempt"] == 2
    assert doc["status"]["restarts"] == 1 and doc["status"]["preemptions"] == 0
    assert decision.create["metadata"]["name"] == "digits-a2"
    payloads = [json.loads(_env(d.create)[SPEC_ENV]) for d in (first, decision)]
    assert payloads[0]["runName"] == payloads[1]["runName"] and payloads[0]["storage"] == payloads[1]["storage"]
    assert "OOM in worker 1" in doc["status"]["message"] and "AttemptFailed" in reasons(decision)


def test_restarts_exhausted_fail_the_job_with_the_last_error() -> None:
    first, doc = step(job(restartPolicy={"maxRestarts": 0}))
    decision, doc = step(doc, rayjob(first, "FAILED", "Failed", reason="AppFailed", message="boom"), at=10)
    status = doc["status"]
    assert status["phase"] == "Failed" and status["reason"] == "RestartsExhausted"
    assert "boom" in status["message"] and "maxRestarts (0)" in status["message"]
    assert decision.create is None and cond(doc, "Failed")["status"] == "True"


def test_a_preempted_head_that_vanishes_is_a_preemption() -> None:
    _, doc, rj = running()
    _, doc = step(doc, rj, (pod(disrupted=True),), at=5)
    assert doc["status"]["disruptedAttempt"] == 1
    _, doc = step(doc, rj, (), at=10)
    lost, doc = step(doc, rj, (), at=71)
    assert lost.delete == ["digits-a1"] and lost.create["metadata"]["name"] == "digits-a2"
    assert doc["status"]["preemptions"] == 1 and doc["status"]["restarts"] == 0 and "Preempted" in reasons(lost)


def test_preemptions_count_when_the_policy_says_so() -> None:
    first, doc = step(job(restartPolicy={"maxRestarts": 0, "countPreemptions": True}))
    _, doc = step(doc, rayjob(first, "FAILED", "Failed"), (pod(disrupted=True),), at=60)
    assert doc["status"]["phase"] == "Failed" and doc["status"]["preemptions"] == 1


def test_a_lost_head_is_waited_for_then_replaced() -> None:
    _, doc, rj = running()
    wait, doc = step(doc, rj, (), at=10)
    assert doc["status"]["headMissingSince"] == "2026-11-22T12:00:10Z" and wait.requeue_after == 60
    assert wait.create is None and not wait.delete
    back, doc2 = step(doc, rj, (pod(),), at=20)  # the head came back within the grace period
    assert "headMissingSince" not in doc2["status"] and back.create is None
    still, doc = step(doc, rj, (), at=40)
    assert still.create is None and still.requeue_after == pytest.approx(30)
    lost, doc = step(doc, rj, (), at=71)
    assert lost.delete == ["digits-a1"] and lost.create["metadata"]["name"] == "digits-a2"
    assert doc["status"]["restarts"] == 1 and "gone for 61 s" in doc["status"]["message"]
    assert "headMissingSince" not in doc["status"]


def test_a_vanished_rayjob_of_a_running_attempt_is_a_failure() -> None:
    _, doc, _ = running()
    decision, doc = step(doc, None, at=30)
    assert doc["status"]["attempt"] == 2 and doc["status"]["restarts"] == 1
    assert "disappeared" in doc["status"]["message"] and decision.create is not None


def test_an_attempt_recorded_but_not_created_is_created_again_without_counting() -> None:
    first, doc, _ = running()
    _, doc = step(doc, rayjob(first, "FAILED", "Failed"), at=60)  # status says attempt 2 ...
    decision, after = step(doc, None, at=61)  # ... but the operator stopped before creating it
    assert decision.create["metadata"]["name"] == "digits-a2" and decision.status == {}
    assert after["status"]["restarts"] == 1


# ---- suspend, deadline, TTL, edits --------------------------------------------------------------

def test_suspend_asks_the_trainer_then_resume_starts_a_new_attempt() -> None:
    first, doc, rj = running()
    doc["spec"]["suspend"] = True
    asked, doc = step(doc, rj, (pod(),), at=30)
    assert doc["status"]["suspendRequested"] == "2026-11-22T12:00:30Z" and not asked.delete
    assert cond(doc, "Suspended")["status"] == "Unknown" and doc["status"]["phase"] == "Running"
    doc["status"]["outcome"] = {"attempt": 1, "result": "preempted"}  # the trainer checkpointed and left
    done, doc = step(doc, rayjob(first, "FAILED", "Failed"), at=45)
    assert doc["status"]["phase"] == "Suspended" and doc["status"]["preemptions"] == 0
    assert done.create is None and not done.delete and "suspendRequested" not in doc["status"]
    doc["spec"]["suspend"] = False
    resumed, doc = step(doc, rayjob(first, "FAILED", "Failed"), at=300)
    assert resumed.create["metadata"]["name"] == "digits-a2" and doc["status"]["phase"] == "Restarting"
    assert doc["status"]["restarts"] == 0 and doc["status"]["reason"] == "Resumed"
    assert doc["status"]["startTime"] == "2026-11-22T12:05:00Z"  # the deadline clock restarts


def test_suspend_deletes_the_attempt_when_the_trainer_does_not_stop_in_time() -> None:
    _, doc, rj = running()
    doc["spec"]["suspend"] = True
    _, doc = step(doc, rj, (pod(),), at=30)
    waiting, doc = step(doc, rj, (pod(),), at=100)
    assert not waiting.delete and doc["status"]["phase"] == "Running"
    gone, doc = step(doc, rj, (pod(),), at=151)
    assert gone.delete == ["digits-a1"] and doc["status"]["phase"] == "Suspended"
    again, doc = step(doc, rj, (pod(),), at=152)  # the status was written but the delete was interrupted
    assert again.delete == ["digits-a1"] and doc["status"]["phase"] == "Suspended"


def test_a_job_created_suspended_never_starts_until_resumed() -> None:
    decision, doc = step(job(suspend=True))
    assert doc["status"]["phase"] == "Suspended" and decision.create is None
    doc["spec"]["suspend"] = False
    resumed, doc = step(doc, None, at=5)
    assert resumed.create["metadata"]["name"] == "digits-a1" and doc["status"]["phase"] == "Restarting"


def test_the_deadline_fails_the_job_and_stops_its_attempt() -> None:
    first, doc = step(job(activeDeadlineSeconds=100))
    rj = rayjob(first, "RUNNING", "Running")
    ok, doc = step(doc, rj, (pod(),), at=50, settings=dataclasses.replace(SETTINGS, resync_s=600))
    assert ok.requeue_after == pytest.approx(50)  # woken for the deadline, not only at the next resync
    late, doc = step(doc, rj, (pod(),), at=101)
    assert doc["status"]["phase"] == "Failed" and doc["status"]["reason"] == "DeadlineExceeded"
    assert late.delete == ["digits-a1"] and "activeDeadlineSeconds (100 s)" in doc["status"]["message"]


def test_ttl_after_finished_deletes_the_job() -> None:
    first, doc = step(job(ttlSecondsAfterFinished=30))
    _, doc = step(doc, rayjob(first, "SUCCEEDED", "Complete"), at=10)
    early, doc = step(doc, rayjob(first, "SUCCEEDED", "Complete"), at=20)
    assert not early.delete_job and early.requeue_after == pytest.approx(20)
    due, _ = step(doc, rayjob(first, "SUCCEEDED", "Complete"), at=41)
    assert due.delete_job


def test_an_immutable_edit_is_not_applied_to_the_running_attempt_nor_its_restarts() -> None:
    first, doc, rj = running()
    doc["spec"]["workers"] = 8
    doc["metadata"]["generation"] = 2
    seen, doc = step(doc, rj, (pod(),), at=30)
    assert cond(doc, "SpecChangeRejected")["status"] == "True" and doc["status"]["observedGeneration"] == 2
    assert seen.create is None and not seen.delete
    restart, doc = step(doc, rayjob(first, "FAILED", "Failed"), at=60)
    workers = restart.create["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"]
    assert workers == 2  # built from the spec the running attempt had, not the edited one


def test_an_edit_that_breaks_the_spec_of_a_running_job_is_rejected_not_fatal() -> None:
    first, doc, rj = running()
    doc["spec"]["batch"] = {"size": 0}
    doc["metadata"]["generation"] = 2
    seen, doc = step(doc, rj, (pod(),), at=30)
    assert doc["status"]["phase"] == "Running" and seen.create is None and not seen.delete
    rejected = cond(doc, "SpecChangeRejected")
    assert rejected["status"] == "True" and rejected["reason"] == "InvalidEdit"
    assert "spec.batch.size" in rejected["message"] and "SpecChangeRejected" in reasons(seen)
    restart, doc = step(doc, rayjob(first, "FAILED", "Failed"), at=60)
    assert doc["status"]["phase"] == "Restarting"  # from the accepted spec
    spec_of = lambda rj: json.loads(_env(rj)["TRAINFORGE_JOB"])["spec"]  # noqa: E731
    assert spec_of(restart.create) == spec_of(first.create)


def test_a_mutable_edit_applies() -> None:
    first, doc, rj = running()
    doc["spec"]["restartPolicy"] = {"maxRestarts": 0}
    doc["metadata"]["generation"] = 2
    _, doc = step(doc, rj, (pod(),), at=30)
    assert cond(doc, "SpecChangeRejected")["status"] == "False"
    _, doc = step(doc, rayjob(first, "FAILED", "Failed"), at=60)
    assert doc["status"]["phase"] == "Failed" and doc["status"]["reason"] == "RestartsExhausted"


def test_an_immutable_edit_during_an_interrupted_restart_is_rejected() -> None:
    first, doc, _ = running()
    failed = rayjob(first, "FAILED", "Failed")
    _, doc = step(doc, failed, at=60)  # status says attempt 2; the operator stopped before creating it
    doc["spec"]["workers"] = 7
    doc["metadata"]["generation"] = 2
    decision, doc = step(doc, None, at=61, earlier=(failed,))
    assert decision.create["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2
    rejected = cond(doc, "SpecChangeRejected")
    assert rejected["status"] == "True" and "spec.workers" in rejected["message"]
    assert [e.type for e in decision.events if e.reason == "SpecChangeRejected"] == ["Warning"]
    again, doc = step(doc, rayjob(decision, "RUNNING", "Running"), (pod(),), at=70)
    assert "SpecChangeRejected" not in reasons(again)  # one event when the condition turns True


def test_an_interrupted_restart_with_no_rayjob_of_the_accepted_spec_waits_for_the_edit_to_go() -> None:
    first, doc, _ = running()
    original = copy.deepcopy(doc["spec"])
    _, doc = step(doc, rayjob(first, "FAILED", "Failed"), at=60)
    doc["spec"]["workers"] = 7
    held, doc = step(doc, None, at=61)  # attempt 1's RayJob is gone too (a lost head's is deleted)
    assert held.create is None and cond(doc, "SpecChangeRejected")["status"] == "True"
    assert "revert" in cond(doc, "SpecChangeRejected")["message"] and held.requeue_after == SETTINGS.resync_s
    doc["spec"] = original
    reverted, doc = step(doc, None, at=70)
    assert reverted.create["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2
    assert cond(doc, "SpecChangeRejected")["status"] == "False"


def test_a_rejected_edit_does_not_block_suspend_and_applies_on_resume() -> None:
    _, doc, rj = running()
    doc["spec"]["workers"] = 8
    _, doc = step(doc, rj, (pod(),), at=30)
    doc["spec"]["suspend"] = True  # what the rejection message advises
    _, doc = step(doc, rj, (pod(),), at=40)
    assert doc["status"]["suspendRequested"] == "2026-11-22T12:00:40Z"
    _, doc = step(doc, rj, (pod(),), at=161)
    assert doc["status"]["phase"] == "Suspended"
    doc["spec"]["suspend"] = False
    resumed, doc = step(doc, None, at=200)
    assert resumed.create["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 8
    assert cond(doc, "SpecChangeRejected")["status"] == "False"


def test_a_mutable_edit_applies_beside_a_rejected_one() -> None:
    first, doc, rj = running()
    doc["spec"].update(workers=8, restartPolicy={"maxRestarts": 0})
    _, doc = step(doc, rj, (pod(),), at=30)
    assert cond(doc, "SpecChangeRejected")["status"] == "True"
    _, doc = step(doc, rayjob(first, "FAILED", "Failed"), at=60)
    assert doc["status"]["phase"] == "Failed" and doc["status"]["reason"] == "RestartsExhausted"


def test_no_storage_anywhere_fails_naming_the_field() -> None:
    decision, doc = step(job(), settings=OperatorSettings())
    assert doc["status"]["phase"] == "Failed" and doc["status"]["reason"] == "NoStorage"
    assert "spec.checkpoint.storage" in doc["status"]["message"] and decision.create is None


@pytest.mark.parametrize("bad", [b for b in MALFORMED if b.path.startswith("spec")], ids=lambda b: b.id)
def test_a_malformed_job_that_reaches_the_operator_fails_naming_the_field(bad: Any) -> None:
    doc = copy.deepcopy(bad.doc)
    doc["metadata"] = {**doc["metadata"], "namespace": "team-a", "uid": "u", "generation": 1}
    decision, after = step(doc)
    assert after["status"]["phase"] == "Failed" and after["status"]["reason"] == "InvalidSpec"
    assert bad.path in after["status"]["message"] and decision.create is None


def _env(rj: dict[str, Any]) -> dict[str, str]:
    container = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_an_edit_made_while_suspended_applies_to_the_resumed_attempt() -> None:
    _, doc = step(job(suspend=True))
    doc["spec"].update(suspend=False, workers=3)
    doc["metadata"]["generation"] = 2
    resumed, doc = step(doc, None, at=5)
    assert resumed.create["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 3
    assert cond(doc, "SpecChangeRejected")["status"] == "False"


def test_a_rayjob_the_api_server_refuses_fails_the_job_with_its_words() -> None:
    _, doc = started()
    decision = refused(Observed(doc, None, T0), SETTINGS, "the API server refused RayJob digits-a1: "
                       "spec.rayClusterSpec.workerGroupSpecs[0].replicas: Invalid value")
    assert decision.status["phase"] == "Failed" and decision.status["reason"] == "RayJobRejected"
    assert "workerGroupSpecs[0].replicas" in decision.status["message"] and decision.create is None
