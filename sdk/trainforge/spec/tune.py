"""Ray Tune sweep over any spec path."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from .base import PositiveInt, Problems, SpecModel, check_only_for

_DOMAIN_KINDS = ("uniform", "loguniform", "randint", "choice", "grid")


class Domain(SpecModel):
    """Exactly one of uniform/loguniform/randint [low, high] or choice/grid [values...]."""

    uniform: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    loguniform: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    randint: Annotated[list[int], Field(min_length=2, max_length=2)] | None = None
    """[low, high): high is exclusive, as in Ray Tune."""
    choice: list[Any] | None = None
    grid: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind_with_sane_bounds(self) -> Domain:
        problems = Problems()
        kinds = [k for k in _DOMAIN_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"set exactly one of {', '.join(_DOMAIN_KINDS)}"
                + (f" (got {', '.join(kinds)})" if kinds else ""),
            )
        kind = kinds[0]
        values = getattr(self, kind)
        if kind in ("choice", "grid") and not values:
            problems.add(kind, "must list at least one value")
        if kind in ("uniform", "loguniform", "randint") and not values[0] < values[1]:
            problems.add(kind, f"needs low < high, got [{values[0]}, {values[1]}]")
        if kind == "loguniform" and values[0] <= 0:
            problems.add(kind, f"bounds must be > 0 (log of {values[0]} is undefined), e.g. [1e-5, 1e-2]")
        if kind in ("uniform", "loguniform") and not all(math.isfinite(v) for v in values):
            problems.add(kind, "bounds must be finite numbers")
        problems.raise_if_any()
        return self

    @property
    def kind(self) -> str:
        return next(k for k in _DOMAIN_KINDS if getattr(self, k) is not None)

    def probe_values(self) -> list[Any]:
        """Values that span the domain: every listed value, or both ends of a range."""
        kind = self.kind
        values = getattr(self, kind)
        if kind in ("uniform", "loguniform"):
            return [float(v) for v in values]
        if kind == "randint":
            return [values[0], values[1] - 1]
        return list(values)


SCHEDULER_FIELDS: dict[str, tuple[str, ...]] = {
    "fifo": (),
    "asha": ("time_attr", "max_t", "grace_period", "reduction_factor"),
    "hyperband": ("time_attr", "max_t", "reduction_factor"),
    "median": ("time_attr", "grace_period", "min_samples_required"),
    "pbt": ("time_attr", "perturbation_interval", "quantile_fraction", "resample_probability"),
}


class TuneScheduler(SpecModel):
    type: Literal["fifo", "asha", "hyperband", "median", "pbt"] = "fifo"
    time_attr: str | None = None
    """Progress measure the scheduler counts in (default training_iteration: one per report)."""
    max_t: PositiveInt | None = None
    grace_period: PositiveInt | None = None
    reduction_factor: Annotated[float, Field(gt=1)] | None = None
    min_samples_required: PositiveInt | None = None
    perturbation_interval: PositiveInt | None = None
    quantile_fraction: Annotated[float, Field(gt=0, le=0.5)] | None = None
    resample_probability: Annotated[float, Field(ge=0, le=1)] | None = None

    @model_validator(mode="after")
    def _fields_match_type(self) -> TuneScheduler:
        problems = Problems()
        check_only_for(problems, self, "type", self.type, SCHEDULER_FIELDS)
        if self.type == "pbt" and self.perturbation_interval is None:
            problems.add("perturbationInterval", "is required for type: pbt (reports between perturbations)")
        if self.grace_period is not None and self.max_t is not None and self.grace_period > self.max_t:
            problems.add("gracePeriod", f"must be <= maxT ({self.max_t})")
        problems.raise_if_any()
        return self


class TuneSearch(SpecModel):
    type: Literal["random", "grid", "optuna"] = "random"
    seed: int | None = None


class TuneConfig(SpecModel):
    metric: str
    """Metric the sweep optimises, as reported by the trainer (e.g. val_accuracy)."""
    mode: Literal["min", "max"]
    num_samples: PositiveInt = 1
    """Trials to run (for grid search: repetitions of the whole grid)."""
    max_concurrent: PositiveInt | None = None
    scheduler: TuneScheduler = Field(default_factory=TuneScheduler)
    search: TuneSearch = Field(default_factory=TuneSearch)
    space: Annotated[dict[str, Domain], Field(min_length=1)]
    """Spec path (as written in YAML, e.g. optimizer.lr or task.args.hidden) -> domain."""
    trial_start_timeout_seconds: Annotated[float, Field(gt=0)] = 600.0
    """How long a trial's Train workers may wait for their resources (CPUs/GPUs held by other
    trials or jobs) before the trial fails with the reason, instead of waiting forever. A failed
    trial is retried up to spec.restartPolicy.maxWorkerFailures times, each retry waiting again."""

    @model_validator(mode="after")
    def _search_fits_space(self) -> TuneConfig:
        problems = Problems()
        kinds = {path: d.kind for path, d in self.space.items()}
        if self.search.type == "grid":
            for path, kind in kinds.items():
                if kind not in ("grid", "choice"):
                    problems.add(("space", path, kind), "search type grid needs grid or choice values")
        if self.search.type == "optuna":
            for path, kind in kinds.items():
                if kind == "grid":
                    problems.add(("space", path, "grid"), "optuna cannot search a grid; use choice")
        if self.scheduler.type == "pbt" and self.search.type == "optuna":
            problems.add(("search", "type"), "pbt explores by itself; use search type random with pbt")
        problems.raise_if_any()
        return self
