"""Experiment tracking from rank 0: every report the loop emits goes to MLflow as metrics at its step.

One job is one MLflow run across attempts: its id is kept with the checkpoint (this component's
state), and an attempt that finds no id there (none was saved yet) finds the run by its
`trainforge.run` tag, the run directory every attempt of the job shares. Tracking is a report, not
the training: each call that fails is logged, and after `MAX_FAILURES` in a row tracking stops for
the attempt, so an unreachable server costs a few timeouts, not the run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from trainforge.spec import TrainingJobSpec
from trainforge.spec.tracking import MlflowConfig

from .uploads import upload_dir

log = logging.getLogger("trainforge.tracking")
RUN_TAG = "trainforge.run"
MAX_FAILURES = 3
_NOT_METRICS = {"epoch", "step", "total_steps", "time"}


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested spec as MLflow params: dotted keys, values as text (MLflow keeps params as strings)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): str(value)[:6000]}


def metrics_of(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in _NOT_METRICS}


class MlflowTracker:
    """Rank 0's MLflow run. A Stateful checkpoint part: its state is the run id.

    Args:
        cfg: spec.tracking.mlflow.
        spec: the job (logged as params).
        run_uri: the run directory (tags the run, so any attempt finds it).
        run_name: the MLflow run's name unless the config names one.
    """

    def __init__(self, cfg: MlflowConfig, spec: TrainingJobSpec, run_uri: str, run_name: str) -> None:
        self.cfg, self.spec, self.run_uri, self.run_name = cfg, spec, run_uri, cfg.run_name or run_name
        self.run_id: str | None = None
        self.failures = 0
        self._client: Any = None

    def state_dict(self) -> dict[str, Any]:
        return {"mlflow_run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("mlflow_run_id") or self.run_id

    @property
    def active(self) -> bool:
        return self.failures < MAX_FAILURES

    def _guarded(self, what: str, call: Any) -> Any:
        if not self.active:
            return None
        try:
            result = call()
        except Exception as exc:  # any failure of the tracking server or client: training goes on
            self.failures += 1
            log.warning("MLflow %s failed (%s: %s)%s", what, type(exc).__name__, exc,
                        "; tracking stops for this attempt" if not self.active else "")
            return None
        self.failures = 0
        return result

    def client(self) -> Any:
        if self._client is None:
            import os

            # MLflow's defaults retry a failed request for minutes; a report is not worth that stall.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.cfg.tracking_uri)
        return self._client

    def start(self) -> None:
        """Continue the job's MLflow run (the checkpoint's, else the one tagged with this run), or create it."""
        self._guarded("start", self._start)

    def _start(self) -> None:
        client = self.client()
        experiment = client.get_experiment_by_name(self.cfg.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.cfg.experiment)
        if self.run_id is None:
            found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{self.run_uri}'",
                                       max_results=1, order_by=["attributes.start_time DESC"])
            self.run_id = found[0].info.run_id if found else None
        if self.run_id is None:
            run = client.create_run(experiment_id, run_name=self.run_name,
                                    tags={RUN_TAG: self.run_uri, **self.cfg.tags})
            self.run_id = run.info.run_id
        else:
            client.update_run(self.run_id, status="RUNNING")
        self._log_params()

    def _log_params(self) -> None:
        from mlflow.entities import Param

        client, params = self.client(), flatten(self.spec.model_dump(mode="json", by_alias=True, exclude_none=True))
        logged = client.get_run(self.run_id).data.params
        fresh = [Param(k, v) for k, v in params.items() if k not in logged]  # params are write-once
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:
            log.warning("MLflow params keep their first attempt's values; changed since: %s", ", ".join(changed))
        for i in range(0, len(fresh), 100):
            client.log_batch(self.run_id, params=fresh[i:i + 100])

    def log(self, record: dict[str, Any]) -> None:
        if self.run_id is None or "step" not in record:
            return
        values = metrics_of(record)
        if values:
            self._guarded("logging metrics", lambda: self._log_metrics(values, int(record["step"])))

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client().log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def tag(self, tags: dict[str, str]) -> None:
        if self.run_id is not None and tags:
            self._guarded("tagging", lambda: [self.client().set_tag(self.run_id, k, v) for k, v in tags.items()])

    def end(self, status: str) -> None:
        """FINISHED or FAILED (a preempted attempt leaves the run RUNNING: the next one continues it)."""
        if self.run_id is not None:
            self._guarded("ending the run", lambda: self.client().set_terminated(self.run_id, status))


class TensorBoardSink:
    """TensorBoard event files of rank 0's scalars under <run>/tensorboard/: written in place for a local
    run directory, else locally and uploaded with the metrics log (before each commit, at the end)."""

    def __init__(self, run_dir: str, endpoint: str | None, region: str | None) -> None:
        import tempfile
        from pathlib import Path

        from torch.utils.tensorboard import SummaryWriter

        self.remote: str | None = None
        self.endpoint, self.region = endpoint, region
        if "://" in run_dir:
            self.remote = f"{run_dir.rstrip('/')}/tensorboard"
            self.local = Path(tempfile.mkdtemp(prefix="trainforge-tb-"))
        else:
            self.local = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(str(self.local), flush_secs=3600)  # flushed by sync()

    def log(self, record: dict[str, Any]) -> None:
        if "step" in record:
            for name, value in metrics_of(record).items():
                self.writer.add_scalar(name, value, int(record["step"]))

    def sync(self) -> None:
        self.writer.flush()
        if self.remote is None:
            return
        try:
            upload_dir(self.local, self.remote, self.endpoint, self.region)
        except OSError as exc:
            log.warning("could not upload the TensorBoard events (%s); retried at the next checkpoint", exc)

    def close(self) -> None:
        self.sync()
        self.writer.close()


class Tracking:
    """The spec's trackers on rank 0 (nothing on the others), as the loop drives them: started once the
    checkpoint is restored, fed every report, synced before each commit, ended with the outcome."""

    def __init__(self, spec: TrainingJobSpec, run_dir: str | None, run_name: str, is_main: bool) -> None:
        cfg, self.run_dir = spec.tracking, run_dir
        on = is_main and run_dir is not None
        self.mlflow = MlflowTracker(cfg.mlflow, spec, run_dir, run_name) if on and cfg.mlflow else None  # type: ignore[arg-type]
        self.tensorboard = (TensorBoardSink(run_dir, spec.checkpoint.endpoint, spec.checkpoint.region)  # type: ignore[arg-type]
                            if on and cfg.tensorboard else None)

    def state_dict(self) -> dict[str, Any]:
        return self.mlflow.state_dict() if self.mlflow else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.mlflow:
            self.mlflow.load_state_dict(state)

    def start(self) -> None:
        if self.mlflow:
            self.mlflow.start()

    def log(self, record: dict[str, Any]) -> None:
        if self.mlflow:
            self.mlflow.log(record)
        if self.tensorboard:
            self.tensorboard.log(record)

    def sync(self) -> None:
        if self.tensorboard:
            self.tensorboard.sync()

    def finish(self, status: str, checkpoints: dict[str, str]) -> None:
        """End the MLflow run (FINISHED, FAILED) with the final and best checkpoint URIs as tags."""
        if self.mlflow:
            self.mlflow.tag(checkpoints)
            self.mlflow.end(status)
        if self.tensorboard:
            self.tensorboard.close()
            self.tensorboard = None

    def close(self) -> None:
        """A preempted (or killed) attempt: the MLflow run stays RUNNING for the next one."""
        if self.tensorboard:
            self.tensorboard.close()
            self.tensorboard = None


def checkpoint_tags(spec: TrainingJobSpec, run_dir: str, final: str | None) -> dict[str, str]:
    """The final checkpoint's URI and the best one's (by the rule retention keeps: keepBest's metric,
    else early stopping's), read from the run's storage; {} where storage cannot be read."""
    from trainforge.checkpoints import list_checkpoints, resolve_storage
    from trainforge.checkpoints.retention import BestRule

    tags = {"trainforge.final_checkpoint": f"{run_dir.rstrip('/')}/{final}"} if final else {}
    rule = BestRule.for_spec(spec)
    if rule is None:
        return tags
    try:
        target = resolve_storage(run_dir, spec.checkpoint.endpoint, spec.checkpoint.region)
        ranked = rule.ranked(e for e in list_checkpoints(target.filesystem, target.path, check=False) if e.complete)
    except OSError as exc:
        log.warning("could not read the run's checkpoints for the best one's tag: %s", exc)
        return tags
    if ranked:
        tags["trainforge.best_checkpoint"] = f"{run_dir.rstrip('/')}/{ranked[0].name}"
    return tags
