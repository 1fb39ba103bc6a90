"""spec.tracking: where a run's metrics go besides its status and metrics.jsonl (MLflow, TensorBoard);
spec.profile: torch.profiler over a few steps."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from .base import NonEmptyStr, NonNegativeInt, PositiveInt, SpecModel


class MlflowConfig(SpecModel):
    tracking_uri: NonEmptyStr
    """The MLflow tracking server, e.g. http://mlflow.mlflow:5000. Credentials come from the trainer's
    environment (MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN: spec.env, from a Secret)."""
    experiment: NonEmptyStr = "trainforge"
    """Created when missing."""
    run_name: NonEmptyStr | None = None
    """Default: the job's run name."""
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("tracking_uri")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", "databricks")):
            raise ValueError("must be an http(s):// tracking server (every worker pod reaches it), or databricks")
        return value


class TrackingConfig(SpecModel):
    mlflow: MlflowConfig | None = None
    """Rank 0 logs the flattened spec as params, every report's metrics at their step, and the
    checkpoints as tags; every attempt of the job continues the same MLflow run."""
    tensorboard: bool = False
    """TensorBoard event files under <run>/tensorboard/, on any storage."""


class ProfileConfig(SpecModel):
    start_step: PositiveInt = 10
    """The first profiled optimizer step (1-based): after warm-up and compilation."""
    steps: Annotated[int, Field(ge=1, le=50)] = 3
    """Steps profiled: a trace grows by MBs a step."""
    ranks: list[NonNegativeInt] = Field(default_factory=lambda: [0])
    """The ranks that profile themselves."""


class EmaConfig(SpecModel):
    decay: Annotated[float, Field(gt=0, lt=1)] = 0.999
    """Each update: average = decay x average + (1 - decay) x weights."""
    every_steps: PositiveInt = 1
    """Optimizer steps between updates."""
    eval_with: bool = False
    """Evaluate (validation, test) with the averaged weights instead of the trained ones."""
