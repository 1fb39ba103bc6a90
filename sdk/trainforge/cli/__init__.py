"""`trainforge` command line: one group, one module per family of commands."""

from __future__ import annotations

import click

from .. import __version__
from .ckpt_cmd import checkpoints
from .export_cmd import export
from .job_cmds import COMMANDS as JOB_COMMANDS
from .metrics_cmd import metrics, plot
from .run_cmd import run
from .spec_cmds import crd, ship, validate, version
from .tune_cmd import tune_results


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="trainforge")
def cli() -> None:
    """Declare a TrainingJob; train it with DDP/FSDP2 + AMP on Ray Train, locally or on Kubernetes."""


cli.add_command(validate)
cli.add_command(crd)
cli.add_command(ship)
cli.add_command(version)
cli.add_command(run)
for command in JOB_COMMANDS:
    cli.add_command(command)
cli.add_command(checkpoints)
cli.add_command(export)
cli.add_command(metrics)
cli.add_command(plot)
cli.add_command(tune_results)


def main() -> None:
    cli(prog_name="trainforge")
