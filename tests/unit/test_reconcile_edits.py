"""The operator's edit guard beside the lifecycle: an invalid spec fails the job and stops what still runs."""

from __future__ import annotations

from tests.unit.test_reconcile import pod, running, step


def test_an_invalid_spec_of_a_suspended_job_stops_the_attempt_still_running() -> None:
    """Suspended (edits allowed) while its RayJob's deletion was interrupted: an edit that breaks the
    spec fails the job, and the attempt that still runs is deleted, never left behind."""
    _, doc, rj = running()
    doc["status"].update(phase="Suspended")
    doc["spec"]["workers"] = 0
    decision, after = step(doc, rj, (pod(),), at=30)
    assert after["status"]["phase"] == "Failed" and after["status"]["reason"] == "InvalidSpec"
    assert decision.delete == ["digits-a1"] and decision.create is None
