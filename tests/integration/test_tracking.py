"""Tracking against real servers on loopback: a digits job in one MLflow run (params, train loss at
every log step, validation at its steps) across a preemption and its resume, and TensorBoard event
files on moto S3 read back with TensorBoard's own event reader."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from trainforge.checkpoints import resolve_storage
from trainforge.spec import parse_job
from trainforge_trainer.worker import run_worker

from tests.unit.manifests import manifest


class Quiet:
    def report(self, metrics: dict[str, Any]) -> None:
        pass


def spec_of(**fields: Any) -> Any:
    base = {"task": {"entrypoint": "tests.support.tasks:paced_digits", "args": {"hidden": 32}}, "workers": 1,
            "batch": {"size": 64}, "epochs": 2, "logEverySteps": 2, "eval": {"everySteps": 10, "everyEpoch": False},
            "checkpoint": {"everySteps": 5, "everyEpoch": False, "keepBest": {"metric": "val_accuracy"}}}
    return parse_job(manifest(**(base | fields))).spec


def sigterm_after_first_checkpoint(run: Path) -> threading.Thread:
    """What a preemption looks like to the trainer: SIGTERM once a checkpoint is there."""
    def watch() -> None:
        deadline = time.monotonic() + 60
        while not list(run.glob("checkpoint_*/manifest.json")) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_digits_job_is_one_mlflow_run_across_a_preemption(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    experiment = f"e-{uuid.uuid4().hex[:8]}"
    tracked = {"mlflow": {"trackingUri": mlflow_server, "experiment": experiment, "tags": {"team": "ml"}}}
    run = tmp_path / "runs" / "digits"
    paced = spec_of(tracking=tracked, task={"entrypoint": "tests.support.tasks:paced_digits",
                                            "args": {"hidden": 32, "pause_s": 0.05}})
    sigterm_after_first_checkpoint(run).join  # noqa: B018 - the thread ends by itself
    first = run_worker(paced, str(run), reporter=Quiet())
    assert first["stop_reason"] == "preempted" and 5 <= first["step"] < 40
    second = run_worker(spec_of(tracking=tracked), str(run), reporter=Quiet())  # the same job, resumed
    assert second["done"] and second["step"] == 40

    client = MlflowClient(tracking_uri=mlflow_server)
    (found,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert found.info.status == "FINISHED" and found.data.tags["team"] == "ml"
    assert found.data.tags["trainforge.run"] == str(run)
    assert found.data.params["batch.size"] == "64" and found.data.params["task.entrypoint"].endswith("paced_digits")
    assert found.data.tags["trainforge.final_checkpoint"].startswith(f"{run}/checkpoint_000000040_")
    assert found.data.tags["trainforge.best_checkpoint"].startswith(f"{run}/checkpoint_")
    loss_steps = {m.step for m in client.get_metric_history(found.info.run_id, "loss")}
    assert set(range(2, 41, 2)) <= loss_steps  # every log step of both attempts: one continuous axis
    assert {m.step for m in client.get_metric_history(found.info.run_id, "val_accuracy")} == {10, 20, 30, 40}


def test_tensorboard_events_on_s3_read_back_with_tensorboards_reader(
        bucket: str, moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    uri = f"s3://{bucket}/runs/tb"
    run_worker(spec_of(maxSteps=10, tracking={"tensorboard": True}), uri, reporter=Quiet())
    target = resolve_storage(uri)
    from pyarrow.fs import FileSelector

    local = tmp_path / "tb"
    local.mkdir()
    files = target.filesystem.get_file_info(FileSelector(f"{target.path}/tensorboard", recursive=True))
    for info in files:
        with target.filesystem.open_input_stream(info.path) as f:
            (local / info.base_name).write_bytes(f.read())
    assert files and all(f.base_name.startswith("events.out.tfevents") for f in files)
    events = EventAccumulator(str(local))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [2, 4, 6, 8, 10]
    assert {e.step for e in events.Scalars("val_accuracy")} == {10}  # evaluated at 10 (the final report repeats it)
