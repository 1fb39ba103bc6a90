"""A stale writer in a running loop (no Ray: one process, real checkpoints in a run directory): a
later attempt of the same job claims the run while this one trains. Its next commit is refused and it
stops, having written nothing after the claim and destroyed nothing before it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
from trainforge.checkpoints import list_checkpoints
from trainforge.checkpoints.owner import RunOwner, StaleWriter, write_owner
from trainforge_trainer.checkpoint.store import DirStore
from trainforge_trainer.loop import JsonlLog, Loop

from tests.faults.operator_setup import record
from tests.unit.test_engine import Collect, components_for

LOCAL = pafs.LocalFileSystem()
OLD = RunOwner("exp", "team-a", "uid-a", 1)
SPEC: dict[str, Any] = {"batch": {"size": 64}, "maxSteps": 12, "logEverySteps": 1, "eval": {"everyEpoch": False},
                        "checkpoint": {"everySteps": 2, "everyEpoch": False, "keep": 10, "async": False}}


class ClaimAtStep(Collect):
    """The loop's reporter (a test stand-in, like Collect): at `step`, a newer attempt claims the run,
    as its driver does before its workers start."""

    def __init__(self, run: Path, step: int) -> None:
        super().__init__()
        self.run, self.step = run, step
        self.claimed_at: float | None = None

    def report(self, metrics: dict[str, Any]) -> None:
        super().report(metrics)
        if metrics.get("step") == self.step and self.claimed_at is None and "loss" in metrics:
            write_owner(LOCAL, str(self.run), RunOwner("exp", "team-a", "uid-a", 2))
            self.claimed_at = time.time()


def test_a_stale_attempt_commits_nothing_after_a_newer_one_claims_the_run(tmp_path: Path) -> None:
    run = tmp_path / "exp"
    write_owner(LOCAL, str(run), OLD)
    reporter = ClaimAtStep(run, 5)
    loop = Loop(components_for(**SPEC), reporter, JsonlLog(None))
    loop.ckpt = loop.checkpointer(DirStore(run), owner=OLD)
    with pytest.raises(StaleWriter, match="attempt 2 of this job now owns run"):
        try:
            loop.fit()
        finally:
            loop.ckpt.close()
    entries = [e for e in list_checkpoints(LOCAL, str(run), check=True) if e.complete]
    assert [e.step for e in entries] == [2, 4]  # before the claim: all there and valid; after it: none
    assert all(e.verdict.valid and e.manifest.owner["attempt"] == 1 for e in entries)  # type: ignore[union-attr]
    assert loop.state.position.step == 6  # it stopped at the first commit after the claim
    thread = loop.watchdog._thread  # a loop that raised leaves no watchdog armed to end the process later
    assert thread is not None
    thread.join(3)
    assert not thread.is_alive()
    record("stale attempt commits after a newer claim", outcome="StaleWriter at its next commit; nothing written "
           "after the claim", steps_after_claim=loop.state.position.step - reporter.step)
