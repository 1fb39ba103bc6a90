"""The local backend's state on disk (`jobstate`) and its lifecycle passes (`passes`). Running a job
needs the trainer (`trainforge_trainer.local`: the supervisor and `trainforge run`)."""

from __future__ import annotations

from pathlib import Path

from ..spec.contract import DEFAULT_LOCAL_ROOT

__all__ = ["default_storage"]


def default_storage() -> str:
    """Where `trainforge run` keeps runs when neither the job nor the command says."""
    return str(Path(DEFAULT_LOCAL_ROOT).resolve())
