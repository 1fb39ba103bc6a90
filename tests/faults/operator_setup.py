"""Shared by the fault tests that run whole jobs through the operator (real kopf on the emulated API
server, the KubeRay stand-in, moto S3): the e2e `cluster` fixture and job helpers, what a run holds
in storage, and one printed result line per case (run pytest with -s to see them)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from trainforge.checkpoints import list_checkpoints, resolve_storage

from tests.integration.test_operator_e2e import cluster, digits_job, resumed_step, status, wait_status

__all__ = ["checkpoints", "cluster", "digits_job", "explained", "record", "resumed_step", "say", "status",
           "stopped_step", "wait_status"]


def checkpoints(bucket: str, endpoint: str, run: str) -> list[tuple[int, str]]:
    """(step, reason) of the run's complete checkpoints in storage, oldest first."""
    target = resolve_storage(f"s3://{bucket}/runs", endpoint)
    entries = list_checkpoints(target.filesystem, target.run_path(run), check=False)
    return [(e.step, e.manifest.reason if e.manifest else "?") for e in entries if e.complete]


def record(case: str, **figures: Any) -> dict[str, Any]:
    """Print the case's measured figures (steps lost, time to recover, ...) as one JSON line."""
    line = {"case": case, **{k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}}
    say(f"FAULT-RESULT {json.dumps(line)}")
    return line


def say(text: str) -> None:
    """To fd 1: kopf's runner swaps sys.stdout while the operator runs (pytest -s shows fd 1)."""
    os.write(1, f"{text}\n".encode())


def stopped_step(attempt: Any) -> int | None:
    """The step a preempted attempt's loop stopped at: its last report, as Ray Train logs it."""
    found = re.findall(r"'step': (\d+), 'total_steps': \d+, 'done': False, 'preempted': True",
                       attempt.log_path.read_text(errors="replace"))
    return int(found[-1]) if found else None


def since(started: float) -> float:
    return time.monotonic() - started


@contextlib.contextmanager
def explained(standin: Any, tail: int = 4000) -> Iterator[None]:
    """A failed assertion carries the tail of every attempt's driver log."""
    try:
        yield
    except AssertionError as err:
        for (namespace, name), attempt in sorted(standin.attempts.items()):
            err.add_note(f"--- {namespace}/{name} (exit {attempt.process.poll()}) ---")
            err.add_note(attempt.log_path.read_text(errors="replace")[-tail:])
        raise
