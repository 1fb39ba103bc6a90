"""Controller side: turn a spec into a Ray Train TorchTrainer, after checks that need no worker."""

from __future__ import annotations

from typing import Any

from torch.utils.data import IterableDataset
from trainforge.checkpoints import StorageTarget
from trainforge.spec import TrainingJobSpec

from .task import Task, TaskLoadError, build_task


class PreflightError(ValueError):
    """The job cannot run; raised before any Ray worker starts."""


def preflight(spec: TrainingJobSpec, cluster: dict[str, float] | None = None) -> None:
    """Import and build the task, and check the job fits the cluster, on the driver."""
    preflight_task(spec)
    if cluster is not None:
        check_fits(spec, cluster)


def preflight_task(spec: TrainingJobSpec) -> Task:
    """The spec's task, built; errors name the field (entrypoint, args, workers)."""
    try:
        task = build_task(spec.task.resolved_entrypoint, spec.task.args)
    except TaskLoadError as exc:
        raise PreflightError(str(exc)) from exc
    except ValueError as exc:  # the task's own argument checks
        raise PreflightError(f"spec.task.args: {exc}") from exc
    if not isinstance(task.train, IterableDataset):  # a stream's length is not known ahead
        n_train = len(task.train)  # type: ignore[arg-type]
        if n_train < spec.workers:
            raise PreflightError(f"spec.workers: {spec.workers} workers but only {n_train} training samples")
    elif spec.max_steps is None and spec.steps_per_epoch is None:
        raise PreflightError("spec.maxSteps or spec.stepsPerEpoch: the training data is a stream (an "
                             "IterableDataset) whose length is not known ahead, so spec.epochs alone gives no "
                             "step count; set either")
    for name, ds in (("validation", task.val), ("test", task.test)):
        if isinstance(ds, IterableDataset):
            raise PreflightError(f"spec.task: the {name} set is a stream (an IterableDataset); evaluation reads a "
                                 "map-style Dataset (with __len__), so every sample is counted exactly once")
    return task


def check_fits(spec: TrainingJobSpec, cluster: dict[str, float]) -> None:
    need = {"CPU": spec.workers * spec.cpus_per_worker, "GPU": float(spec.workers * spec.gpus_per_worker)}
    for resource, amount in need.items():
        have = cluster.get(resource, 0.0)
        if amount > have + 1e-9:
            field = "cpusPerWorker" if resource == "CPU" else "gpusPerWorker"
            raise PreflightError(
                f"spec.workers x spec.{field} needs {amount:g} {resource}s but this Ray cluster has {have:g}; "
                f"lower spec.workers or spec.{field}"
            )


def resources_per_worker(spec: TrainingJobSpec) -> dict[str, float]:
    resources: dict[str, float] = {"CPU": spec.cpus_per_worker}
    if spec.gpus_per_worker:
        resources["GPU"] = float(spec.gpus_per_worker)
    return resources


def make_trainer(spec: TrainingJobSpec, name: str, target: StorageTarget, callbacks: list[Any] | None = None,
                 preempt_flag: Any = None, run_dir: str | None = None, init_from: str | None = None,
                 owner: dict[str, Any] | None = None) -> Any:
    """Same name and storage as an earlier run: Ray Train restores that run, and the workers resume
    from its newest valid checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .dist import PG_TIMEOUT, backend_for
    from .ray_worker import train_loop_per_worker

    use_gpu = spec.gpus_per_worker > 0
    local = target.uri.startswith("/")
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.model_dump(mode="json", by_alias=True), "run_dir": run_dir,
                           "preempt_flag": preempt_flag, "init_from": init_from, "owner": owner},
        scaling_config=ScalingConfig(num_workers=spec.workers, use_gpu=use_gpu,
                                     resources_per_worker=resources_per_worker(spec)),
        torch_config=TorchConfig(backend=backend_for(use_gpu), timeout_s=int(PG_TIMEOUT.total_seconds())),
        run_config=RunConfig(
            name=name,
            storage_path=target.path if not local else target.uri,
            storage_filesystem=None if local else target.filesystem,
            failure_config=FailureConfig(max_failures=spec.restart_policy.max_worker_failures),
            # Retention is trainforge's (newest N plus best k, see callbacks.RetentionCallback).
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            callbacks=callbacks or [],
        ),
    )
