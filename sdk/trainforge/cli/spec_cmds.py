"""Commands that need only the spec (and, for ship, the storage): validate, crd, ship, version."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.markup import escape

from .. import __version__
from ..spec import SpecValidationError, load_jobs
from ..spec.crd import crd_yaml
from .console import err, out


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
def validate(files: tuple[Path, ...], output: str) -> None:
    """Check TrainingJob manifests; one line per problem with its YAML path; exit 1 on any."""
    report: list[dict[str, object]] = []
    for path in files:
        report.append(_validate_file(path))
    if output == "json":
        click.echo(json.dumps(report, indent=2))
    else:
        for entry in report:
            _print_entry(entry)
    sys.exit(0 if all(entry["valid"] for entry in report) else 1)


def _validate_file(path: Path) -> dict[str, object]:
    if not path.is_file():
        return {"file": str(path), "valid": False, "jobs": [],
                "errors": [{"where": str(path), "path": "", "message": "file not found"}]}
    try:
        jobs = load_jobs(path)
    except SpecValidationError as exc:
        errors = [{"where": i.where or str(path), "path": i.path, "message": i.message} for i in exc.issues]
        return {"file": str(path), "valid": False, "jobs": [], "errors": errors}
    summaries = [
        f"{j.name}: {j.spec.task.entrypoint}, {j.spec.workers} x {j.spec.strategy.type}, {j.spec.precision}"
        + (f", sweep of {j.spec.tune.num_samples}" if j.spec.tune else "")
        for j in jobs
    ]
    return {"file": str(path), "valid": True, "jobs": summaries, "errors": []}


def _print_entry(entry: dict[str, object]) -> None:
    if entry["valid"]:
        for summary in entry["jobs"]:  # type: ignore[attr-defined]
            out.print(f"[green]ok[/] {escape(str(entry['file']))}  {escape(summary)}")
        return
    for e in entry["errors"]:  # type: ignore[attr-defined]
        field = f"{e['path']}: " if e["path"] else ""
        err.print(f"[red]error[/] {escape(e['where'])}: [bold]{escape(field)}[/]{escape(e['message'])}")


@click.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file instead of stdout.")
def crd(output: Path | None) -> None:
    """Print the TrainingJob CustomResourceDefinition generated from the spec models."""
    text = crd_yaml()
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


@click.command()
def version() -> None:
    """Print trainforge's version and the API version it speaks."""
    from ..spec import API_VERSION

    click.echo(f"trainforge {__version__} ({API_VERSION})")


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the manifest to this file instead of stdout.")
def ship(file: Path, output: Path | None) -> None:
    """Pack and upload the job's local spec.runtime.workingDir to its checkpoint storage, and print
    the manifest with the package's URI in its place: `kubectl apply -f` of it runs the same code
    (the package is named by its SHA-256, which the trainer checks before running it)."""
    from ..code import CodeError
    from ..code import ship as ship_job
    from ..spec import dump_job

    try:
        jobs = load_jobs(file)
        shipped = [ship_job(job) for job in jobs]
    except SpecValidationError as exc:
        for issue in exc.issues:
            err.print(f"[red]error[/] {escape(str(issue))}")
        sys.exit(1)
    except (CodeError, OSError, RuntimeError) as exc:  # RuntimeError: no pyarrow for the upload
        err.print(f"[red]error[/] {escape(str(exc))}")
        sys.exit(1)
    text = "---\n".join(dump_job(job) for job in shipped)
    if output:
        output.write_text(text, encoding="utf-8")
        err.print(f"wrote {output}")
    else:
        click.echo(text, nl=False)
