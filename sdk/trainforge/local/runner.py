"""`trainforge run`: embedded Ray (dashboard off), one TorchTrainer fit, progress and a final summary."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..spec import TrainingJob, TrainingJobSpec

DEFAULT_ROOT = "trainforge-runs"
REPORT_POLL_S = "0.1"


def default_storage() -> str:
    return str(Path(DEFAULT_ROOT).resolve())


@dataclass
class RunOutcome:
    name: str
    storage: str
    succeeded: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def run_dir(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "storage": self.storage, "runDir": self.run_dir,
                "succeeded": self.succeeded, "metrics": self.metrics, "error": self.error}


@dataclass
class LocalRun:
    """One local run of a TrainingJob. `ray_init` kwargs let tests share a Ray per session."""

    job: TrainingJob
    workers: int | None = None
    storage: str | None = None
    name: str | None = None
    ray_init: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> TrainingJobSpec:
        spec = self.job.spec
        if self.workers is not None:
            spec = TrainingJobSpec.model_validate({**spec.model_dump(by_alias=True, exclude_unset=True),
                                                   "workers": self.workers})
        return spec

    @property
    def run_name(self) -> str:
        return self.name or self.job.name

    @property
    def storage_path(self) -> str:
        target = self.storage or self.job.spec.checkpoint.storage or default_storage()
        return target if "://" in target else str(Path(target).resolve())

    def execute(self, on_report: Callable[[dict[str, Any]], None] = lambda r: None) -> RunOutcome:
        import ray
        from ray.util.queue import Queue
        from trainforge_trainer.launch import check_fits, make_trainer, preflight

        spec = self.spec
        preflight(spec)  # a bad task or impossible arguments fail here, before Ray starts anything
        started_ray = not ray.is_initialized()
        prepare_ray_env()
        if started_ray:
            ray.init(**self._init_kwargs(spec))
        try:
            check_fits(spec, ray.cluster_resources())
            reports = Queue(actor_options={"num_cpus": 0})
            from .progress import ReportPump, make_callback

            trainer = make_trainer(spec, self.run_name, self.storage_path, callbacks=[make_callback(reports)])
            with ReportPump(reports, on_report) as pump:
                try:
                    trainer.fit()
                    error = None
                except Exception as exc:  # TrainingFailedError carries the worker's traceback
                    error = _short_error(exc)
            return RunOutcome(self.run_name, self.storage_path, error is None, pump.final or pump.last, error)
        finally:
            if started_ray:
                ray.shutdown()

    def _init_kwargs(self, spec: TrainingJobSpec) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "num_cpus": os.cpu_count() or 1,
            "log_to_driver": False,
            "configure_logging": False,
        }
        kwargs.update(self.ray_init)
        return kwargs


def prepare_ray_env() -> None:
    """Environment Ray must see before `ray.init` (the local cluster's processes inherit it)."""
    # Train V2 workers hand each report to a one-slot queue that the controller drains once per
    # health check (2 s by default): without this every report would stall training that long.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", REPORT_POLL_S)


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # The worker's own exception line is the last line of the embedded traceback.
    return lines[-1] if lines else type(exc).__name__
