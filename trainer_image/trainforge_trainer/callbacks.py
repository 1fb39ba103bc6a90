"""Controller-side Ray Train callbacks (they run in the TrainController, not in the workers)."""

from __future__ import annotations

import logging
from typing import Any

from ray.train import UserCallback
from trainforge.checkpoints import CheckpointEntry, list_checkpoints, plan_retention, prune
from trainforge.spec import CheckpointConfig

log = logging.getLogger("trainforge.checkpoint")


class RetentionCallback(UserCallback):
    """Keeps the `keep` newest checkpoints by step plus the `keepBest` best by metric.

    Ray's own CheckpointConfig keeps either the newest N or the best N, not both, so Ray keeps
    everything (num_to_keep=None) and this callback prunes after each registered checkpoint: by
    then the upload has finished, and the checkpoint just registered is always among the kept."""

    def __init__(self, cfg: CheckpointConfig) -> None:
        self.cfg = cfg
        self._seen: dict[str, CheckpointEntry] = {}

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if checkpoint is None:
            return
        try:
            self.prune(checkpoint.filesystem, checkpoint.path)
        except Exception:  # pruning is housekeeping: never fail the run over it
            log.exception("checkpoint retention failed; will retry after the next checkpoint")

    def prune(self, fs: Any, newest: str) -> None:
        run_path = newest.rstrip("/").rsplit("/", 1)[0]
        entries = list_checkpoints(fs, run_path, check=False, known=self._seen)
        best = self.cfg.keep_best
        for entry in plan_retention(entries, self.cfg.keep, best.metric if best else None,
                                    best.mode if best else "max", best.count if best else 0, protect=[newest]):
            prune(fs, entry)
            self._seen.pop(entry.path, None)  # re-read as a pruned stub next time
