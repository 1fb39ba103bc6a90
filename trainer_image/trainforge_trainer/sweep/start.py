"""A trial's Train run waits a bounded time for its workers' resources, then fails with a reason.

Ray Train V2 waits `RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S` (60 s by default) for the worker
placement group, then counts a controller failure and tries again; `FailureConfig`'s
`controller_failure_limit` is -1 (retry forever) by default. A trial whose resources never free up
would wait forever with the machine idle. Here: one wait of `spec.tune.trialStartTimeoutSeconds`,
no retry, and an error that names what the trial waited for and the field that bounds it."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from trainforge.spec import TrainingJobSpec

from .plan import DRIVER_CPU

START_TIMEOUT_FIELD = "spec.tune.trialStartTimeoutSeconds"


class TrialStartTimeout(RuntimeError):
    """The trial's Train workers never got their resources within the bound."""


def bound_worker_start(trainer: Any, timeout_s: float) -> None:
    """Before `trainer.fit()`, in the trial's own process: the controller inherits the variable
    (Ray Train propagates it from the process that calls fit) and gives up on the first timeout.

    Note:
        A trial's Train run never restarts its worker group itself (`max_failures=0`); Tune retries
        the trial instead (`sweep_failure_config`), which resumes it from its checkpoint. When a
        scheduler stops a trial, its controller is terminated and its workers die with it; a
        controller allowed to retry would, while dying, start a new worker group and create a
        placement group that nothing registered or removes (seen in `bench/sweep_stress.py`), and
        the next trial would wait on that group's CPUs.
    """
    from ray.train.v2._internal.constants import WORKER_GROUP_START_TIMEOUT_S_ENV_VAR

    os.environ[WORKER_GROUP_START_TIMEOUT_S_ENV_VAR] = f"{timeout_s:g}"
    run_config = trainer.run_config
    run_config.failure_config = dataclasses.replace(run_config.failure_config, controller_failure_limit=0,
                                                    max_failures=0)


def sweep_failure_config(spec: TrainingJobSpec) -> Any:
    """Tune's retries of a failed trial: spec.restartPolicy.maxWorkerFailures, as a single run's
    Train restarts (a retried trial resumes from its newest checkpoint)."""
    from ray import tune

    return tune.FailureConfig(max_failures=spec.restart_policy.max_worker_failures)


def fit_within_start_bound(trainer: Any, spec: TrainingJobSpec, trial_id: str, timeout_s: float) -> Any:
    """`trainer.fit()`; a worker-group start timeout becomes a TrialStartTimeout with the reason."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2.api.exceptions import ControllerError

    bound_worker_start(trainer, timeout_s)
    try:
        return trainer.fit()
    except ControllerError as exc:
        if not isinstance(exc.controller_failure, WorkerGroupStartupTimeoutError):
            raise
        raise TrialStartTimeout(start_timeout_reason(spec, trial_id, timeout_s)) from None


def start_timeout_reason(spec: TrainingJobSpec, trial_id: str, timeout_s: float) -> str:
    import ray

    from ..launch import resources_per_worker

    free = ray.available_resources()
    have = ", ".join(f"{free.get(k, 0.0):g} {k}" for k in ("CPU", "GPU") if k == "CPU" or spec.gpus_per_worker)
    return (f"trial {trial_id}: its Train workers did not get their resources within {timeout_s:g} s "
            f"({START_TIMEOUT_FIELD}): it waited for {spec.workers} x {resources_per_worker(spec)} "
            f"(plus {DRIVER_CPU} CPU for the trial driver, already held); the cluster has {have} free. "
            f"Free those resources (another trial or job holds them), lower spec.workers or "
            f"spec.cpusPerWorker, or raise {START_TIMEOUT_FIELD}")
