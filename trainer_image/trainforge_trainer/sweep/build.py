"""Schedulers and search algorithms from `spec.tune`."""

from __future__ import annotations

from typing import Any

from trainforge.spec.tune import TuneConfig

from .space import tune_domain

DEFAULT_TIME_ATTR = "epoch"
"""Our own counter: Tune's training_iteration restarts when a trial resumes without a Tune checkpoint."""


def make_scheduler(cfg: TuneConfig) -> Any:
    from ray.tune import schedulers

    s, common = cfg.scheduler, {"metric": cfg.metric, "mode": cfg.mode}
    time_attr = s.time_attr or DEFAULT_TIME_ATTR
    given = {k: v for k, v in {"max_t": s.max_t, "grace_period": s.grace_period,
                               "reduction_factor": s.reduction_factor,
                               "min_samples_required": s.min_samples_required}.items() if v is not None}
    if s.type == "fifo":
        return schedulers.FIFOScheduler()
    if s.type == "asha":
        return schedulers.ASHAScheduler(time_attr=time_attr, **common, **given)
    if s.type == "hyperband":
        return schedulers.HyperBandScheduler(time_attr=time_attr, **common, **given)
    if s.type == "median":
        return schedulers.MedianStoppingRule(time_attr=time_attr, **common, **given)
    mutations = {path: tune_domain(d, for_mutation=True) for path, d in cfg.space.items()}
    extra = {k: v for k, v in {"quantile_fraction": s.quantile_fraction,
                               "resample_probability": s.resample_probability}.items() if v is not None}
    return schedulers.PopulationBasedTraining(time_attr=time_attr, **common,
                                              perturbation_interval=s.perturbation_interval,
                                              hyperparam_mutations=mutations, **extra)


def make_search(cfg: TuneConfig, concurrent: int) -> Any:
    """Random/grid: Tune's variant generator (it takes the concurrency limit itself; Tune ignores
    `max_concurrent_trials` for it). Optuna: TPE, limited through `max_concurrent_trials`."""
    if cfg.search.type == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=cfg.metric, mode=cfg.mode, sampler=optuna.samplers.TPESampler(seed=cfg.search.seed))
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=cfg.search.seed, max_concurrent=concurrent)
