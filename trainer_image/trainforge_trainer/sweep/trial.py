"""The trial driver: runs inside a Tune trial, starts that trial's TorchTrainer and passes its
evaluation reports on to Tune. Each trial's Train run is named after the trial id, so a resumed
sweep resumes each unfinished trial from its own checkpoints."""

from __future__ import annotations

import dataclasses
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback
from trainforge.checkpoints import StorageTarget
from trainforge.spec import TrainingJobSpec

from ..checkpoint.state import scalars
from .space import trial_spec

TRIALS_DIR = "trials"


class ForwardEvaluations(TuneReportCallback):
    """Only reports carrying the sweep's metric reach Tune: the schedulers compare trials on it,
    and train-loss reports in between would only count as empty iterations."""

    def __init__(self, metric: str) -> None:
        super().__init__()
        self.metric = metric

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics and self.metric in metrics[0] and "checkpoint" not in metrics[0]:
            super().after_report(run_context, [scalars(metrics[0])], None)


def trials_target(sweep: StorageTarget, sweep_name: str) -> StorageTarget:
    sub = f"{sweep_name}/{TRIALS_DIR}"
    return dataclasses.replace(sweep, uri=sweep.run_uri(sub), path=sweep.run_path(sub))


def run_trial(config: dict[str, Any], *, spec_json: dict[str, Any], trials: StorageTarget) -> None:
    import ray.tune

    from ..callbacks import RetentionCallback
    from ..launch import make_trainer

    sweep_spec = TrainingJobSpec.model_validate(spec_json)
    assert sweep_spec.tune is not None
    spec = trial_spec(sweep_spec, config)
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = make_trainer(spec, trial_id, trials,
                           [ForwardEvaluations(sweep_spec.tune.metric), RetentionCallback(spec.checkpoint)])
    trainer.fit()
