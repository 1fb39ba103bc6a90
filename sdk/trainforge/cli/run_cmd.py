"""`trainforge run`: the product's main job on a laptop."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..spec import SpecValidationError, load_jobs
from .console import err, out


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--workers", type=click.IntRange(min=1), help="Override spec.workers.")
@click.option("--storage", help="Run storage: a directory or s3://bucket/prefix (default ./trainforge-runs).")
@click.option("--name", help="Run name (default metadata.name); the same name and storage resume a run.")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
def run(file: Path, workers: int | None, storage: str | None, name: str | None, output: str) -> None:
    """Run a TrainingJob locally on embedded Ray: same trainer code path as on a cluster."""
    try:
        jobs = load_jobs(file)
    except SpecValidationError as exc:
        for issue in exc.issues:
            err.print(f"[red]error[/] {escape(str(issue))}")
        sys.exit(1)
    if len(jobs) != 1:
        raise click.UsageError(f"{file} holds {len(jobs)} TrainingJobs; run takes exactly one")
    from ..local import LocalRun

    local = LocalRun(jobs[0], workers=workers, storage=storage, name=name)
    try:
        outcome = _execute(local, show_progress=output == "text")
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: Ray was shut down cleanly")
        sys.exit(130)
    except ValueError as exc:  # PreflightError: bad task, impossible resources
        err.print(f"[red]error[/] {escape(str(exc))}")
        sys.exit(1)
    if output == "json":
        click.echo(json.dumps(outcome.as_dict(), indent=2, default=str))
    else:
        _print_summary(outcome)
    sys.exit(0 if outcome.succeeded else 1)


def _execute(local: Any, show_progress: bool) -> Any:
    if not show_progress:
        return local.execute()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        bar = progress.add_task(f"{local.run_name}: starting Ray", total=None, info="")

        def on_report(report: dict[str, Any]) -> None:
            info = "  ".join(
                f"{k} {_fmt(report[k])}" for k in ("loss", "lr", "samples_per_s", "val_loss", "val_accuracy")
                if k in report
            )
            progress.update(bar, description=f"{local.run_name} epoch {report.get('epoch', 0)}",
                            completed=report.get("step", 0), total=report.get("total_steps"), info=info)

        return local.execute(on_report)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _print_summary(outcome: Any) -> None:
    table = Table(title=f"{outcome.name}: {'succeeded' if outcome.succeeded else 'failed'}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in outcome.metrics.items():
        if key != "done":
            table.add_row(key, _fmt(value))
    table.add_row("run directory", outcome.run_dir)
    out.print(table)
    if outcome.error:
        err.print(f"[red]error[/] {escape(outcome.error)}")
