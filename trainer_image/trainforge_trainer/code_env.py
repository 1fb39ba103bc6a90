"""spec.runtime on the Ray driver: the job-level runtime_env every Ray worker of the run inherits
(working_dir, pip, env_vars), and the same code and variables for the driver itself, which imports
the task before any worker starts."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from trainforge.checkpoints.retry import Retry
from trainforge.code import materialize
from trainforge.spec import TrainingJobSpec

log = logging.getLogger("trainforge.code")


def runtime_env_of(spec: TrainingJobSpec, endpoint: str | None = None, region: str | None = None) -> dict[str, Any]:
    """Ray's runtime_env for the job (empty without spec.runtime), its code fetched and checked.

    Args:
        spec: the job; its checkpoint storage's retry window bounds the download.
        endpoint, region: of the storage the package lies in (the job's own).

    Note:
        Also puts the code on this process's sys.path and the variables in its environment: the
        driver builds the task once (preflight) before Ray Train starts the workers.
    """
    runtime = spec.runtime
    if runtime is None:
        return {}
    env: dict[str, Any] = {}
    if runtime.working_dir is not None:
        code = materialize(runtime, endpoint, region, Retry.for_config(spec.checkpoint))
        env["working_dir"] = str(code)
        _on_driver_path(code)
        log.info("code of spec.runtime.workingDir (%s) at %s", runtime.working_dir, code)
    if runtime.pip:
        env["pip"] = list(runtime.pip)
    if runtime.env:
        env["env_vars"] = dict(runtime.env)
        os.environ.update(runtime.env)
    return env


def _on_driver_path(code: Path) -> None:
    if str(code) not in sys.path:
        sys.path.insert(0, str(code))
        importlib.invalidate_caches()
