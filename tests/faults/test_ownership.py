"""Run ownership with `trainforge run` on the session's Ray: a finished run run again, with the same
spec, an edited one, and one the checkpoint cannot be loaded into."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from trainforge.checkpoints import list_checkpoints, resolve_storage
from trainforge.cli import cli

from tests.faults.operator_setup import record
from tests.unit.manifests import manifest

pytestmark = pytest.mark.usefixtures("ray_session")


def job_file(tmp_path: Path, name: str, **spec: Any) -> Path:
    doc = manifest(workers=1, epochs=1, batch={"size": 256}, logEverySteps=2, checkpoint={"everySteps": 3, "keep": 2},
                   **spec)
    doc["metadata"] = {"name": "owned"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def names(storage: Path) -> list[str]:
    return [e.name for e in list_checkpoints(resolve_storage(str(storage)).filesystem, str(storage / "owned"))]


def run(path: Path, storage: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    result = CliRunner().invoke(cli, ["run", str(path), "--storage", str(storage), "-o", "json", *extra])
    start = result.output.find("{")
    return result.exit_code, json.loads(result.output[start:]) if start >= 0 else {}, result.output


def test_a_finished_run_run_again_is_complete_or_refused_never_retrained(tmp_path: Path) -> None:
    """One fit, then: the same run with an edit that keeps its length reports the final metrics as
    they were; one with a wider model is refused before any worker starts (exit 78)."""
    storage = tmp_path / "runs"
    code, first, output = run(job_file(tmp_path, "base"), storage)
    assert code == 0 and first["succeeded"], output
    stored = names(storage)

    started = time.monotonic()
    same_length = job_file(tmp_path, "lr", optimizer={"lr": 0.02})
    code, again, output = run(same_length, storage)
    took = time.monotonic() - started
    assert code == 0 and again["succeeded"], output
    for key in ("step", "epoch", "val_accuracy", "val_loss", "test_accuracy"):
        assert again["metrics"][key] == first["metrics"][key], key
    assert again["metrics"].get("already_complete") is True
    assert names(storage) == stored
    record("finished run re-run with an edited spec", outcome="reported complete, metrics unchanged",
           steps_lost=0, seconds=took)

    started = time.monotonic()
    wider = job_file(tmp_path, "wider", task={"entrypoint": "digits", "args": {"hidden": 128}})
    code, refused, output = run(wider, storage)
    took = time.monotonic() - started
    assert code == 78 and refused["status"] == "refused", output
    assert "spec.task.args.hidden: 64 -> 128" in refused["error"] and "--fresh" in refused["error"]
    assert names(storage) == stored
    record("edited spec the checkpoint cannot load", outcome="refused before any worker (exit 78)",
           steps_lost=0, seconds=took)
