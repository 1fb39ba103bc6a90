"""Resume under Ray Train, the production path: a driver killed outright, a driver asked to stop
(SIGTERM), and a worker process dying inside a run (Ray Train restarts the workers)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from trainforge.spec import load_jobs
from trainforge.spec.yamlio import dumps
from trainforge_trainer.local.runner import LocalRun

from tests.conftest import ROOT
from tests.unit.manifests import manifest

pytestmark = pytest.mark.usefixtures("ray_session")
TRAINFORGE = str(Path(sys.executable).parent / "trainforge")


def paced_job(tmp_path: Path, name: str, pause_s: float, **spec: Any) -> Path:
    doc = manifest(task={"entrypoint": "tests.support.tasks:paced_digits", "args": {"pause_s": pause_s,
                                                                                     "hidden": 64}},
                   workers=2, batch={"size": 32}, deterministic=True, logEverySteps=2, **spec)
    doc["metadata"]["name"] = name
    path = tmp_path / f"{name}.yaml"
    path.write_text(dumps(doc))
    return path


def run_in_session(path: Path, storage: Path) -> tuple[Any, list[dict[str, Any]]]:
    reports: list[dict[str, Any]] = []
    outcome = LocalRun(load_jobs(path)[0], storage=str(storage)).execute(reports.append)
    return outcome, reports


def start_driver(path: Path, storage: Path) -> subprocess.Popen[str]:
    """`trainforge run` in its own session, as a user's terminal would run it."""
    return subprocess.Popen([TRAINFORGE, "run", str(path), "--storage", str(storage), "-o", "json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_checkpoint(run: Path, proc: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not list(run.glob("checkpoint_*/manifest.json")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def kill_session(sid: int) -> None:
    """SIGKILL the driver and every Ray process it started (they share its session)."""
    for entry in os.listdir("/proc"):
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            if entry.isdigit() and os.getsid(int(entry)) == sid:
                os.kill(int(entry), signal.SIGKILL)


def newest(run: Path) -> dict[str, Any]:
    manifests = [json.loads(p.read_text()) for p in run.glob("checkpoint_*/manifest.json")]
    return max((m for m in manifests if m["status"] == "complete"), key=lambda m: (m["step"], m["created"]))


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    (path,) = [p.parent for p in run.glob("checkpoint_*/manifest.json")
               if json.loads(p.read_text())["reason"] == "final"]
    return torch.load(path / "model.pt", weights_only=True)["model"]


def test_driver_sigkilled_mid_epoch_then_rerun_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    job = paced_job(tmp_path, "exact", 0.03, epochs=2, checkpoint={"everySteps": 7, "everyEpoch": False, "keep": 10})
    driver = start_driver(job, tmp_path / "cut")
    try:
        wait_for_checkpoint(tmp_path / "cut" / "exact", driver)
    finally:
        kill_session(driver.pid)
        driver.communicate(timeout=30)
    assert driver.returncode == -signal.SIGKILL

    reference, _ = run_in_session(job, tmp_path / "whole")
    resumed, reports = run_in_session(job, tmp_path / "cut")
    assert reference.succeeded and resumed.succeeded, (reference.error, resumed.error)
    (event,) = [r for r in reports if "resumed_from" in r]
    assert event["resumed_step"] % 20 != 0, "the interrupted run should resume mid-epoch"  # 20 steps/epoch
    assert reference.metrics["step"] == resumed.metrics["step"] == 40
    a, b = final_weights(tmp_path / "whole" / "exact"), final_weights(tmp_path / "cut" / "exact")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_to_the_driver_checkpoints_exits_75_and_the_rerun_loses_no_step(tmp_path: Path) -> None:
    job = paced_job(tmp_path, "term", 0.1, epochs=3, checkpoint={"everySteps": 5, "everyEpoch": False, "keep": 10})
    run = tmp_path / "runs" / "term"
    driver = start_driver(job, tmp_path / "runs")
    try:
        wait_for_checkpoint(run, driver)
        driver.send_signal(signal.SIGTERM)
        out, err = driver.communicate(timeout=120)
    finally:
        kill_session(driver.pid)
    assert driver.returncode == 75, err[-3000:]
    outcome = json.loads(out[out.index("{"):])
    assert outcome["status"] == "preempted"
    stopped_at = outcome["metrics"]["step"]
    saved = newest(run)
    assert (saved["reason"], saved["step"]) == ("preempted", stopped_at)
    assert stopped_at < 60

    resumed, reports = run_in_session(job, tmp_path / "runs")
    assert resumed.succeeded, resumed.error
    assert next(r for r in reports if "resumed_from" in r)["resumed_step"] == stopped_at  # 0 steps lost
    assert resumed.metrics["step"] == 60


def test_a_killed_worker_is_restarted_by_ray_train_and_the_run_completes(tmp_path: Path, moto_endpoint: str,
                                                                           bucket: str) -> None:
    marker = tmp_path / "died"
    doc = manifest(task={"entrypoint": "tests.support.tasks:paced_digits",
                         "args": {"hidden": 64, "die_at_micro": 12, "die_marker": str(marker)}},
                   workers=2, batch={"size": 32}, epochs=1, logEverySteps=2,
                   checkpoint={"storage": f"s3://{bucket}/runs", "endpoint": moto_endpoint, "everySteps": 5,
                               "everyEpoch": False, "keep": 2},
                   restartPolicy={"maxWorkerFailures": 1})
    job = tmp_path / "die.yaml"
    job.write_text(dumps(doc))
    reports: list[dict[str, Any]] = []
    outcome = LocalRun(load_jobs(job)[0]).execute(reports.append)
    assert marker.exists(), "the worker was supposed to die once"
    assert outcome.succeeded, outcome.error
    assert outcome.metrics["step"] == 20 and outcome.storage == f"s3://{bucket}/runs"
    resumed = [r for r in reports if "resumed_from" in r]
    # Died at micro 12: the restart resumes from the newest complete checkpoint on storage — step 10,
    # or step 5 when step 10's upload had not finished (seen on a loaded machine); never from scratch.
    assert resumed and resumed[0]["resumed_step"] in (5, 10), resumed
    from trainforge.checkpoints import list_checkpoints, resolve_storage

    target = resolve_storage(f"s3://{bucket}/runs", endpoint=moto_endpoint)
    entries = list_checkpoints(target.filesystem, target.run_path("digits"), hashes=True)
    assert [e.step for e in entries if e.verdict.valid] == [15, 20]  # keep: 2, newest by step
