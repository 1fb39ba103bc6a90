"""Asynchronous saves in one process: the state is taken at the step, written in the background and
committed (manifest last) at a later step boundary; what lands is exactly what a blocking save writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from trainforge.checkpoints import list_checkpoints
from trainforge_trainer.checkpoint.files import MODEL_FILE
from trainforge_trainer.checkpoint.store import DirStore

from tests.unit.test_checkpoint_engine import loop_for, saved

SPEC: dict[str, Any] = {"batch": {"size": 64}, "maxSteps": 30, "logEverySteps": 2, "deterministic": True,
                        "eval": {"everyEpoch": False}, "optimizer": {"name": "adamw", "lr": 3e-3}}


def states(run: Path) -> dict[int, dict[str, Any]]:
    return {int(m.parent.name.split("_")[1]): torch.load(m.parent / MODEL_FILE, weights_only=True)
            for m in run.glob("checkpoint_*/manifest.json") if json.loads(m.read_text())["status"] == "complete"}


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    else:
        assert a == b


def test_background_saves_write_exactly_what_blocking_saves_write(tmp_path: Path) -> None:
    ckpt = {"everySteps": 8, "everyEpoch": True, "keep": 100}
    blocking, _ = loop_for(tmp_path / "blocking", **SPEC, checkpoint={**ckpt, "async": False})
    blocking.fit()
    background, _ = loop_for(tmp_path / "background", **SPEC, checkpoint=ckpt)
    background.fit()
    steps = [(8, "interval"), (16, "interval"), (20, "epoch"), (24, "interval"), (30, "final")]
    assert saved(tmp_path / "blocking") == saved(tmp_path / "background") == steps
    a, b = states(tmp_path / "blocking"), states(tmp_path / "background")
    for step in a:  # taken at its step although training went on while it was written
        assert_same(a[step], b[step])
    for entry in list_checkpoints(DirStore(tmp_path / "background").fs, str(tmp_path / "background"), check=True):
        assert entry.verdict.valid, entry


def test_a_background_save_commits_at_a_later_step_and_only_then_is_valid(tmp_path: Path) -> None:
    loop, _ = loop_for(tmp_path, **{**SPEC, "maxSteps": 2}, checkpoint={"everyEpoch": False})
    loop.fit()  # trains 2 steps and builds the optimizer state a save needs
    ckpt = loop.ckpt
    assert ckpt is not None
    loop.state.position.step = 3
    ckpt.save("interval")
    assert ckpt.pending is not None and ckpt.pending.step == 3
    ckpt.pending.files.result()  # written ...
    assert saved(tmp_path) == [(2, "final")]  # ... but not committed: no manifest, not a checkpoint
    loop.state.position.step = 4
    ckpt.after_step()  # the next step boundary commits it
    assert ckpt.pending is None and saved(tmp_path) == [(2, "final"), (3, "interval")]


def test_a_preemption_commits_the_save_in_flight_first(tmp_path: Path) -> None:
    loop, _ = loop_for(tmp_path, **{**SPEC, "maxSteps": 2}, checkpoint={"everyEpoch": False, "keep": 10})
    loop.fit()
    ckpt = loop.ckpt
    assert ckpt is not None
    loop.state.position.step = 3
    ckpt.save("interval")
    loop.state.position.step = 4
    ckpt.watch.requested.set()
    assert ckpt.after_step()  # told to stop
    assert saved(tmp_path) == [(2, "final"), (3, "interval"), (4, "preempted")]


def test_a_run_that_fails_mid_write_leaves_no_checkpoint_behind(tmp_path: Path) -> None:
    loop, _ = loop_for(tmp_path, **{**SPEC, "maxSteps": 2}, checkpoint={"everyEpoch": False})
    loop.fit()
    ckpt = loop.ckpt
    assert ckpt is not None
    loop.state.position.step = 3
    ckpt.save("interval")
    staged = ckpt.pending.local if ckpt.pending else None
    ckpt.close()  # the run ends (an error) before the step that would commit it
    assert staged is not None and not staged.exists()
    again = loop.checkpointer(DirStore(tmp_path))
    assert [e.step for e in again.candidates()[0]] == [2]
