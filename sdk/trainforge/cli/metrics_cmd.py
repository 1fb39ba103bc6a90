"""`trainforge metrics RUN` and `trainforge plot RUN`: a run's metrics log, as a table or as curves."""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ..runs import MetricsLog, read_metrics
from .console import err, out
from .job_cmds import Target, reported_errors, storage_or_job_options

_RUN = click.argument("run")
_STORAGE = click.option("--storage", help="Storage holding the run when RUN is a name (default ./trainforge-runs).")
_ENDPOINT = click.option("--endpoint", help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL).")


def load_log(run: str, storage: str | None, endpoint: str | None, target: Target) -> MetricsLog:
    """RUN's metrics: a job's (with --backend), or a run directory/URI's, or a run name under --storage."""
    if target.explicit_backend:
        if storage or endpoint or "/" in run:
            raise click.UsageError("with --backend, RUN is a job name and its storage comes from the job: "
                                   "drop --storage/--endpoint, or drop --backend to read storage directly")
        with reported_errors():
            return target.client().metrics(run)
    if target.namespace or target.context:
        raise click.UsageError("-n/--context find a submitted job: add --backend kubernetes")
    from ..checkpoints import resolve_storage
    from ..local import default_storage

    try:
        where = resolve_storage(run if "/" in run else storage or default_storage(), endpoint)
        log = read_metrics(where.filesystem, where.path if "/" in run else where.run_path(run))
    except (OSError, RuntimeError, ValueError) as exc:
        err.print(f"[red]error:[/] cannot read the metrics of {escape(run)}: {escape(str(exc))}")
        sys.exit(1)
    if log.skipped:
        err.print(f"[yellow]warning:[/] {log.skipped} lines of the log are not JSON objects; skipped")
    return log


@click.command()
@_RUN
@_STORAGE
@_ENDPOINT
@click.option("--output", "-o", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True)
@storage_or_job_options
def metrics(run: str, storage: str | None, endpoint: str | None, output: str, target: Target) -> None:
    """Print a run's metrics log (every report of every attempt). RUN is a run name or its directory/URI;
    with --backend, a submitted job's name."""
    log = load_log(run, storage, endpoint, target)
    if output == "json":
        click.echo(json.dumps(log.records, indent=1))
        return
    columns = ["epoch", "step", *[c for c in log.columns() if c not in ("epoch", "step", "total_steps", "time")]]
    if output == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["time", *columns], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(log.steps)
        click.echo(buffer.getvalue(), nl=False)
        return
    _print(log, columns)


def _print(log: MetricsLog, columns: list[str]) -> None:
    table = Table(*columns, title=f"{len(log.steps)} reports, {len(log.resumes)} resumes")
    for record in log.steps:
        table.add_row(*(_cell(record.get(c)) for c in columns))
    out.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


@click.command()
@_RUN
@_STORAGE
@_ENDPOINT
@click.option("--output", "-o", "path", type=click.Path(dir_okay=False), default="curves.png", show_default=True)
@click.option("--metrics", "names", help="Comma-separated metrics (default: loss, val_accuracy, lr, as logged).")
@storage_or_job_options
def plot(run: str, storage: str | None, endpoint: str | None, path: str, names: str | None, target: Target) -> None:
    """Draw a run's training curves into a PNG: train and validation against the step, resumes marked."""
    from pathlib import Path

    try:
        from ..runs.plot import plot_curves
    except ImportError:
        raise click.UsageError("trainforge plot needs matplotlib: pip install 'trainforge[plot]'") from None
    log = load_log(run, storage, endpoint, target)
    try:
        drawn = plot_curves(log, Path(path), [n.strip() for n in names.split(",")] if names else None, title=run)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    err.print(f"wrote {escape(path)}: {', '.join(drawn)} over {len(log.steps)} reports")
