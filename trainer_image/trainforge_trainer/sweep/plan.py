"""Resource arithmetic for a sweep: what one trial needs, how many fit at once, and a clear error
when not even one does. A trial = a driver (a sliver of a CPU) + its Train workers."""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainforge.spec import TrainingJobSpec

from ..launch import PreflightError

DRIVER_CPU = 0.01
"""The trial driver only waits on its TorchTrainer; a whole CPU for it would deadlock a 2-CPU machine."""


@dataclass(frozen=True)
class SweepPlan:
    cpus_per_trial: float
    gpus_per_trial: float
    concurrent: int
    requested: int | None

    @property
    def limited_by_cluster(self) -> bool:
        return self.requested is not None and self.concurrent < self.requested


def plan_sweep(spec: TrainingJobSpec, cluster: dict[str, float]) -> SweepPlan:
    assert spec.tune is not None
    cpus = DRIVER_CPU + spec.workers * spec.cpus_per_worker
    gpus = float(spec.workers * spec.gpus_per_worker)
    have_cpu, have_gpu = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    if cpus > have_cpu + 1e-9:
        fit = max((have_cpu - DRIVER_CPU) / spec.workers, 0.0)
        raise PreflightError(
            f"spec.tune: one trial needs {cpus:g} CPUs ({spec.workers} workers x spec.cpusPerWorker "
            f"{spec.cpus_per_worker:g} + {DRIVER_CPU} for the trial driver) but this Ray cluster has "
            f"{have_cpu:g}; set spec.cpusPerWorker <= {math.floor(fit * 100) / 100:g} or lower spec.workers")
    if gpus > have_gpu + 1e-9:
        raise PreflightError(f"spec.tune: one trial needs {gpus:g} GPUs (spec.workers x spec.gpusPerWorker) "
                             f"but this Ray cluster has {have_gpu:g}")
    fits = math.floor((have_cpu + 1e-9) / cpus)
    if gpus:
        fits = min(fits, math.floor((have_gpu + 1e-9) / gpus))
    requested = spec.tune.max_concurrent
    concurrent = max(1, min(fits, requested or fits, spec.tune.num_samples * _grid_size(spec)))
    return SweepPlan(cpus, gpus, concurrent, requested)


def _grid_size(spec: TrainingJobSpec) -> int:
    assert spec.tune is not None
    size, enumerated = 1, ("grid", "choice") if spec.tune.search.type == "grid" else ("grid",)
    for domain in spec.tune.space.values():
        if domain.kind in enumerated:
            size *= len(getattr(domain, domain.kind) or [])
    return size
