"""The SDK's one door to the trainer (torch and Ray live there, in the `trainer` extra): imported
inside a function, with a clear error naming the extra when it is not installed."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from rich.markup import escape

from ..spec.contract import TRAINER_EXTRA_HINT
from .console import err


@contextlib.contextmanager
def trainer_needed(command: str) -> Iterator[None]:
    """Imports in the block that fail end the command with the extra to install."""
    try:
        yield
    except ImportError as exc:
        err.print(f"[red]error[/] `{command}` needs the trainer ({escape(str(exc))}): {escape(TRAINER_EXTRA_HINT)}")
        sys.exit(1)


def local_run_class() -> Any:
    """The trainer's LocalRun, which `trainforge run` drives."""
    with trainer_needed("trainforge run"):
        from trainforge_trainer.local.runner import LocalRun
    return LocalRun


def exporter() -> Any:
    """The trainer's `export_from` (safetensors and the checkpoint readers)."""
    with trainer_needed("trainforge export"):
        from trainforge_trainer.model_files import export_from
    return export_from
