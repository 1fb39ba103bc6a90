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
from .release import RegisterWorkerGroup
from .space import trial_spec
from .start import fit_within_start_bound

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


def run_trial(config: dict[str, Any], *, spec_json: dict[str, Any], trials: StorageTarget,
              registry: Any = None) -> None:
    import ray.tune

    from ..callbacks import RetentionCallback
    from ..launch import make_trainer

    sweep_spec = TrainingJobSpec.model_validate(spec_json)
    assert sweep_spec.tune is not None
    spec = trial_spec(sweep_spec, config)
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = make_trainer(spec, trial_id, trials,
                           [ForwardEvaluations(sweep_spec.tune.metric), RetentionCallback(spec.checkpoint),
                            *trial_callbacks(registry, trial_id)])
    fit_within_start_bound(trainer, spec, trial_id, sweep_spec.tune.trial_start_timeout_seconds)
    wait_for_forwarded_reports()


def trial_callbacks(registry: Any, trial_id: str) -> list[Any]:
    """The sweep's registry gets the trial's worker placement group, to remove it if the trial is
    stopped before its Train run could (see release.py)."""
    return [RegisterWorkerGroup(registry, trial_id)] if registry is not None else []


REPORT_DRAIN_TIMEOUT_S = 60.0
REPORT_HANDOFF_S = 0.5


def wait_for_forwarded_reports() -> None:
    """Return only once Tune has taken the Train run's last report (a Ray 2.60 race, worked around).

    TuneReportCallback hands reports to the trial actor through a one-slot queue that the actor's main
    thread drains into its one-slot result queue. When this function returns, Tune's wrapper reports
    RESULT_DUPLICATE into that result queue at once; if the last forwarded report is still waiting,
    the main thread then blocks putting it into the full result queue that only it empties — the
    trial, and the sweep, hang for good (seen on S3, where the last report comes late)."""
    import time

    from ray.train._internal.session import get_session

    forwarded = getattr(get_session(), "_inter_actor_queue", None)
    if forwarded is None:
        return
    deadline = time.monotonic() + REPORT_DRAIN_TIMEOUT_S
    while not forwarded.empty() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(REPORT_HANDOFF_S)  # the main thread's put follows its take by microseconds
