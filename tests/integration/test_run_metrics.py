"""metrics.jsonl on every storage: written by the real loop into a local run directory and onto moto
S3 (uploaded after each checkpoint and at the end; a resumed run appends to it, after dropping what
it trains again), then read back by `trainforge metrics` and drawn by `trainforge plot` (PNG decoded)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from trainforge.checkpoints import resolve_storage
from trainforge.cli import cli
from trainforge.runs import read_metrics
from trainforge.spec import parse_job
from trainforge_trainer.runlog import JsonlLog
from trainforge_trainer.worker import run_worker

from tests.unit.manifests import manifest


def spec_of(**fields: Any) -> Any:
    base = {"task": {"entrypoint": "digits", "args": {"hidden": 32}}, "workers": 1, "batch": {"size": 64},
            "logEverySteps": 2, "eval": {"everySteps": 4}, "checkpoint": {"everySteps": 5, "everyEpoch": False}}
    return parse_job(manifest(**(base | fields))).spec


class Quiet:
    def report(self, metrics: dict[str, Any]) -> None:
        pass


def png_size(path: Path) -> tuple[int, int]:
    import matplotlib.image

    pixels = matplotlib.image.imread(path)  # decodes it: a truncated or non-PNG file raises
    return pixels.shape[1], pixels.shape[0]


def test_a_local_run_logs_prints_and_plots(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "local"
    run_worker(spec_of(maxSteps=12), str(run), reporter=Quiet())
    log = read_metrics(resolve_storage(str(run)).filesystem, str(run))
    steps = [r["step"] for r in log.steps if "loss" in r and not r.get("done")]
    assert steps == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in log.steps if "val_loss" in r and not r.get("done")] == [4, 8, 12]

    by_name = CliRunner().invoke(cli, ["metrics", "local", "--storage", str(tmp_path / "runs"), "-o", "csv"])
    assert by_name.exit_code == 0, by_name.output
    rows = list(csv.DictReader(io.StringIO(by_name.stdout)))
    assert [int(r["step"]) for r in rows if r["loss"]][:6] == [2, 4, 6, 8, 10, 12]
    assert {"loss", "val_loss", "lr", "epoch", "step"} <= set(rows[0])
    as_json = CliRunner().invoke(cli, ["metrics", str(run), "-o", "json"])
    assert json.loads(as_json.stdout)[0]["step"] == 2

    png = tmp_path / "curves.png"
    drawn = CliRunner().invoke(cli, ["plot", str(run), "-o", str(png)])
    assert drawn.exit_code == 0, drawn.output
    assert png.stat().st_size > 10_000 and png_size(png) == (800, 780)  # 3 panels: loss+val_loss, accuracy, lr
    bad = CliRunner().invoke(cli, ["plot", str(run), "--metrics", "nope"])
    assert bad.exit_code == 2 and "nope not in the log" in bad.output


def test_an_s3_run_uploads_its_log_and_a_resumed_run_continues_it(
        bucket: str, moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    uri = f"s3://{bucket}/runs/remote"
    run_worker(spec_of(maxSteps=10), uri, reporter=Quiet())
    run_worker(spec_of(maxSteps=16), uri, reporter=Quiet())  # the finished run is given more steps: it resumes
    target = resolve_storage(uri)
    log = read_metrics(target.filesystem, target.path)
    train = [r["step"] for r in log.steps if "loss" in r and not r.get("done")]
    assert train == [2, 4, 6, 8, 10, 12, 14, 16]  # one continuous axis, every step once
    assert [r["resumed_step"] for r in log.resumes] == [10]

    png = tmp_path / "s3.png"
    drawn = CliRunner().invoke(cli, ["plot", uri, "--endpoint", moto_endpoint, "-o", str(png), "--metrics", "loss"])
    assert drawn.exit_code == 0, drawn.output
    assert png.stat().st_size > 5_000 and png_size(png) == (800, 260)


def test_a_resumed_log_drops_what_a_lost_attempt_logged_past_its_checkpoint(tmp_path: Path) -> None:
    log = JsonlLog(tmp_path / "metrics.jsonl")
    for step in range(1, 9):
        log.write({"step": step, "loss": 1.0 / step})
    (tmp_path / "metrics.jsonl").open("a").write('{"step": 9, "loss"')  # torn by the kill
    log.rewind(5)  # resumed from the step-5 checkpoint
    for step in range(6, 9):
        log.write({"step": step, "loss": 2.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    parsed = [json.loads(line) for line in lines if line.endswith("}")]
    assert [r["step"] for r in parsed] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert len(lines) == 9  # the torn line is kept (readers skip it), not silently dropped
