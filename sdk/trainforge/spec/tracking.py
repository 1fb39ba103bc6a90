"""spec.tracking: where a run's metrics go besides its status and metrics.jsonl (MLflow, TensorBoard)."""

from __future__ import annotations

from pydantic import Field, field_validator

from .base import NonEmptyStr, SpecModel


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
