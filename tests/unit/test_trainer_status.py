"""The trainer's side of a cluster job: reading its payload, and what it writes into the status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from trainforge.spec import parse_job
from trainforge.spec.contract import SPEC_ENV
from trainforge_operator.rayjob import build_rayjob
from trainforge_operator.settings import OperatorSettings
from trainforge_trainer.callbacks import StatusCallback
from trainforge_trainer.kube_status import (
    BestTracker,
    JobRef,
    RateLimiter,
    StepRate,
    duration_text,
    progress_patch,
)
from trainforge_trainer.loop import JsonlLog, Loop
from trainforge_trainer.run import ClusterJob, best_tracker, uri_prefix

from tests.unit.manifests import manifest
from tests.unit.test_engine import Collect, components_for


def payload_env(**spec: Any) -> dict[str, str]:
    doc = manifest(**spec)
    doc["metadata"].update(namespace="ml", uid="u1", generation=1)
    rayjob = build_rayjob(doc, parse_job(doc).spec, 3, OperatorSettings(default_storage="s3://ckpt/runs"))
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in head["env"] if "value" in e}


def test_the_entrypoint_reads_the_job_the_operator_wrote() -> None:
    job = ClusterJob.from_env(payload_env(checkpoint={"keepBest": {"metric": "val_accuracy"}}))
    assert job.ref == JobRef("ml", "digits", 3, "u1") and job.run_name == "digits"
    assert job.target.uri == "s3://ckpt/runs/ml" and uri_prefix(job.target) == "s3://"
    assert job.spec.workers == 2 and best_tracker(job.spec).metric == "val_accuracy"


def test_without_the_payload_it_says_what_it_is_for() -> None:
    with pytest.raises(SystemExit, match=SPEC_ENV):
        ClusterJob.from_env({})


def test_progress_patch_keeps_numbers_only_and_reads_the_trainers_rates(tmp_path: Path) -> None:
    # The keys the engine reports, taken from a real (short) run's metrics.jsonl, not written here.
    loop = Loop(components_for(maxSteps=4, logEverySteps=2, eval={"everyEpoch": False}), Collect(),
                JsonlLog(tmp_path / "metrics.jsonl"))
    loop.fit()
    report = next(json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
                  if '"loss"' in line)
    patch = progress_patch({**report, "checkpoint": "c", "preempted": False}, "s3://b/r/checkpoint_1", None,
                           steps_per_s=0.5)
    progress = patch["progress"]
    assert (progress["epoch"], progress["step"], progress["totalSteps"]) == (0, 2, 4)
    assert progress["samplesPerSecond"] == report["samples_per_s"] > 0
    assert "tokensPerSecond" not in progress  # digits has no tokens
    assert (progress["percent"], progress["etaSeconds"], progress["eta"]) == (50.0, 4, "4s")
    assert progress["metrics"]["loss"] == report["loss"] and "checkpoint" not in progress["metrics"]
    assert patch["latestCheckpoint"] == "s3://b/r/checkpoint_1" and "bestCheckpoint" not in patch
    done = progress_patch({"step": 4, "total_steps": 4, "done": True}, None, None)["progress"]
    assert (done["percent"], done["etaSeconds"], done["eta"]) == (100.0, 0, "0s")
    unknown = progress_patch({"step": 1, "total_steps": 4}, None, None)["progress"]
    assert unknown["percent"] == 25.0 and "etaSeconds" not in unknown  # no rate measured yet


def test_step_rate_and_eta_text() -> None:
    rate = StepRate(window_s=60)
    assert rate.per_second() is None
    for t, step in ((0, 0), (10, 10), (20, 20), (100, 60)):
        rate.observe(step, now=t)
    assert rate.per_second() == (60 - 20) / (100 - 20)  # points older than the window are gone
    rate.observe(5, now=101)  # a resumed attempt reports an earlier step: start again
    assert rate.per_second() is None
    assert [duration_text(s) for s in (0, 59, 61, 3600, 3725)] == ["0s", "59s", "1m01s", "1h00m", "1h02m"]


def test_best_tracker_and_rate_limiter() -> None:
    best = BestTracker("val_accuracy", "max")
    assert best.offer("a", 10, {"val_accuracy": 0.9}) and not best.offer("b", 20, {"val_accuracy": 0.8})
    assert not best.offer("c", 30, {"loss": 1.0}) and best.best == {"uri": "a", "step": 10,
                                                                    "metric": "val_accuracy", "value": 0.9}
    limiter = RateLimiter(3600)
    assert limiter.ready() and not limiter.ready() and limiter.ready(force=True)


class RecordingWriter:
    """Stands in for the Kubernetes API (the real writer is exercised against the emulator)."""

    def __init__(self, suspend_after: int) -> None:
        self.patches: list[dict[str, Any]] = []
        self.suspend_after = suspend_after
        self.suspend_requested = False

    def patch(self, status: dict[str, Any]) -> bool:
        self.patches.append(status)
        self.suspend_requested = len(self.patches) >= self.suspend_after
        return True


class Flag:
    def __init__(self) -> None:
        self.sets = 0
        self.set = self

    def remote(self) -> None:
        self.sets += 1


class Ckpt:
    def __init__(self, path: str) -> None:
        self.path = path


def test_status_callback_rate_limits_reports_writes_checkpoints_and_relays_suspend() -> None:
    writer, flag = RecordingWriter(suspend_after=2), Flag()
    callback = StatusCallback(writer, "s3://", BestTracker("val_accuracy", "max"), 3600, flag)  # type: ignore[arg-type]
    callback.after_report(None, [{"epoch": 0, "step": 10, "loss": 1.0}], None)
    callback.after_report(None, [{"epoch": 0, "step": 20, "loss": 0.9}], None)  # within the interval: dropped
    callback.after_report(None, [{"epoch": 1, "step": 30, "val_accuracy": 0.9}], Ckpt("b/run/checkpoint_30"))
    assert [p["progress"]["step"] for p in writer.patches] == [10, 30]
    assert writer.patches[1]["latestCheckpoint"] == "s3://b/run/checkpoint_30"
    assert writer.patches[1]["bestCheckpoint"]["value"] == 0.9 and flag.sets == 1
    callback.after_report(None, [{"epoch": 1, "step": 40}], Ckpt("b/run/checkpoint_40"))
    assert flag.sets == 1  # asked once
    assert json.dumps(writer.patches)  # JSON-ready for the API


def test_a_checkpoint_committed_steps_after_it_was_taken_does_not_move_progress_back() -> None:
    writer = RecordingWriter(suspend_after=100)
    callback = StatusCallback(writer, "s3://", BestTracker("val_accuracy", "max"), 0)  # type: ignore[arg-type]
    callback.after_report(None, [{"epoch": 1, "step": 40, "loss": 0.5}], None)
    callback.after_report(None, [{"epoch": 1, "step": 30, "val_accuracy": 0.9}], Ckpt("b/run/checkpoint_30"))
    last = writer.patches[-1]
    assert last["progress"]["step"] == 40 and last["latestCheckpoint"] == "s3://b/run/checkpoint_30"
    assert last["bestCheckpoint"]["step"] == 30  # the checkpoint keeps its own step
