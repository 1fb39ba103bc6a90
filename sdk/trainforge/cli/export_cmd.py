"""`trainforge export SOURCE -o DIR`: a consolidated model.safetensors from any checkpoint or run."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from .console import err
from .trainer_door import exporter


@click.command("export")
@click.argument("source")
@click.option("--output", "-o", "folder", type=click.Path(file_okay=False), required=True,
              help="Directory to write model.safetensors and trainforge-model.json into.")
@click.option("--storage", help="Storage holding the run when SOURCE is a run name (default ./trainforge-runs).")
@click.option("--endpoint", help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL).")
@click.option("--checkpoint", "which", type=click.Choice(["best", "latest"]), default="best", show_default=True,
              help="Which checkpoint of a run (by its keepBest / earlyStopping metric; else the newest).")
def export(source: str, folder: str, storage: str | None, endpoint: str | None, which: str) -> None:
    """Export a model: SOURCE is a checkpoint, a run (directory, URI or name under --storage) or an
    export. FSDP2 shards are consolidated in this process; the result is a valid spec.init.from."""
    from ..local import default_storage

    export_from = exporter()
    if "/" not in source and "://" not in source:
        source = f"{(storage or default_storage()).rstrip('/')}/{source}"
    try:
        written, used = export_from(source, Path(folder), which, endpoint)
    except (ValueError, OSError) as exc:  # WeightsError, a checkpoint refused, storage errors
        err.print(f"[red]error[/] {escape(str(exc))}")
        sys.exit(1)
    err.print(f"wrote {escape(str(written))} from {escape(used)}")
