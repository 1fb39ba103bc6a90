"""`trainforge run`: the product's main job on a laptop."""

from __future__ import annotations

import contextlib
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
from .trainer_door import local_run_class


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--workers", type=click.IntRange(min=1), help="Override spec.workers.")
@click.option("--storage", help="Run storage: a directory or s3://bucket/prefix (default ./trainforge-runs).")
@click.option("--name", help="Run name (default metadata.name); the same name and storage resume a run.")
@click.option("--fresh", is_flag=True, help="Discard this run's checkpoints and start over (default: resume).")
@click.option("--dry-run", is_flag=True,
              help="Build the task and model (meta device), check a first batch, print the plan; no training.")
@click.option("--overfit-batch", is_flag=True,
              help="Sanity check: train on the first batch alone (--overfit-steps, at the peak lr) and report "
                   "whether its loss reaches ~0; exit 1 if not. No Ray, nothing saved.")
@click.option("--overfit-steps", type=click.IntRange(min=1), default=200, show_default=True,
              help="Optimizer steps of --overfit-batch.")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
def run(file: Path, workers: int | None, storage: str | None, name: str | None, fresh: bool, dry_run: bool,
        overfit_batch: bool, overfit_steps: int, output: str) -> None:
    """Run a TrainingJob locally on embedded Ray: same trainer code path as on a cluster.

    Running it again with the same name and storage resumes from the newest valid checkpoint.
    Exit codes: 0 succeeded, 1 failed, 75 preempted (SIGTERM: checkpointed; run again to resume)."""
    try:
        jobs = load_jobs(file)
    except SpecValidationError as exc:
        for issue in exc.issues:
            err.print(f"[red]error[/] {escape(str(issue))}")
        sys.exit(1)
    if len(jobs) != 1:
        raise click.UsageError(f"{file} holds {len(jobs)} TrainingJobs; run takes exactly one")
    local = local_run_class()(jobs[0], workers=workers, storage=storage, name=name, fresh=fresh)
    if dry_run:
        _dry_run(local, output)
        return
    if overfit_batch:
        _overfit(local, overfit_steps, output)
        return
    if local.spec.tune is not None:
        _sweep(local, output)
        return
    try:
        _announce(local, fresh)
        # Ray forwards its workers' and raylet's lines to the driver's stdout: with -o json they go
        # to stderr, so that stdout is the JSON document alone (`trainforge run -o json | jq` works).
        with contextlib.redirect_stdout(sys.stderr) if output == "json" else contextlib.nullcontext():
            outcome = _execute(local, show_progress=output == "text")
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: Ray was shut down cleanly")
        sys.exit(130)
    except (ValueError, RuntimeError) as exc:  # PreflightError, unusable storage
        err.print(f"[red]error[/] {escape(str(exc))}")
        sys.exit(1)
    if output == "json":
        click.echo(json.dumps(outcome.as_dict(), indent=2, default=str))
    else:
        _print_summary(outcome)
    sys.exit(outcome.exit_code)


def _dry_run(local: Any, output: str) -> None:
    try:
        plan = local.dry_run()
    except ValueError as exc:  # PreflightError, CodeError: each names the field
        err.print(f"[red]error[/] {escape(str(exc))}")
        sys.exit(1)
    if output == "json":
        click.echo(json.dumps(plan.as_dict(), indent=2))
    else:
        table = Table(title=f"{local.run_name}: dry run (nothing trained)", show_header=False)
        table.add_column("what")
        table.add_column("plan")
        for key, value in plan.rows:
            table.add_row(key, escape(value))
        out.print(table)
        for warning in plan.warnings:
            err.print(f"[yellow]warning[/] {escape(warning)}")
    sys.exit(0)


def _overfit(local: Any, steps: int, output: str) -> None:
    def show(step: int, loss: float) -> None:
        if output == "text" and (step == 1 or step % max(1, steps // 10) == 0):
            err.print(f"  step {step:>5}  loss {loss:.6g}")

    try:
        result = local.overfit_batch(steps, show)
    except ValueError as exc:  # a spec the trainer refuses names its field
        err.print(f"[red]error[/] {escape(str(exc))}")
        sys.exit(1)
    if output == "json":
        click.echo(json.dumps({"steps": result.steps, "first_loss": result.first, "last_loss": result.last,
                               "target": result.target, "passed": result.passed}, indent=2))
    else:
        colour = "green" if result.passed else "red"
        out.print(f"[{colour}]{escape(result.verdict())}[/]")
    sys.exit(0 if result.passed else 1)


def _sweep(local: Any, output: str) -> None:
    from .tune_cmd import print_outcome, run_sweep_live

    try:
        outcome = run_sweep_live(local, show_progress=output == "text")
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: running the same sweep again resumes it")
        sys.exit(130)
    except (ValueError, RuntimeError) as exc:
        err.print(f"[red]error[/] {escape(str(exc))}")
        sys.exit(1)
    result = outcome.as_dict()
    if output == "json":
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        if outcome.resumed:
            err.print(f"resumed sweep {local.run_name}: finished trials kept their results")
        print_outcome(result)
    sys.exit(0 if outcome.best is not None else 1)


def _announce(local: Any, fresh: bool) -> None:
    if local.spec.queue or local.spec.priority_class_name:
        err.print("[yellow]warning[/] spec.queue and spec.priorityClassName are for Kueue and the scheduler on a "
                  "cluster: this local run starts at once")
    found = [e for e in local.existing_checkpoints() if e.complete]
    if not found:
        return
    where = f"{local.storage_path.rstrip('/')}/{local.run_name}"
    if fresh:
        err.print(f"--fresh: discarding {len(found)} checkpoint(s) of run {local.run_name} at {where}")
    else:
        err.print(f"run {local.run_name} has {len(found)} checkpoint(s) at {where}, newest at step "
                  f"{found[-1].step}: resuming (--fresh starts over)")


def _report_events(report: dict[str, Any]) -> None:
    """One-off lines for what the progress bar cannot show."""
    for skipped in report.get("skipped_checkpoints") or []:
        err.print(f"[yellow]warning[/] skipped unusable checkpoint {escape(skipped)}")
    if "resumed_from" in report:
        err.print(f"resuming from step {report['resumed_step']} (checkpoint {escape(report['resumed_from'])})")
    for change in report.get("spec_changes") or []:
        err.print(f"[yellow]warning[/] spec changed since that checkpoint: {escape(change)}")
    if report.get("stop_reason") == "preempted":
        err.print(f"[yellow]preempted[/]: checkpoint saved at step {report.get('step')}; run again to resume")


def _execute(local: Any, show_progress: bool) -> Any:
    if not show_progress:
        return local.execute(_report_events)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        bar = progress.add_task(f"{local.run_name}: starting Ray", total=None, info="")

        def on_report(report: dict[str, Any]) -> None:
            _report_events(report)
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


_NOT_SHOWN = {"done", "skipped_checkpoints", "spec_changes", "resumed_from", "resumed_step", "preempted",
              "checkpoint_blocking_s"}


def _print_summary(outcome: Any) -> None:
    table = Table(title=f"{outcome.name}: {outcome.status}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in outcome.metrics.items():
        if key not in _NOT_SHOWN:
            table.add_row(key, _fmt(value))
    table.add_row("run directory", outcome.run_dir)
    out.print(table)
    if outcome.error:
        err.print(f"[red]error[/] {escape(outcome.error)}")
