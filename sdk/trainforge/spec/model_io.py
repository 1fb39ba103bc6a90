"""spec.init (start from pretrained weights) and spec.export (the model a run hands to inference)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import NonEmptyStr, SpecModel


class InitConfig(SpecModel):
    from_: NonEmptyStr = Field(alias="from")
    """Pretrained weights: a trainforge checkpoint (its directory or URI), a run directory (its best or
    latest checkpoint, see `checkpoint`), a `.safetensors` file, or a directory holding
    `model.safetensors` (a trainforge export); local or s3://. Only the model is taken: the optimizer,
    schedule and data position start fresh, and a job preempted later resumes from its own checkpoints."""
    checkpoint: Literal["best", "latest"] = "best"
    """Which checkpoint of a run `from` names: the best by its spec's keepBest / earlyStopping metric
    (the newest when it has none), or the newest."""
    strict: bool = True
    """Every model parameter must come from the weights, and every weight must be used."""
    prefix_map: dict[str, str] = Field(default_factory=dict)
    """Renames applied to the weights' names first: {"backbone.": "encoder."} reads backbone.x as encoder.x."""


class ExportConfig(SpecModel):
    format: Literal["safetensors"] = "safetensors"
    weights: Literal["final", "ema"] = "final"
    """The weights exported at the end of the run: the final ones (consolidated from every rank's
    shards under FSDP2), or spec.ema's average."""
