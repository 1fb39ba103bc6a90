"""The SDK's pure parts: rank filtering of driver logs, label selectors, the builder, local job state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from trainforge import Task, TrainingJob
from trainforge.client import InvalidJob, JobExists, JobNotFound, TrainforgeError, to_job
from trainforge.client.labels import matches
from trainforge.client.local_backend import LocalBackend
from trainforge.client.ranklog import rank_lines, worker_key
from trainforge.local.jobstate import JobDir
from trainforge.spec import SpecValidationError, load_jobs
from trainforge.spec.contract import merge_patch

from tests.unit.manifests import manifest


def test_rank_lines_follow_the_announcements_through_a_worker_restart() -> None:
    log = [
        "INFO driver line",
        "(RayTrainWorker pid=11, ip=10.0.0.1) trainforge worker rank=0 world_size=2 host=a pid=11",
        "\x1b[36m(RayTrainWorker pid=12, ip=10.0.0.2)\x1b[0m trainforge worker rank=1 world_size=2 host=b pid=12",
        "(RayTrainWorker pid=11, ip=10.0.0.1) loss 1.0",
        "(RayTrainWorker pid=12, ip=10.0.0.2) loss 1.1",
        "(RayTrainWorker pid=31, ip=10.0.0.3) trainforge worker rank=1 world_size=2 host=c pid=31",  # restarted
        "(RayTrainWorker pid=12, ip=10.0.0.2) a last word from the old rank 1",
        "(RayTrainWorker pid=31, ip=10.0.0.3) loss 0.9",
    ]
    assert list(rank_lines(log, 1)) == [
        "trainforge worker rank=1 world_size=2 host=b pid=12", "loss 1.1",
        "trainforge worker rank=1 world_size=2 host=c pid=31", "loss 0.9"]
    assert list(rank_lines(log, 0)) == ["trainforge worker rank=0 world_size=2 host=a pid=11", "loss 1.0"]
    assert worker_key("(RayTrainWorker pid=7) hi") == ("7", None) and worker_key("plain") is None


@pytest.mark.parametrize(("selector", "expected"), [
    (None, True), ("", True), ("team=vision", True), ("team==vision", True), ("team!=vision", False),
    ("team in (nlp, vision)", True), ("team notin (vision)", False), ("tier", False), ("!tier", True),
    ("team=vision,!tier", True), ("team=vision,tier=dev", False),
])
def test_label_selectors_match_like_kubectl(selector: str | None, expected: bool) -> None:
    assert matches(selector, {"team": "vision"}) is expected


def test_a_bad_selector_says_what_it_accepts() -> None:
    with pytest.raises(TrainforgeError, match=r"cannot parse label selector requirement 'team==='.*a in \(x,y\)"):
        matches("team===", {})


def test_the_builder_makes_the_manifest_model(tmp_path: Path) -> None:
    job = TrainingJob(name="gpt-small", labels={"team": "nlp"}, task=Task("gpt", args={"size": "tiny"}),
                      workers=4, gpus_per_worker=1, strategy="fsdp", precision="bf16", max_steps=100,
                      checkpoint={"storage": "s3://bucket/runs", "everySteps": 50})
    path = tmp_path / "job.yaml"
    path.write_text(job.to_yaml())
    (loaded,) = load_jobs(path)
    assert loaded.model_dump() == job.model_dump()
    assert loaded.spec.strategy.type == "fsdp" and loaded.spec.gpus_per_worker == 1
    assert "cpusPerWorker" not in job.to_yaml()  # defaults stay implicit
    with pytest.raises(SpecValidationError, match=r"spec\.workers: must be greater than or equal to 1"):
        TrainingJob(name="bad", task=Task("digits"), workers=0, epochs=1)


def test_to_job_takes_a_model_a_dict_or_a_file_of_exactly_one_job(tmp_path: Path) -> None:
    doc = manifest()
    assert to_job(doc).name == "digits" and to_job(to_job(doc)).name == "digits"
    two = tmp_path / "two.yaml"
    two.write_text(to_job(doc).to_yaml() + "---\n" + to_job(doc).to_yaml())
    with pytest.raises(InvalidJob, match="holds 2 TrainingJobs; submit them one file each"):
        to_job(two)
    with pytest.raises(InvalidJob, match="cannot read"):
        to_job(tmp_path / "missing.yaml")


def test_status_merges_like_a_merge_patch() -> None:
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": None, "e": 4}, "f": [1]}) == {
        "a": 1, "b": {"d": 3, "e": 4}, "f": [1]}


def test_a_local_job_whose_supervisor_died_is_a_lost_attempt_as_on_a_cluster(tmp_path: Path) -> None:
    """A lost supervisor is what a lost RayJob is to the operator: the attempt failed, and with no
    restarts left (maxRestarts 0) the job fails with RestartsExhausted, naming the lost process."""
    backend = LocalBackend(tmp_path)
    job = to_job(manifest(suspend=True, restartPolicy={"maxRestarts": 0}))
    created = backend.create(job)  # suspended: no supervisor starts
    assert created.status is not None and created.status.phase == "Suspended" and created.status.attempt == 0
    with pytest.raises(JobExists, match="already exists"):
        backend.create(job)
    jobdir = JobDir.of(tmp_path, "digits")
    jobdir.set_suspend(False)
    jobdir.patch_status({"phase": "Running", "attempt": 1})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    jobdir.record_process(gone.pid)
    status = backend.get("digits").status
    assert status is not None and status.phase == "Failed" and status.reason == "RestartsExhausted", status
    assert "local supervisor of attempt 1 exited" in (status.message or "")
    assert [e.reason for e in backend.events(backend.get("digits"))] == ["Created", "Suspended", "Failed"]
    backend.delete("digits")
    with pytest.raises(JobNotFound):
        backend.get("digits")
