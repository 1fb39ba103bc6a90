"""Batching, clipping, evaluation and early stopping of the training loop."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .base import NonNegativeFloat, PositiveFloat, PositiveInt, Problems, SpecModel


class BatchConfig(SpecModel):
    size: PositiveInt = 32
    """Per-worker micro-batch size."""
    grad_accumulation: PositiveInt = 1
    """Micro-batches per optimizer step; global batch = size x workers x gradAccumulation."""
    eval_size: PositiveInt | None = None
    """Per-worker evaluation batch size; default size."""
    loader_workers: Annotated[int, Field(ge=0)] | None = None
    """DataLoader worker processes per Ray worker; default min(cpusPerWorker, 4)."""


class GradClipConfig(SpecModel):
    mode: Literal["norm", "value", "none"] | None = None
    """norm (default), value, or none; inferred as value when only value is set."""
    max_norm: PositiveFloat | None = None
    """Clip the global gradient norm to this (default 1.0)."""
    value: PositiveFloat | None = None
    """Clip every gradient element to [-value, value]."""
    max_consecutive_non_finite: PositiveInt = 10
    """Abort after this many optimizer steps in a row with inf/nan gradients (each is skipped)."""

    @model_validator(mode="after")
    def _one_mode(self) -> GradClipConfig:
        problems = Problems()
        if self.max_norm is not None and self.value is not None:
            problems.add("value", "set maxNorm (clip by norm) or value (clip by value), not both")
        elif self.mode == "value" and self.value is None:
            problems.add("value", "is required for mode: value, e.g. 0.5")
        elif self.mode == "norm" and self.value is not None:
            problems.add("value", "applies only to mode: value; use maxNorm for mode: norm")
        elif self.mode == "value" and self.max_norm is not None:
            problems.add("maxNorm", "applies only to mode: norm; use value for mode: value")
        elif self.mode == "none" and (self.max_norm is not None or self.value is not None):
            problems.add("mode", "is none, so maxNorm/value would be ignored; remove them")
        problems.raise_if_any()
        return self

    @property
    def resolved_mode(self) -> str:
        if self.mode:
            return self.mode
        return "value" if self.value is not None else "norm"

    @property
    def resolved_max_norm(self) -> float:
        return 1.0 if self.max_norm is None else self.max_norm


class EvalConfig(SpecModel):
    every_steps: PositiveInt | None = None
    """Evaluate every N optimizer steps (in addition to everyEpoch)."""
    every_epoch: bool = True
    """Evaluate at the end of every epoch."""
    max_batches: PositiveInt | None = None
    """Cap on evaluation batches per worker (default: the whole validation set)."""

    @property
    def enabled(self) -> bool:
        return self.every_epoch or self.every_steps is not None


class EarlyStoppingConfig(SpecModel):
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: PositiveInt = 10
    """Evaluations without improvement before training stops."""
    min_delta: NonNegativeFloat = 0.0
    """Smallest change that counts as an improvement."""
    restore_best: bool = False
    """Load the best weights when training stops early."""
