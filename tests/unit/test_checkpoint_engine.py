"""The checkpointer inside one process (no process group): intervals, state round trip, early
stopping state, fp16 scaler state, and a finished run that stays finished."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from trainforge_trainer.checkpoint.store import DirStore
from trainforge_trainer.loop import JsonlLog, Loop

from tests.unit.test_engine import Collect, components_for


def loop_for(run: Path, **spec: Any) -> tuple[Loop, Collect]:
    reports = Collect()
    loop = Loop(components_for(**spec), reports, JsonlLog(None))
    loop.ckpt = loop.checkpointer(DirStore(run))
    return loop, reports


def saved(run: Path) -> list[tuple[int, str]]:
    found = [json.loads(p.read_text()) for p in run.glob("checkpoint_*/manifest.json")]
    return sorted((m["step"], m["reason"]) for m in found if m["status"] == "complete")


def test_step_epoch_and_final_intervals_combine(tmp_path: Path) -> None:
    # 1257 samples / 64 = 20 steps per epoch; maxSteps 30 ends mid-epoch 1.
    loop, _ = loop_for(tmp_path, batch={"size": 64}, maxSteps=30, eval={"everyEpoch": False},
                       checkpoint={"everySteps": 8, "everyEpoch": True, "keep": 100})
    loop.fit()
    assert saved(tmp_path) == [(8, "interval"), (16, "interval"), (20, "epoch"), (24, "interval"), (30, "final")]


def test_every_seconds_is_checked_at_the_report_cadence(tmp_path: Path) -> None:
    loop, _ = loop_for(tmp_path, batch={"size": 64}, maxSteps=9, logEverySteps=3, eval={"everyEpoch": False},
                       checkpoint={"everySeconds": 0.001, "everyEpoch": False, "keep": 100})
    loop.fit()
    assert saved(tmp_path) == [(3, "interval"), (6, "interval"), (9, "interval")]


def test_every_stateful_part_round_trips(tmp_path: Path) -> None:
    spec = {"batch": {"size": 64}, "maxSteps": 12, "precision": "fp16", "logEverySteps": 2,
            "schedule": {"name": "plateau", "patience": 0, "factor": 0.5}, "eval": {"everySteps": 2},
            "earlyStopping": {"metric": "val_loss", "mode": "min", "patience": 50},
            "checkpoint": {"everySteps": 6, "everyEpoch": False}}
    first, _ = loop_for(tmp_path, **spec)
    first.fit()
    second, reports = loop_for(tmp_path, **spec)
    second.resume()
    a, b = first.components, second.components
    assert reports.reports[0]["resumed_step"] == 12
    assert second.state.position == first.state.position and second.state.last_eval == first.state.last_eval
    assert b.schedule.state_dict() == a.schedule.state_dict() and b.schedule.lr == a.schedule.lr
    assert b.precision.state_dict() == a.precision.state_dict()  # the fp16 GradScaler's scale and tracker
    assert b.early.state_dict() == a.early.state_dict()
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


def test_a_finished_run_stays_finished_and_more_steps_continue_it(tmp_path: Path) -> None:
    spec = {"batch": {"size": 64}, "eval": {"everyEpoch": False}, "checkpoint": {"everyEpoch": False}}
    done, _ = loop_for(tmp_path, maxSteps=5, **spec)
    assert done.fit()["step"] == 5
    again, reports = loop_for(tmp_path, maxSteps=5, **spec)
    assert again.fit()["step"] == 5 and not any("loss" in r for r in reports.reports)  # nothing retrained
    longer, _ = loop_for(tmp_path, maxSteps=8, **spec)
    assert longer.fit()["step"] == 8
    assert saved(tmp_path)[-1] == (8, "final")


def test_a_newest_checkpoint_with_altered_bytes_falls_back_to_the_previous(tmp_path: Path) -> None:
    spec = {"batch": {"size": 64}, "maxSteps": 6, "eval": {"everyEpoch": False},
            "checkpoint": {"everySteps": 3, "everyEpoch": False}}
    first, _ = loop_for(tmp_path, **spec)
    first.fit()
    (newest,) = tmp_path.glob("checkpoint_000000006_*")
    data = bytearray((newest / "model.pt").read_bytes())
    data[-100] ^= 0xFF  # same size: only the hash can tell
    (newest / "model.pt").write_bytes(bytes(data))
    again, reports = loop_for(tmp_path, **spec)
    again.resume()
    event = reports.reports[0]
    assert event["resumed_step"] == 3 and again.state.position.step == 3
    assert "does not match its SHA-256" in event["skipped_checkpoints"][0]


def test_a_run_starts_from_another_runs_checkpoint_with_its_own_hyperparameters(tmp_path: Path) -> None:
    # How an exploiting PBT trial takes over: the donor's weights, optimizer moments and position,
    # but the lr and weight decay of its own (perturbed) spec.
    spec = {"batch": {"size": 64}, "maxSteps": 10, "eval": {"everyEpoch": False},
            "checkpoint": {"everySteps": 6, "everyEpoch": False, "keep": 100}}
    donor, _ = loop_for(tmp_path / "donor", optimizer={"lr": 1e-3, "weightDecay": 0.0}, **spec)
    donor.fit()
    (at_6,) = (tmp_path / "donor").glob("checkpoint_000000006_*")
    reports = Collect()
    taker = Loop(components_for(optimizer={"lr": 5e-3, "weightDecay": 0.1}, **spec), reports, JsonlLog(None))
    taker.ckpt = taker.checkpointer(DirStore(tmp_path / "taker"), init_from=str(at_6))
    taker.resume()
    assert reports.reports[0]["resumed_step"] == 6 and taker.state.position.step == 6
    groups = taker.components.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]  # decayed weights; biases and norms
    assert taker.components.schedule.peak_lr == 5e-3 and groups[0]["lr"] == taker.components.schedule.lr_at(6)
    assert taker.fit()["step"] == 10
    assert saved(tmp_path / "taker") == [(10, "final")]  # its own run; the donor's is untouched
    assert saved(tmp_path / "donor") == [(6, "interval"), (10, "final")]


def test_a_run_told_to_start_from_a_missing_checkpoint_refuses_to_start_from_scratch(tmp_path: Path) -> None:
    loop = Loop(components_for(batch={"size": 64}, maxSteps=4), Collect(), JsonlLog(None))
    loop.ckpt = loop.checkpointer(DirStore(tmp_path / "taker"), init_from=str(tmp_path / "donor/checkpoint_1_1"))
    with pytest.raises(FileNotFoundError, match=r"spec\.checkpoint\.keep"):
        loop.resume()
