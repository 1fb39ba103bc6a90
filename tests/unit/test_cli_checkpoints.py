"""`trainforge checkpoints` on a run directory: order, validity with the reason, pruned hidden."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from trainforge.checkpoints import list_checkpoints, prune
from trainforge.cli import cli

from tests.unit.test_checkpoint_format import LOCAL, make_checkpoint


def test_lists_by_step_with_validity_and_hides_pruned(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "job"
    for step in (5, 10, 100):
        make_checkpoint(run, f"checkpoint_{step}", step, {"val_accuracy": step / 1000})
    (run / "checkpoint_100" / "model.pt").write_bytes(b"short")
    prune(LOCAL, list_checkpoints(LOCAL, str(run))[0])

    result = CliRunner().invoke(cli, ["checkpoints", "job", "--storage", str(tmp_path / "runs"), "-o", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["step"], r["valid"]) for r in rows] == [(10, True), (100, False)]
    assert "model.pt has 5 bytes" in rows[1]["problem"]
    assert rows[0]["metrics"]["val_accuracy"] == 0.01 and rows[0]["sizeBytes"] == 2005

    text = CliRunner().invoke(cli, ["checkpoints", str(run), "--all"])
    assert text.exit_code == 0
    assert "pruned" in text.output and "checkpoint_10 " in text.output


def test_an_empty_or_missing_run_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["checkpoints", "nothing", "--storage", str(tmp_path)])
    assert result.exit_code == 1
    assert "no checkpoints under" in result.output


def test_fresh_discards_the_run_and_nothing_else(tmp_path: Path) -> None:
    from trainforge.checkpoints import resolve_storage
    from trainforge_trainer.driver import discard_run

    for name in ("job", "other"):
        for step in (1, 2):
            make_checkpoint(tmp_path / name, f"checkpoint_{step}", step)
    target = resolve_storage(str(tmp_path))
    assert discard_run(target, "job") == 2
    assert not (tmp_path / "job").exists() and (tmp_path / "other" / "checkpoint_2").exists()
    assert discard_run(target, "job") == 0  # nothing there: nothing to do
