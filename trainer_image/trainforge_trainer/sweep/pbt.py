"""PBT trials: every epoch checkpoint reaches Tune as a Tune checkpoint, so PBT can exploit.

The Tune checkpoint is a pointer (the Train run and the checkpoint's path on storage), not a copy
of the state. A trial restarted by an exploit finds another trial's pointer and starts a new Train
run initialised from that checkpoint; restarted any other way it finds its own and resumes.

A donor's checkpoint must still be there when the exploiting trial starts, which can be epochs later
(PBT hands out the donor's checkpoint from its last perturbation point): PBT trials do not prune
during the sweep; `prune_trial_runs` applies `spec.checkpoint.keep` once the sweep is over."""

from __future__ import annotations

import json
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from ray.train import UserCallback
from trainforge.checkpoints import StorageTarget
from trainforge.spec import TrainingJobSpec

from ..checkpoint.state import scalars
from .space import trial_spec
from .start import fit_within_start_bound
from .trial import trial_callbacks

POINTER = "trainforge-pointer.json"
TAKEOVER = "-x"


class ForwardCheckpoints(UserCallback):
    """Controller side: each checkpoint that carries the metric goes to the trial driver."""

    def __init__(self, queue: Any, metric: str) -> None:
        self.queue, self.metric = queue, metric

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if checkpoint is not None and metrics and self.metric in metrics[0]:
            self.queue.put((scalars(metrics[0]), checkpoint.path))


def start_point(trial_id: str) -> tuple[str, str | None]:
    """(Train run name, checkpoint to initialise from) for this start of the trial."""
    import ray.tune

    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is None:
        return trial_id, None
    with checkpoint.as_directory() as local:
        pointer = json.loads((Path(local) / POINTER).read_text())
    if owns(trial_id, pointer["run"]):
        return pointer["run"], None  # our own run: it resumes from its newest checkpoint
    return f"{trial_id}{TAKEOVER}{uuid.uuid4().hex[:6]}", pointer["checkpoint"]  # exploited: take over


def owns(trial_id: str, run: str) -> bool:
    """A trial's Train runs: its first, named after it, and one per takeover."""
    return run == trial_id or run.startswith(f"{trial_id}{TAKEOVER}")


def run_pbt_trial(config: dict[str, Any], *, spec_json: dict[str, Any], trials: StorageTarget,
                  registry: Any = None) -> None:
    import ray.tune
    from ray.util.queue import Empty, Queue

    from ..launch import make_trainer

    sweep_spec = TrainingJobSpec.model_validate(spec_json)
    assert sweep_spec.tune is not None
    spec = trial_spec(sweep_spec, config)
    trial_id = ray.tune.get_context().get_trial_id()
    run_name, init_from = start_point(trial_id)
    queue = Queue(actor_options={"num_cpus": 0})
    trainer = make_trainer(spec, run_name, trials, [ForwardCheckpoints(queue, sweep_spec.tune.metric),
                                                    *trial_callbacks(registry, trial_id)], init_from=init_from)
    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            fit_within_start_bound(trainer, spec, trial_id, sweep_spec.tune.trial_start_timeout_seconds)
        except BaseException as exc:  # re-raised on the trial's own thread below
            outcome["error"] = exc

    worker = threading.Thread(target=fit, name="trainforge-trial-fit", daemon=True)
    worker.start()
    while worker.is_alive() or not queue.empty():
        try:
            metrics, path = queue.get(timeout=0.5)
        except Empty:
            continue
        with tempfile.TemporaryDirectory() as pointer_dir:
            (Path(pointer_dir) / POINTER).write_text(json.dumps({"run": run_name, "checkpoint": path}))
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(pointer_dir))
    if "error" in outcome:
        raise outcome["error"]


def prune_trial_runs(spec: TrainingJobSpec, trials: StorageTarget, protect: list[str]) -> None:
    """After the sweep: each trial run keeps what `spec.checkpoint` says, plus the checkpoints the
    results name (`protect`, URIs)."""
    import pyarrow.fs as pafs
    from trainforge.checkpoints import Retention

    paths = [trials.path.rstrip("/") + uri[len(trials.uri.rstrip("/")):] for uri in protect]
    found = trials.filesystem.get_file_info(pafs.FileSelector(trials.path, allow_not_found=True))
    for run in (info.path for info in found if info.type == pafs.FileType.Directory):
        Retention.from_config(spec.checkpoint).apply(trials.filesystem, run, protect=paths)
