"""spec.init (start from pretrained weights) and spec.export (the model a run hands to inference)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import NonEmptyStr, PositiveFloat, PositiveInt, SpecModel


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
    weights: Literal["final", "best", "ema"] = "final"
    """The weights exported at the end of the run: the final ones (consolidated from every rank's
    shards under FSDP2), the best checkpoint's (by spec.checkpoint.keepBest's or spec.earlyStopping's
    metric), or spec.ema's average. With spec.lora the adapters are merged into the base first."""


class LoraConfig(SpecModel):
    """LoRA through peft: low-rank adapters beside the target layers; only they train."""

    r: PositiveInt = 8
    """The adapters' rank."""
    alpha: PositiveFloat = 16
    """Scale: an adapter adds (alpha / r) * B @ A to its layer's weight."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Dropout on the adapters' input."""
    target_modules: Annotated[list[NonEmptyStr], Field(min_length=1)]
    """The layers that get adapters, as peft matches them: a module whose full name is one of these or
    ends with "." + one of these (e.g. [qkv, proj], or [head] for a classifier). nn.Linear, nn.Conv*
    and nn.Embedding layers qualify."""
