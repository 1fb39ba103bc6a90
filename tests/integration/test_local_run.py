"""`trainforge run` end to end on a real (session-shared) Ray: the product's main job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from trainforge.cli import cli

from tests.conftest import ROOT


@pytest.mark.usefixtures("ray_session")
def test_digits_ddp_two_workers_reaches_97_percent(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["run", str(ROOT / "examples/digits-ddp.yaml"), "--storage", str(tmp_path), "-o", "json"]
    )
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.output[result.output.index("{"):])
    assert outcome["succeeded"] is True
    metrics = outcome["metrics"]
    assert metrics["test_accuracy"] >= 0.97
    assert metrics["step"] == metrics["total_steps"] > 0
    records = [json.loads(line) for line in (tmp_path / "digits-ddp" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r and "lr" in r]
    assert train and all(r["samples_per_s"] > 0 and "grad_norm" in r for r in train)
    assert records[-1]["done"] is True
    # Retention (keep: 2, keepBest val_accuracy x1), as `trainforge checkpoints` reports it.
    listed = CliRunner().invoke(cli, ["checkpoints", "digits-ddp", "--storage", str(tmp_path), "--all", "-o", "json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    valid = [r for r in rows if r["valid"]]
    assert len(rows) >= 10 and [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    best = max(r["metrics"]["val_accuracy"] for r in rows if "val_accuracy" in r["metrics"])
    assert [r["step"] for r in valid][-2:] == [r["step"] for r in rows][-2:]  # the two newest
    assert any(r["metrics"]["val_accuracy"] == best for r in valid) and len(valid) <= 3
    assert valid[-1]["step"] == metrics["step"]  # the last epoch's save is the final state
    assert all(r["status"] == "pruned" for r in rows if not r["valid"])


def test_bad_entrypoint_fails_before_ray_starts(tmp_path: Path) -> None:
    import ray

    job = tmp_path / "bad.yaml"
    job.write_text((ROOT / "examples/digits-ddp.yaml").read_text().replace("entrypoint: digits",
                                                                          "entrypoint: nowhere.mod:build"))
    was_running = ray.is_initialized()
    result = CliRunner().invoke(cli, ["run", str(job), "--storage", str(tmp_path)])
    assert result.exit_code == 1
    assert "spec.task.entrypoint: cannot import module 'nowhere.mod'" in result.output
    assert ray.is_initialized() == was_running
