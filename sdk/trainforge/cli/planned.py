"""Commands whose engine is not part of this release yet.

They exist now so the command tree, its options and `--help` are stable for scripts; invoking one
says plainly that it is unavailable and exits 2 (usage error), rather than pretending to work.
"""

from __future__ import annotations

import click

_PLANNED: dict[str, tuple[str, list[click.Parameter]]] = {
    "submit": ("Submit a TrainingJob to a cluster.", [
        click.Argument(["file"]), click.Option(["--wait"], is_flag=True),
        click.Option(["--follow"], is_flag=True), click.Option(["--namespace", "-n"]),
    ]),
    "status": ("Show a job's phase, conditions, progress and checkpoints.", [
        click.Argument(["name"]), click.Option(["--namespace", "-n"]),
    ]),
    "logs": ("Stream a job's driver or worker logs.", [
        click.Argument(["name"]), click.Option(["--follow", "-f"], is_flag=True),
        click.Option(["--attempt"], type=int), click.Option(["--rank"], type=int),
    ]),
    "list": ("List TrainingJobs.", [click.Option(["--namespace", "-n"]), click.Option(["--phase"])]),
    "delete": ("Delete a TrainingJob (checkpoints are kept).", [click.Argument(["name"])]),
    "suspend": ("Suspend a job after an emergency checkpoint.", [click.Argument(["name"])]),
    "resume": ("Resume a suspended job from its checkpoint.", [click.Argument(["name"])]),
}


def _unavailable(name: str) -> click.Command:
    def callback(**_: object) -> None:
        raise click.UsageError(f"'trainforge {name}' is not available in this release yet")

    help_text, params = _PLANNED[name]
    return click.Command(name, callback=callback, params=params, help=f"{help_text} (not yet available)")


def register_planned(group: click.Group) -> None:
    for name in _PLANNED:
        group.add_command(_unavailable(name))
