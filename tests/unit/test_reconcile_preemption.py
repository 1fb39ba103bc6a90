"""Preemption or failure, as the operator decides it: a pod marked for disruption or deleted makes an
attempt's end a (free) preemption; the trainer's "preempted" alone does not (its pod runs user code
with a token that can write the job's status)."""

from __future__ import annotations

import copy
from datetime import timedelta

from trainforge_operator.observed import Observed
from trainforge_operator.reconcile import reconcile

from tests.unit.test_reconcile import SETTINGS, T0, applied, pod, rayjob, reasons, running, step


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


def test_counters_and_the_clock_written_outside_the_operator_are_put_back() -> None:
    """The trainer's token can write the status subresource: restarts reset for free restarts, a later
    startTime for more time. The operator holds the status to what it last wrote."""
    first, doc, _ = running()
    failed = reconcile(Observed(doc, rayjob(first, "FAILED", "Failed"), T0 + timedelta(seconds=60), (pod(),)),
                       SETTINGS)
    doc = applied(doc, failed)
    assert (doc["status"]["attempt"], doc["status"]["restarts"]) == (2, 1) and failed.ledger is not None
    honest = copy.deepcopy(doc)
    doc["status"].update(restarts=0, startTime="2030-01-01T00:00:00Z")  # the trainer's write
    after = reconcile(Observed(doc, None, T0 + timedelta(seconds=61)), SETTINGS, failed.ledger)
    assert after.status["restarts"] == 1 and after.status["startTime"] == honest["status"]["startTime"]
    assert "StatusRestored" in reasons(after)
    # Another incarnation's ledger (a re-created job) and no ledger (after an operator restart): as read.
    for ledger in (type(failed.ledger)("another-uid", failed.ledger.values), None):
        assert "restarts" not in reconcile(Observed(doc, None, T0 + timedelta(seconds=61)), SETTINGS, ledger).status
