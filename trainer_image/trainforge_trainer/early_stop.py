"""Early stopping and best-metric tracking; fed all-reduced metrics, so every rank decides alike."""

from __future__ import annotations

from typing import Any

from trainforge.spec import EarlyStoppingConfig


class BestTracker:
    def __init__(self, metric: str, mode: str, min_delta: float = 0.0) -> None:
        self.metric, self.mode, self.min_delta = metric, mode, min_delta
        self.best: float | None = None
        self.best_step: int | None = None

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, metrics: dict[str, float], step: int) -> bool:
        """True when this evaluation is the new best."""
        value = metrics.get(self.metric)
        if value is None or not self.improved(value):
            return False
        self.best, self.best_step = value, step
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state["best"], state["best_step"]


class EarlyStopping:
    def __init__(self, cfg: EarlyStoppingConfig) -> None:
        self.cfg = cfg
        self.tracker = BestTracker(cfg.metric, cfg.mode, cfg.min_delta)
        self.bad_evals = 0

    def observe(self, metrics: dict[str, float], step: int) -> bool:
        """Record an evaluation; True when training should stop."""
        if self.cfg.metric not in metrics:
            raise KeyError(
                f"spec.earlyStopping.metric {self.cfg.metric!r} is not reported; "
                f"available: {', '.join(sorted(metrics))}"
            )
        if self.tracker.update(metrics, step):
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        return self.bad_evals >= self.cfg.patience

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(), "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.bad_evals = state["bad_evals"]
