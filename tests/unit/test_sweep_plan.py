"""Sweep building blocks without running trials: spaces, trial specs, resource plans, schedulers."""

from __future__ import annotations

from typing import Any

import pytest
from ray import tune
from trainforge.spec import parse_job
from trainforge_trainer.launch import PreflightError
from trainforge_trainer.sweep.build import make_scheduler, make_search
from trainforge_trainer.sweep.plan import plan_sweep
from trainforge_trainer.sweep.space import param_space, trial_spec

from tests.unit.manifests import manifest


def sweep_spec(**overrides: Any) -> Any:
    tune_cfg = {"metric": "val_accuracy", "mode": "max", "numSamples": 8, "maxConcurrent": 4,
                "space": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}, "batch.size": {"choice": [32, 64]},
                          "task.args.hidden": {"grid": [32, 64, 128]}}}
    tune_cfg.update(overrides.pop("tune", {}))
    fields = {"workers": 1, "cpusPerWorker": 0.99, **overrides}
    return parse_job(manifest(tune=tune_cfg, **fields)).spec


def test_domains_map_to_ray_tune_and_back_into_a_valid_spec() -> None:
    spec = sweep_spec()
    space = param_space(spec.tune)
    assert isinstance(space["optimizer.lr"], tune.search.sample.Float)
    assert space["task.args.hidden"] == {"grid_search": [32, 64, 128]}
    import numpy as np

    trial = trial_spec(spec, {"optimizer.lr": np.float64(3e-3), "batch.size": np.int64(64),
                              "task.args.hidden": 128, "unrelated": 1})
    assert trial.tune is None and trial.optimizer.lr == 3e-3 and trial.batch.size == 64
    assert trial.task.args["hidden"] == 128 and trial.epochs == spec.epochs


def test_concurrency_is_what_fits_and_never_more_than_asked() -> None:
    spec = sweep_spec()
    assert plan_sweep(spec, {"CPU": 2.0}).concurrent == 2  # 0.01 + 0.99 per trial
    assert plan_sweep(spec, {"CPU": 16.0}).concurrent == 4  # maxConcurrent
    assert plan_sweep(spec, {"CPU": 2.0}).limited_by_cluster
    grid = sweep_spec(tune={"numSamples": 1, "maxConcurrent": 8, "search": {"type": "grid"},
                            "space": {"batch.size": {"choice": [32, 64]}, "task.args.hidden": {"grid": [8, 16, 32]}}})
    assert plan_sweep(grid, {"CPU": 16.0}).concurrent == 6  # no more at once than the grid has trials


def test_a_trial_that_cannot_fit_is_refused_with_the_fix() -> None:
    spec = sweep_spec(workers=2, cpusPerWorker=1.0)
    with pytest.raises(PreflightError, match=r"one trial needs 2.01 CPUs .* has 2; set spec.cpusPerWorker <= 0.99"):
        plan_sweep(spec, {"CPU": 2.0})
    with pytest.raises(PreflightError, match="GPUs"):
        plan_sweep(sweep_spec(gpusPerWorker=1), {"CPU": 8.0})


@pytest.mark.parametrize(("scheduler", "cls"), [
    ({"type": "fifo"}, tune.schedulers.FIFOScheduler),
    ({"type": "asha", "maxT": 10, "gracePeriod": 2, "reductionFactor": 2}, tune.schedulers.ASHAScheduler),
    ({"type": "hyperband", "maxT": 9}, tune.schedulers.HyperBandScheduler),
    ({"type": "median", "gracePeriod": 2}, tune.schedulers.MedianStoppingRule),
    ({"type": "pbt", "perturbationInterval": 2}, tune.schedulers.PopulationBasedTraining),
])
def test_schedulers_are_built_from_the_spec(scheduler: dict[str, Any], cls: type) -> None:
    cfg = sweep_spec(tune={"scheduler": scheduler, "space": {"optimizer.lr": {"uniform": [1e-3, 1e-2]}}}).tune
    built = make_scheduler(cfg)
    assert isinstance(built, cls)
    assert built.__class__ is tune.schedulers.FIFOScheduler or built._time_attr == "epoch"


def test_every_scheduler_option_reaches_ray() -> None:
    def built(**scheduler: Any) -> Any:
        space = {"optimizer.lr": {"uniform": [1e-3, 1e-2]}}
        return make_scheduler(sweep_spec(tune={"scheduler": scheduler, "space": space}).tune)

    asha = built(type="asha", timeAttr="training_iteration", maxT=27, gracePeriod=3, reductionFactor=3)
    assert (asha._time_attr, asha._max_t, asha._reduction_factor) == ("training_iteration", 27, 3)
    assert min(milestone for milestone, _ in asha._brackets[0]._rungs) == 3  # the grace period
    hyperband = built(type="hyperband", maxT=9, reductionFactor=3)
    assert (hyperband._max_t_attr, hyperband._eta) == (9, 3)
    median = built(type="median", gracePeriod=2, minSamplesRequired=4)
    assert (median._grace_period, median._min_samples_required) == (2, 4)
    pbt = built(type="pbt", perturbationInterval=2, quantileFraction=0.4, resampleProbability=0.1)
    assert (pbt._perturbation_interval, pbt._quantile_fraction, pbt._resample_probability) == (2, 0.4, 0.1)


def test_grid_search_enumerates_choices_and_grids() -> None:
    from ray.tune.search.variant_generator import generate_variants

    spec = sweep_spec(tune={"numSamples": 2, "search": {"type": "grid"},
                            "space": {"batch.size": {"choice": [32, 64]}, "task.args.hidden": {"grid": [8, 16, 32]}}})
    configs = [(config["batch.size"], config["task.args.hidden"])
               for _ in range(spec.tune.num_samples) for _, config in generate_variants(param_space(spec.tune))]
    assert len(configs) == 2 * 2 * 3 and len(set(configs)) == 6  # the whole grid, numSamples times


def test_search_algorithms() -> None:
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    assert isinstance(make_search(sweep_spec().tune, 2), BasicVariantGenerator)
    optuna_cfg = sweep_spec(tune={"search": {"type": "optuna", "seed": 1},
                                  "space": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}}}).tune
    assert isinstance(make_search(optuna_cfg, 2), OptunaSearch)
