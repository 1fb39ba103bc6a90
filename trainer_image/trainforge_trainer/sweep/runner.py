"""Run (or resume) a sweep on the connected Ray cluster and summarise its trials."""

from __future__ import annotations

import functools
import json
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ray.tune import Callback
from trainforge.checkpoints import StorageTarget, list_checkpoints
from trainforge.checkpoints.results import RESULTS_FILE
from trainforge.spec import TrainingJobSpec
from trainforge.spec.status import TuneBest, TuneStatus

from .build import make_scheduler, make_search
from .pbt import owns, prune_trial_runs, run_pbt_trial
from .plan import DRIVER_CPU, plan_sweep
from .release import start_registry
from .space import param_space, plain
from .start import sweep_failure_config
from .trial import run_trial, trials_target

log = logging.getLogger("trainforge.sweep")


@dataclass
class TrialRow:
    trial: str
    state: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    epochs: int | None
    checkpoint: str | None
    error: str | None = None


@dataclass
class SweepOutcome:
    name: str
    metric: str
    mode: str
    trials: list[TrialRow] = field(default_factory=list)
    best: TuneBest | None = None
    resumed: bool = False
    released: list[tuple[str, str]] = field(default_factory=list)
    """(trial, placement group id) of groups that stopped trials' Train runs left behind and the
    sweep removed."""

    @property
    def status(self) -> TuneStatus:
        counts: dict[str, int] = {}
        for row in self.trials:
            counts[row.state] = counts.get(row.state, 0) + 1
        return TuneStatus(trials=counts, best=self.best)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "metric": self.metric, "mode": self.mode, "resumed": self.resumed,
                "best": self.best.model_dump(mode="json", by_alias=True) if self.best else None,
                "trials": [asdict(t) for t in self.trials]}


def run_sweep(spec: TrainingJobSpec, name: str, target: StorageTarget,
              on_result: Callable[[str, dict[str, Any]], None] | None = None) -> SweepOutcome:
    import ray
    from ray import tune

    cfg = spec.tune
    assert cfg is not None
    plan = plan_sweep(spec, ray.cluster_resources())
    if plan.limited_by_cluster:
        log.warning("spec.tune.maxConcurrent is %d but only %d trials fit on this Ray cluster at once "
                    "(%g CPUs and %g GPUs per trial); running %d at a time",
                    plan.requested, plan.concurrent, plan.cpus_per_trial, plan.gpus_per_trial, plan.concurrent)
    trials = trials_target(target, name)
    driver = run_pbt_trial if cfg.scheduler.type == "pbt" else run_trial
    registry = start_registry()  # removes what a stopped trial's Train run left behind (release.py)
    trainable = tune.with_resources(
        functools.partial(driver, spec_json=spec.model_dump(mode="json", by_alias=True), trials=trials,
                          registry=registry),
        {"cpu": DRIVER_CPU})
    remote = not target.uri.startswith("/")
    fs = target.filesystem if remote else None
    where = target.run_path(name) if remote else target.run_uri(name)
    resumed = tune.Tuner.can_restore(where, storage_filesystem=fs)
    if resumed:
        tuner = tune.Tuner.restore(where, trainable, resume_errored=True, storage_filesystem=fs)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space(cfg),
            tune_config=tune.TuneConfig(num_samples=cfg.num_samples, scheduler=make_scheduler(cfg),
                                        search_alg=make_search(cfg, plan.concurrent),
                                        max_concurrent_trials=plan.concurrent if cfg.search.type == "optuna" else None,
                                        # a reused trial actor would keep the stopped trial's Train run going
                                        reuse_actors=False),
            run_config=tune.RunConfig(name=name, storage_path=target.path if remote else target.uri,
                                      storage_filesystem=fs, callbacks=[_Progress()], verbose=0,
                                      failure_config=sweep_failure_config(spec)),
        )
    _listener[:] = [on_result] if on_result else []
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consider boosting PBT performance")  # see reuse_actors
            grid = tuner.fit()
    finally:
        _listener.clear()
        released = _released(registry)
        ray.kill(registry)
    outcome = summarise(grid, spec, name, trials)
    outcome.released = released
    outcome.resumed = resumed
    if cfg.scheduler.type == "pbt":
        prune_trial_runs(spec, trials, [t.checkpoint for t in outcome.trials if t.checkpoint])
    save_outcome(outcome, target)
    return outcome


DRAIN_TIMEOUT_S = 30.0
"""How long the sweep waits, at its end, for the last stopped trials' groups to be released."""


def _released(registry: Any) -> list[tuple[str, str]]:
    import ray

    try:
        return [tuple(r) for r in ray.get(registry.drain.remote(DRAIN_TIMEOUT_S), timeout=DRAIN_TIMEOUT_S + 10)]
    except Exception:  # only a record; the sweep's results stand
        return []


_listener: list[Callable[[str, dict[str, Any]], None]] = []
"""The live table of the sweep this process runs. Tune pickles its callbacks with the sweep state and
a resumed sweep gets those back (no way to pass new ones), so the callback finds its listener here."""


class _Progress(Callback):
    """Tune callback (runs in the driver): one call per trial result, for a live table."""

    def _send(self, trial: Any, extra: dict[str, Any]) -> None:
        for fn in _listener:
            fn(trial.trial_id, {"config": dict(trial.config), **extra})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._send(trial, {**result, "state": "RUNNING"})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send(trial, {"state": "TERMINATED"})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send(trial, {"state": "ERROR"})


def summarise(grid: Any, spec: TrainingJobSpec, name: str, trials: StorageTarget) -> SweepOutcome:
    cfg = spec.tune
    assert cfg is not None
    outcome = SweepOutcome(name, cfg.metric, cfg.mode)
    # The Trial objects behind the grid know their own ids; a result's "trial_id" metric can be a
    # donor's after a PBT exploit (PBT copies the donor's last result).
    tune_trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    for i, result in enumerate(grid):
        metrics = dict(result.metrics or {})
        trial_id = tune_trials[i].trial_id if i < len(tune_trials) else metrics.get("trial_id", "?")
        history = result.metrics_dataframe
        best_value = _best(history[cfg.metric].tolist(), cfg.mode) if history is not None and \
            cfg.metric in history else None
        outcome.trials.append(TrialRow(
            trial=trial_id, state="ERROR" if result.error else "TERMINATED",
            config={k: plain(v) for k, v in (result.config or {}).items() if k in cfg.space},
            metrics={cfg.metric: best_value, "last_" + cfg.metric: metrics.get(cfg.metric),
                     "epoch": metrics.get("epoch")},
            epochs=metrics.get("epoch"), checkpoint=_best_checkpoint(trials, trial_id, cfg.metric, cfg.mode),
            error=str(result.error).splitlines()[-1] if result.error else None))
    scored = [t for t in outcome.trials if t.metrics.get(cfg.metric) is not None]
    if scored:
        top = (max if cfg.mode == "max" else min)(scored, key=lambda t: t.metrics[cfg.metric])
        outcome.best = TuneBest(trial=top.trial, config=top.config, metric=cfg.metric,
                                value=top.metrics[cfg.metric], checkpoint=top.checkpoint)
    return outcome


def _best(values: list[Any], mode: str) -> float | None:
    finite = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return (max if mode == "max" else min)(finite) if finite else None


def _best_checkpoint(trials: StorageTarget, trial_id: str, metric: str, mode: str) -> str | None:
    """The trial's valid checkpoint with the best metric (its newest when none carries it), over all
    its Train runs (a PBT trial starts a new run, `<trial>-x<id>`, each time it takes over another)."""
    import pyarrow.fs as pafs

    runs = [i.path for i in trials.filesystem.get_file_info(pafs.FileSelector(trials.path, allow_not_found=True))
            if owns(trial_id, i.base_name)]
    entries = [e for run in runs for e in list_checkpoints(trials.filesystem, run, check=False) if e.complete]
    if not entries:
        return None
    scored = [e for e in entries if isinstance(e.manifest.metrics.get(metric), int | float)]  # type: ignore[union-attr]
    pick = (max if mode == "max" else min)(scored, key=lambda e: e.manifest.metrics[metric]) if scored \
        else entries[-1]  # type: ignore[union-attr]
    return f"{trials.uri}/{pick.path[len(trials.path.rstrip('/')) + 1:]}"


def save_outcome(outcome: SweepOutcome, target: StorageTarget) -> None:
    with target.filesystem.open_output_stream(f"{target.run_path(outcome.name)}/{RESULTS_FILE}") as f:
        f.write(json.dumps(outcome.as_dict(), indent=1, default=str).encode())
