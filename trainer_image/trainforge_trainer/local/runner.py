"""`trainforge run`: embedded Ray (dashboard off), one TorchTrainer fit, progress and a final summary."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainforge.checkpoints import CheckpointEntry, StorageTarget, list_checkpoints, resolve_storage
from trainforge.lifecycle import AttemptResult
from trainforge.local import default_storage
from trainforge.spec import TrainingJob, TrainingJobSpec

from ..code_env import runtime_env_of
from ..driver import discard_run, fit_run, prepare_ray_env
from ..launch import PreflightError, check_fits, preflight


@dataclass
class RunOutcome:
    name: str
    storage: str
    status: AttemptResult
    """Preempted: checkpointed on SIGTERM; running it again resumes."""
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    exit_code: int = 0

    @property
    def succeeded(self) -> bool:
        return self.status == AttemptResult.SUCCEEDED

    @property
    def run_dir(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "storage": self.storage, "runDir": self.run_dir, "status": self.status,
                "succeeded": self.succeeded, "metrics": self.metrics, "error": self.error}


@dataclass
class LocalRun:
    """One local run of a TrainingJob. `ray_init` kwargs let tests share a Ray per session."""

    job: TrainingJob
    workers: int | None = None
    storage: str | None = None
    name: str | None = None
    fresh: bool = False
    """Discard the run's earlier checkpoints instead of resuming from them."""
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

    @functools.cached_property
    def target(self) -> StorageTarget:
        """Resolved once: an S3 filesystem object is not free to build."""
        cfg = self.job.spec.checkpoint
        return resolve_storage(self.storage or cfg.storage or default_storage(), cfg.endpoint, cfg.region)

    @property
    def storage_path(self) -> str:
        return self.target.uri

    def existing_checkpoints(self) -> list[CheckpointEntry]:
        """The run's checkpoints already on storage (manifests only; the workers verify contents)."""
        target = self.target
        return list_checkpoints(target.filesystem, target.run_path(self.run_name), check=False)

    def execute(self, on_report: Callable[[dict[str, Any]], None] = lambda r: None) -> RunOutcome:
        import ray
        from ray.util.queue import Queue

        spec, target = self.spec, self.target
        runtime_env = self._runtime_env()
        preflight(spec)  # a bad task or impossible arguments fail here, before Ray starts anything
        if self.fresh:
            discard_run(target, self.run_name)
        started_ray = not ray.is_initialized()
        prepare_ray_env()
        if started_ray:
            ray.init(**self._init_kwargs(), runtime_env=runtime_env or None)
        try:
            check_fits(spec, ray.cluster_resources())
            reports = Queue(actor_options={"num_cpus": 0})
            from .progress import ReportPump, make_callback

            run_dir = target.run_path(self.run_name) if target.uri.startswith("/") else None
            with ReportPump(reports, on_report) as pump:
                result = fit_run(spec, self.run_name, target, [make_callback(reports)], run_dir)
            metrics = {**result.metrics, **(pump.final or pump.last)}
            return RunOutcome(self.run_name, target.uri, result.status, metrics, result.error, result.exit_code)
        finally:
            if started_ray:
                ray.shutdown()

    def sweep(self, on_result: Callable[[str, dict[str, Any]], None] | None = None) -> Any:
        """Run, or resume, the job's `spec.tune` sweep; returns the SweepOutcome."""
        import ray

        from ..sweep.runner import run_sweep

        spec, target = self.spec, self.target
        runtime_env = self._runtime_env()
        preflight(spec)
        if self.fresh:
            discard_run(target, self.run_name)
        started_ray = not ray.is_initialized()
        prepare_ray_env()
        if started_ray:
            # Tune over Train needs the dashboard: without it finished trials' placement groups linger.
            ray.init(**{**self._init_kwargs(), "include_dashboard": True}, runtime_env=runtime_env or None)
        try:
            return run_sweep(spec, self.run_name, target, on_result)
        finally:
            if started_ray:
                ray.shutdown()

    def dry_run(self) -> Any:
        """The checks a run makes before training, and its plan (`dry_run.DryRunPlan`); no Ray."""
        from ..dry_run import dry_run

        return dry_run(self.spec)

    def overfit_batch(self, steps: int, progress: Any = None) -> Any:
        """`--overfit-batch`: the job's model on its first batch alone (`overfit.OverfitResult`); no Ray."""
        from ..overfit import overfit_batch

        runtime_env_of(self.spec)  # the task may live in spec.runtime.workingDir
        return overfit_batch(self.spec, steps, progress)

    def _runtime_env(self) -> dict[str, Any]:
        """spec.runtime as Ray's job-level runtime_env: it only applies to a Ray this run connects to."""
        import ray

        runtime_env = runtime_env_of(self.spec, self.target.endpoint, self.target.region)
        if runtime_env and ray.is_initialized():
            raise PreflightError("spec.runtime applies to the Ray job a run starts, and Ray is already initialised "
                                 "in this process: run the job with `trainforge run` (or set RAY_ADDRESS to join "
                                 "a running cluster) instead of from a process that called ray.init")
        return runtime_env

    def _init_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if not os.environ.get("RAY_ADDRESS"):  # RAY_ADDRESS: join that cluster, which sizes itself
            kwargs["num_cpus"] = os.cpu_count() or 1
        kwargs.update(self.ray_init)
        return kwargs
