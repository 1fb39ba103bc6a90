"""Controller-side Ray Train callbacks (they run in the TrainController, not in the workers)."""

from __future__ import annotations

import logging
from typing import Any

from ray.train import UserCallback
from trainforge.checkpoints import Retention
from trainforge.checkpoints.owner import RunOwner, check_still_owner
from trainforge.checkpoints.retry import Retry, storage_uri
from trainforge.spec import CheckpointConfig, TrainingJobSpec

from .kube_status import BestTracker, RateLimiter, StatusWriter, StepRate, progress_patch

log = logging.getLogger("trainforge.checkpoint")
FINAL_FLUSH_S = 10.0


class RetentionCallback(UserCallback):
    """Keeps the `keep` newest checkpoints by step plus the `keepBest` best by metric.

    Ray's own CheckpointConfig keeps either the newest N or the best N, not both, so Ray keeps
    everything (num_to_keep=None) and this callback prunes after each registered checkpoint: by
    then the upload has finished, and the checkpoint just registered is always among the kept.
    Given the whole spec it also keeps the checkpoint status.bestCheckpoint names (keepBest's metric,
    else earlyStopping's: `BestRule`, the rule `BestTracker` reports by)."""

    def __init__(self, spec: TrainingJobSpec | CheckpointConfig, owner: RunOwner | None = None) -> None:
        cfg = spec.checkpoint if isinstance(spec, TrainingJobSpec) else spec
        self.retry = Retry.for_config(cfg)
        self.retention = (Retention.for_spec(spec, self.retry) if isinstance(spec, TrainingJobSpec)
                          else Retention.from_config(cfg, retry=self.retry))
        self.owner = owner

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if checkpoint is None:
            return
        try:
            run_path = checkpoint.path.rstrip("/").rsplit("/", 1)[0]
            self.retention.retry = Retry(self.retry.window_s, storage_uri(checkpoint.filesystem, run_path))
            if self.owner is not None:  # a stale attempt prunes nothing (its workers stop at their next commit)
                check_still_owner(checkpoint.filesystem, run_path, self.owner)
            self.retention.apply(checkpoint.filesystem, run_path, protect=[checkpoint.path], owner=self.owner)
        except Exception:  # pruning is housekeeping: never fail the run over it
            log.exception("checkpoint retention failed; will retry after the next checkpoint")


class StatusCallback(UserCallback):
    """On a cluster: each report becomes the TrainingJob's status.progress (rate-limited; every
    checkpoint is written), and a job whose spec.suspend turned true gets its emergency checkpoint."""

    def __init__(self, writer: StatusWriter, uri_prefix: str, best: BestTracker, interval_s: float,
                 preempt_flag: Any = None) -> None:
        self.writer, self.uri_prefix, self.best = writer, uri_prefix, best
        self.limiter = RateLimiter(interval_s)
        self.preempt_flag = preempt_flag
        self.latest: str | None = None
        self.asked_to_stop = False
        self.metrics: dict[str, Any] = {}
        """Every metric's newest value: a rate-limited write must not show the loss of its first report."""
        self.rate = StepRate()

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        report = metrics[0] if metrics else {}
        if "resumed_step" in report:
            log.warning("resumed from step %s (checkpoint %s)", report["resumed_step"], report.get("resumed_from"))
        if "step" not in report:  # an event (resumed, skipped checkpoints), not progress
            return
        late = int(report.get("step", 0)) < int(self.metrics.get("step", 0))
        # An asynchronous save is committed (reported) a few steps after the step it was taken at:
        # progress must not go back to that step.
        self.metrics.update({k: v for k, v in report.items() if not (late and k in ("epoch", "step"))})
        self.rate.observe(int(self.metrics.get("step", 0)))
        if checkpoint is not None:
            self.latest = self.uri_prefix + checkpoint.path.lstrip("/") if self.uri_prefix else checkpoint.path
            self.best.offer(self.latest, int(report.get("step", 0)), report, checkpoint)
        if not self.limiter.ready(force=checkpoint is not None or bool(report.get("done") or report.get("preempted"))):
            return
        self.writer.patch(progress_patch(self.metrics, self.latest, self.best.best, self.rate.per_second()))
        if report.get("done") or report.get("preempted"):
            # The run's last report: the controller goes soon after, and the writer's thread with it.
            # Bounded, so a hung API server delays the end by seconds, not for good.
            flush = getattr(self.writer, "flush", None)
            if flush is not None:
                flush(FINAL_FLUSH_S)
        fenced = bool(getattr(self.writer, "fenced", False))
        if (self.writer.suspend_requested or fenced) and self.preempt_flag is not None and not self.asked_to_stop:
            # Fenced: the job moved on to a later attempt or was re-created; this attempt's checkpoint
            # commits only while the run's owner record still names it.
            log.warning("the TrainingJob %s: checkpointing and stopping",
                        "is no longer this attempt's" if fenced else "asks to be suspended")
            self.preempt_flag.set.remote()
            self.asked_to_stop = True
