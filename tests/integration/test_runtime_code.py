"""spec.runtime.workingDir end to end, locally: `trainforge run` of examples/custom-task, whose task
lives in a directory that is neither installed nor on sys.path, trains it on 2 DDP workers (they
get the code through Ray's job runtime_env; the process joins the session's Ray via RAY_ADDRESS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("ray_session")


def test_trainforge_run_ships_the_working_dir_to_every_worker(tmp_path: Path) -> None:
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "TRAINFORGE_CODE_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": ""}  # the repository is not on the path: only the shipped directory is
    done = subprocess.run([str(Path(sys.executable).with_name("trainforge")), "run", "-o", "json", "--storage",
                           str(tmp_path / "runs"), str(ROOT / "examples" / "custom-task" / "job.yaml")],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    outcome = json.loads(done.stdout)
    assert outcome["succeeded"] and outcome["metrics"]["step"] == 39, outcome
    assert outcome["metrics"]["val_accuracy"] > 0.9, outcome["metrics"]
    (code,) = (tmp_path / "cache").iterdir()  # packed, excludes applied, unpacked once
    assert (code / "blobs" / "train.py").is_file() and not list(code.glob("*.yaml"))
