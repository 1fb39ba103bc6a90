"""A local job's state directory is private: job.yaml holds env values, the logs what the task prints."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from trainforge.local.jobstate import JobDir, open_private
from trainforge.spec import parse_job

from tests.unit.manifests import manifest


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default: without care, files come out world-readable
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("loose_umask")
def test_every_state_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    jobdir = JobDir.of(tmp_path, "digits")
    jobdir.create(parse_job(manifest(env=[{"name": "WANDB_API_KEY", "value": "secret"}])))
    jobdir.patch_status({"phase": "Running"})
    jobdir.event("Normal", "Created", "created")
    jobdir.set_suspend(True)
    os.close(open_private(jobdir.attempt_log(1)))
    assert mode(jobdir.path) == 0o700
    files = sorted(p for p in jobdir.path.iterdir() if p.is_file())
    assert {p.name for p in files} >= {"job.yaml", "status.json", "events.jsonl", "attempt-1.log", ".lock"}
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}


@pytest.mark.usefixtures("loose_umask")
def test_state_written_by_an_older_version_is_narrowed(tmp_path: Path) -> None:
    jobdir = JobDir.of(tmp_path, "digits")
    jobdir.path.mkdir(parents=True, mode=0o755)
    (jobdir.path / "events.jsonl").write_text("")
    (jobdir.path / "events.jsonl").chmod(0o644)
    jobdir.create(parse_job(manifest()))
    jobdir.event("Normal", "Created", "created")
    assert mode(jobdir.path) == 0o700 and mode(jobdir.path / "events.jsonl") == 0o600
