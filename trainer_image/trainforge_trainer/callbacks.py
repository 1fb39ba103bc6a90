"""Controller-side Ray Train callbacks (they run in the TrainController, not in the workers)."""

from __future__ import annotations

import logging
from typing import Any

from ray.train import UserCallback
from trainforge.checkpoints import Retention
from trainforge.spec import CheckpointConfig

log = logging.getLogger("trainforge.checkpoint")


class RetentionCallback(UserCallback):
    """Keeps the `keep` newest checkpoints by step plus the `keepBest` best by metric.

    Ray's own CheckpointConfig keeps either the newest N or the best N, not both, so Ray keeps
    everything (num_to_keep=None) and this callback prunes after each registered checkpoint: by
    then the upload has finished, and the checkpoint just registered is always among the kept."""

    def __init__(self, cfg: CheckpointConfig) -> None:
        self.retention = Retention.from_config(cfg)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if checkpoint is None:
            return
        try:
            run_path = checkpoint.path.rstrip("/").rsplit("/", 1)[0]
            self.retention.apply(checkpoint.filesystem, run_path, protect=[checkpoint.path])
        except Exception:  # pruning is housekeeping: never fail the run over it
            log.exception("checkpoint retention failed; will retry after the next checkpoint")
