"""Preemption or failure, as the operator decides it: a pod marked for disruption or deleted makes an
attempt's end a (free) preemption; the trainer's "preempted" alone does not (its pod runs user code
with a token that can write the job's status)."""

from __future__ import annotations

import copy

from tests.unit.test_reconcile import pod, rayjob, reasons, running, step


def test_the_trainers_preempted_outcome_is_a_preemption_when_a_pod_of_it_was_deleted() -> None:
    first, doc, _ = running()
    doc["status"]["outcome"] = {"attempt": 1, "result": "preempted", "message": "TrainingPreempted: step 40"}
    claimed = copy.deepcopy(doc)
    deleted = pod() | {"metadata": pod()["metadata"] | {"deletionTimestamp": "2026-12-01T12:00:50Z"}}
    decision, doc = step(doc, rayjob(first, "FAILED", "Failed"), (deleted,), at=60)
    assert doc["status"]["preemptions"] == 1 and doc["status"]["restarts"] == 0 and doc["status"]["attempt"] == 2
    assert "Preempted" in reasons(decision) and doc["status"]["reason"] == "Preempted"
    # The trainer's word alone (user code on the head can write it): a failure, said in a Warning.
    decision, claimed = step(claimed, rayjob(first, "FAILED", "Failed"), (pod(),), at=60)
    assert claimed["status"]["preemptions"] == 0 and claimed["status"]["restarts"] == 1
    assert "PreemptionUnconfirmed" in reasons(decision)


def test_an_outcome_of_an_earlier_attempt_is_not_this_attempts() -> None:
    first, doc, _ = running()
    doc["status"]["outcome"] = {"attempt": 0, "result": "preempted"}
    _, doc = step(doc, rayjob(first, "FAILED", "Failed"), at=60)
    assert doc["status"]["preemptions"] == 0 and doc["status"]["restarts"] == 1


def test_a_disruption_target_pod_makes_it_a_preemption() -> None:
    first, doc, _ = running()
    _, doc = step(doc, rayjob(first, "FAILED", "Failed"), (pod(head=False, disrupted=True, name="w0"),), at=60)
    assert doc["status"]["preemptions"] == 1 and doc["status"]["restarts"] == 0


def test_a_disruption_seen_while_running_counts_when_the_pod_is_gone_at_the_end() -> None:
    first, doc, rj = running()
    seen, doc = step(doc, rj, (pod(), pod(head=False, disrupted=True, name="w0")), at=20)
    assert doc["status"]["disruptedAttempt"] == 1 and seen.create is None and not seen.delete
    ended, doc = step(doc, rayjob(first, "FAILED", "Failed"), (pod(),), at=60)  # the evicted worker is gone
    assert doc["status"]["preemptions"] == 1 and doc["status"]["restarts"] == 0 and doc["status"]["attempt"] == 2
    assert "Preempted" in reasons(ended) and "disruptedAttempt" not in doc["status"]
    second, doc = step(doc, rayjob(ended, "FAILED", "Failed"), (pod(),), at=90)  # attempt 2 was not disrupted
    assert doc["status"]["preemptions"] == 1 and doc["status"]["restarts"] == 1 and second.create is not None
