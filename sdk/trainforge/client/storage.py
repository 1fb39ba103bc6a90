"""Where a submitted job keeps its checkpoints and sweep results, seen from the client."""

from __future__ import annotations

from typing import Any

from ..checkpoints import StorageTarget, resolve_storage
from ..checkpoints.results import load_outcome
from ..spec import TrainingJob
from .errors import StorageUnavailable


def storage_uri(job: TrainingJob, backend: str) -> str:
    """The storage URI the job's runs live under (the parent of its run directory)."""
    cfg = job.spec.checkpoint
    if cfg.storage:
        return cfg.storage
    latest = job.status.latest_checkpoint if job.status else None
    marker = f"/{job.name}/"
    if latest and marker in latest:  # <storage>/<name>/checkpoint_…: the operator's default storage
        return latest[: latest.rindex(marker)]
    if backend == "local":
        from ..local import default_storage

        return default_storage()
    raise StorageUnavailable(
        f"job {job.name} sets no spec.checkpoint.storage and has no checkpoint yet, so its storage "
        "(the operator's default) is not known here; read it with `trainforge checkpoints NAME --storage URI`")


def job_storage(job: TrainingJob, backend: str) -> StorageTarget:
    uri = storage_uri(job, backend)
    cfg = job.spec.checkpoint
    try:
        return resolve_storage(uri, cfg.endpoint, cfg.region)
    except (OSError, RuntimeError) as exc:
        raise StorageUnavailable(f"cannot open storage {uri} of job {job.name}: {exc}") from None


def read_tune_results(job: TrainingJob, backend: str) -> dict[str, Any]:
    """The sweep's saved outcome from storage; else what `status.tune` holds (counts, best)."""
    assert job.spec.tune is not None
    try:
        outcome = load_outcome(job_storage(job, backend), job.name)
    except (StorageUnavailable, OSError):
        outcome = None
    if outcome is not None:
        return outcome
    tune = job.status.tune if job.status else None
    if tune is None:
        raise StorageUnavailable(f"job {job.name} has no sweep results yet (no trial has reported)")
    return {"name": job.name, "metric": job.spec.tune.metric, "mode": job.spec.tune.mode, "resumed": False,
            "counts": dict(tune.trials), "trials": [],
            "best": tune.best.model_dump(mode="json", by_alias=True) if tune.best else None}
