"""Sweeps in the CLI: the live trial table of `trainforge run` and `trainforge tune-results`."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich import box
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from .console import err, out
from .job_cmds import Target, storage_or_job_options


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def trial_table(metric: str, rows: dict[str, dict[str, Any]], best: str | None = None) -> Table:
    paths = sorted({k for r in rows.values() for k in r.get("config", {})})
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("trial", "state", *paths, "epoch", metric):
        table.add_column(col, justify="left" if col in ("trial", "state") else "right", no_wrap=True)
    for trial, r in sorted(rows.items()):
        mark = " *" if trial == best else ""
        table.add_row(trial + mark, r.get("state", "-"), *(_fmt(r.get("config", {}).get(p)) for p in paths),
                      _fmt(r.get("epoch")), _fmt(r.get(metric)))
    return table


def run_sweep_live(local: Any, show_progress: bool) -> Any:
    metric = local.spec.tune.metric
    rows: dict[str, dict[str, Any]] = {}
    if not show_progress:
        return local.sweep()
    with Live(trial_table(metric, rows), console=err, refresh_per_second=4) as live:
        def on_result(trial: str, result: dict[str, Any]) -> None:
            row = rows.setdefault(trial, {})
            row.update({k: v for k, v in result.items() if k in ("config", "state", "epoch", metric)
                        and v is not None})
            live.update(trial_table(metric, rows))

        return local.sweep(on_result)


def print_outcome(outcome: dict[str, Any]) -> None:
    metric = outcome["metric"]
    best = outcome.get("best")
    rows = {t["trial"]: {"config": t["config"], "state": t["state"], "epoch": t["epochs"],
                         metric: t["metrics"].get(metric)} for t in outcome["trials"]}
    if rows or not outcome.get("counts"):
        out.print(trial_table(metric, rows, best["trial"] if best else None))
    else:  # a job's status summary: counts and the best, no per-trial table
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(outcome["counts"].items()))
        out.print(f"trials: {escape(counts)} (the full table is written when the sweep finishes)")
    if best:
        config = ", ".join(f"{k}={_fmt(v)}" for k, v in best["config"].items())
        out.print(f"best trial {escape(best['trial'])}: {metric} {_fmt(best['value'])} ({escape(config)})")
        if best.get("checkpoint"):
            out.print(f"checkpoint {escape(best['checkpoint'])}")


@click.command("tune-results")
@click.argument("name")
@click.option("--storage", help="Storage holding the sweep (default ./trainforge-runs).")
@click.option("--endpoint", help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL).")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
@storage_or_job_options
def tune_results(name: str, storage: str | None, endpoint: str | None, output: str, target: Target) -> None:
    """A finished sweep's trials and its best trial (config, metric, checkpoint).

    With --backend, NAME is a submitted sweep job: its results file is read from the job's storage,
    or, while none is written yet, the summary in its status is shown."""
    if target.explicit_backend:
        if storage or endpoint:
            raise click.UsageError("with --backend, the sweep's storage comes from the job: drop "
                                   "--storage/--endpoint, or drop --backend to read storage directly")
        outcome = target.client().tune_results(name)
    else:
        if target.namespace or target.context:
            raise click.UsageError("-n/--context find a submitted job: add --backend kubernetes")
        outcome = _from_storage(name, storage, endpoint)
    if output == "json":
        click.echo(json.dumps(outcome, indent=2))
    else:
        print_outcome(outcome)


def _from_storage(name: str, storage: str | None, endpoint: str | None) -> dict[str, Any]:
    from ..checkpoints import resolve_storage
    from ..checkpoints.results import load_outcome
    from ..local import default_storage

    try:
        outcome = load_outcome(resolve_storage(storage or default_storage(), endpoint), name)
    except (OSError, RuntimeError) as exc:
        err.print(f"[red]error[/] cannot read sweep {escape(name)}: {escape(str(exc))}")
        sys.exit(1)
    if outcome is None:
        err.print(f"[red]error[/] no sweep results for {escape(name)} (has `trainforge run` finished it?)")
        sys.exit(1)
    return outcome
