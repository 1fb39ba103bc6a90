"""`trainforge checkpoints NAME|URI`: what a run has on storage, and whether each one is usable."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from .console import err, out
from .job_cmds import Target, storage_or_job_options

_SHOWN_METRICS = ("val_loss", "val_accuracy")


@click.command()
@click.argument("run")
@click.option("--storage", help="Storage holding the run when RUN is a name (default ./trainforge-runs).")
@click.option("--endpoint", help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL).")
@click.option("--verify", "hashes", is_flag=True, help="Also check every file's SHA-256 (reads everything).")
@click.option("--all", "show_all", is_flag=True, help="Include pruned checkpoints.")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
@storage_or_job_options
def checkpoints(run: str, storage: str | None, endpoint: str | None, hashes: bool, show_all: bool,
                output: str, target: Target) -> None:
    """List a run's checkpoints: step, metrics, size, validity. RUN is a run name or its directory/URI.

    With --backend, RUN is a submitted job's name, and its storage is found through the job
    (spec.checkpoint.storage, or where its checkpoints went) instead of --storage."""
    if target.explicit_backend:
        if storage or endpoint or "/" in run:
            raise click.UsageError("with --backend, RUN is a job name and its storage comes from the job: "
                                   "drop --storage/--endpoint, or drop --backend to read storage directly")
        entries = target.client().checkpoints(run, verify=hashes, include_pruned=True)  # --all filters below
        where = f"job {run}"
    else:
        if target.namespace or target.context:
            raise click.UsageError("-n/--context find a submitted job: add --backend kubernetes")
        entries, where = _from_storage(run, storage, endpoint, hashes)
    rows = [_row(e) for e in entries if show_all or (e.manifest is None or e.manifest.status != "pruned")]
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        err.print(f"no checkpoints under {escape(where)}")
        sys.exit(1)
    _print(rows)


def _from_storage(run: str, storage: str | None, endpoint: str | None, hashes: bool) -> tuple[list[Any], str]:
    """A run's checkpoints read straight from storage: RUN is a directory/URI, or a name under --storage."""
    from ..checkpoints import list_checkpoints, resolve_storage
    from ..local import default_storage

    try:
        if "/" in run:  # a run directory or URI
            target = resolve_storage(run, endpoint)
            path = target.path
        else:
            target = resolve_storage(storage or default_storage(), endpoint)
            path = target.run_path(run)
        return list_checkpoints(target.filesystem, path, hashes=hashes), path
    except (OSError, RuntimeError) as exc:
        err.print(f"[red]error[/] cannot read {escape(run)}: {escape(str(exc))}")
        sys.exit(1)


def _row(entry: Any) -> dict[str, Any]:
    m = entry.manifest
    return {
        "name": entry.name, "path": entry.path, "step": entry.step, "epoch": m.epoch if m else None,
        "reason": m.reason if m else None, "status": m.status if m else "incomplete",
        "valid": entry.verdict.valid, "problem": entry.verdict.reason or None,
        "sizeBytes": m.size if m else None, "worldSize": m.world_size if m else None,
        "created": dt.datetime.fromtimestamp(m.created, dt.UTC).isoformat(timespec="seconds") if m else None,
        "metrics": m.metrics if m else {},
    }


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _print(rows: list[dict[str, Any]]) -> None:
    table = Table(show_header=True, box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("step", "epoch", "reason", *_SHOWN_METRICS, "size", "valid", "checkpoint"):
        table.add_column(col, justify="right" if col in ("step", "epoch", "size", *_SHOWN_METRICS) else "left",
                         no_wrap=True)
    for r in rows:
        metrics = [f"{r['metrics'][k]:.4g}" if isinstance(r["metrics"].get(k), float) else "-" for k in _SHOWN_METRICS]
        valid = "[green]yes[/]" if r["valid"] else f"[red]no[/]: {escape(r['problem'] or r['status'])}"
        table.add_row(str(r["step"]), str(r["epoch"] if r["epoch"] is not None else "-"), r["reason"] or "-",
                      *metrics, _size(r["sizeBytes"]), valid, escape(r["name"]))
    out.print(table)
