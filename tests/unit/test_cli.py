"""The console script as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from trainforge import __version__
from trainforge.cli import cli

from tests.conftest import EXAMPLES


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "trainforge"
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=60)


def test_console_script_validates_examples() -> None:
    result = run_cli("validate", *map(str, EXAMPLES))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok ") == len(EXAMPLES)


def test_console_script_reports_errors_one_per_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: trainforge.dev/v1alpha1\nkind: TrainingJob\nmetadata:\n  name: x\n"
        "spec:\n  task:\n    entrypoint: digits\n  epochs: 1\n  batch:\n    gradAccumulation: 0\n"
        "  precision: fp8\n"
    )
    result = run_cli("validate", str(bad))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error {bad}:10: spec.batch.gradAccumulation: must be greater than or equal to 1 (got 0)",
        f"error {bad}:11: spec.precision: must be one of 'fp32', 'bf16' or 'fp16' (got 'fp8')",
    ]


def test_validate_json_output_and_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", "-o", "json", str(EXAMPLES[0]), str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert [r["valid"] for r in report] == [True, False]
    assert report[1]["errors"][0]["message"] == "file not found"


def test_multi_document_file_reports_each_document(tmp_path: Path) -> None:
    text = EXAMPLES[0].read_text()
    path = tmp_path / "two.yaml"
    path.write_text(text + "\n---\n" + text.replace("workers: 2", "workers: -1"))
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 1
    line_count = len(text.splitlines())
    (line,) = [ln for ln in result.output.splitlines() if "spec.workers" in ln]
    line_no = int(line.split(":")[1])
    assert line_no > line_count  # points into the second document


def test_invalid_yaml_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("spec: [unclosed\n")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 1
    assert "not valid YAML" in result.output


def test_version_and_help() -> None:
    result = CliRunner().invoke(cli, ["version"])
    assert result.output.strip() == f"trainforge {__version__} (trainforge.dev/v1alpha1)"
    help_text = CliRunner().invoke(cli, ["--help"]).output
    for command in ("validate", "crd", "run", "submit", "status", "logs", "events", "list", "delete", "suspend",
                    "resume", "checkpoints", "tune-results"):
        assert command in help_text


def test_submit_of_a_missing_file_is_one_error_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["submit", str(tmp_path / "job.yaml"), "--backend", "local",
                                      "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot read {tmp_path / 'job.yaml'}")
