"""Optimizer and learning-rate schedule."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .base import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Problems,
    Ratio,
    SpecModel,
    check_only_for,
)

Beta = Annotated[float, Field(ge=0, lt=1)]


class ParamGroup(SpecModel):
    match: str
    """A regular expression searched in each parameter's name (e.g. "^layer[12]\\.", "head"); the
    first group that matches a parameter takes it, the rest keep the defaults."""
    lr: PositiveFloat | None = None
    """This group's peak learning rate (the schedule's shape applies to it too)."""
    lr_scale: PositiveFloat | None = None
    """Or its peak as a multiple of spec.optimizer.lr."""
    weight_decay: NonNegativeFloat | None = None
    """Its weight decay (biases and norms stay undecayed when noDecayOnBiasAndNorm)."""
    freeze: bool = False
    """Not trained (spec.unfreeze may release it at an epoch)."""

    @model_validator(mode="after")
    def _one_lr(self) -> ParamGroup:
        import re

        problems = Problems()
        if self.lr is not None and self.lr_scale is not None:
            problems.add("lrScale", "set lr or lrScale, not both")
        try:
            re.compile(self.match)
        except re.error as exc:
            problems.add("match", f"is not a regular expression: {exc}")
        problems.raise_if_any()
        return self


class Unfreeze(SpecModel):
    at_epoch: Annotated[int, Field(ge=1)]
    """From the start of this epoch (0-based epochs; 1 = after the first) ..."""
    match: str
    """... the frozen parameters whose names this regular expression finds are trained."""


class OptimizerConfig(SpecModel):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: PositiveFloat = 1e-3
    """Peak learning rate (before lrScaling)."""
    weight_decay: NonNegativeFloat = 0.01
    betas: Annotated[list[Beta], Field(min_length=2, max_length=2)] | None = None
    """Adam(W) betas; default [0.9, 0.999]."""
    eps: PositiveFloat | None = None
    """Adam(W) epsilon; default 1e-8."""
    momentum: Annotated[float, Field(ge=0, lt=1)] | None = None
    """SGD momentum; default 0."""
    nesterov: bool | None = None
    """SGD Nesterov momentum; needs momentum > 0."""
    no_decay_on_bias_and_norm: bool = True
    """Exclude biases and normalisation weights from weight decay."""
    param_groups: list[ParamGroup] = Field(default_factory=list)
    """Per-parameter settings by name (discriminative learning rates, freezing); first match wins."""

    @model_validator(mode="after")
    def _options_match_name(self) -> OptimizerConfig:
        problems = Problems()
        check_only_for(
            problems, self, "name", self.name,
            {"adamw": ("betas", "eps"), "adam": ("betas", "eps"), "sgd": ("momentum", "nesterov")},
        )
        if self.name == "sgd" and self.nesterov and not self.momentum:
            problems.add("nesterov", "needs momentum > 0; set spec.optimizer.momentum (e.g. 0.9)")
        problems.raise_if_any()
        return self


ScheduleName = Literal[
    "constant", "warmup_cosine", "linear", "step", "multistep", "exponential",
    "onecycle", "plateau", "cosine_restarts", "inverse_sqrt",
]

# Which optional fields each schedule reads; anything else set is a mistake worth reporting.
SCHEDULE_FIELDS: dict[str, tuple[str, ...]] = {
    "constant": (),
    "warmup_cosine": ("min_lr_ratio",),
    "linear": ("min_lr_ratio",),
    "step": ("step_size", "gamma"),
    "multistep": ("milestones", "gamma"),
    "exponential": ("gamma",),
    "onecycle": ("pct_start", "div_factor", "final_div_factor", "anneal_strategy"),
    "plateau": ("metric", "mode", "factor", "patience", "threshold", "cooldown", "min_lr_ratio"),
    "cosine_restarts": ("t0", "t_mult", "min_lr_ratio"),
    "inverse_sqrt": ("timescale",),
}
# Schedules whose shape depends on the total number of optimizer steps.
NEEDS_HORIZON = {"warmup_cosine", "linear", "onecycle"}


class ScheduleConfig(SpecModel):
    name: ScheduleName = "warmup_cosine"
    warmup_steps: NonNegativeInt | None = None
    """Linear warm-up from 0 over this many optimizer steps; composes with every schedule."""
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] | None = None
    """Warm-up as a fraction of the total optimizer steps (instead of warmupSteps)."""
    min_lr_ratio: Ratio | None = None
    """Floor of cosine/linear decay as a fraction of the peak lr; default 0."""
    step_size: PositiveInt | None = None
    """step: decay every this many optimizer steps."""
    gamma: Annotated[float, Field(gt=0, le=1)] | None = None
    """step/multistep: factor per decay (default 0.1); exponential: factor per optimizer step."""
    milestones: list[PositiveInt] | None = None
    """multistep: optimizer steps at which lr is multiplied by gamma."""
    pct_start: Annotated[float, Field(gt=0, lt=1)] | None = None
    """onecycle: fraction of steps spent rising (default 0.3)."""
    div_factor: PositiveFloat | None = None
    """onecycle: initial lr = lr / divFactor (default 25)."""
    final_div_factor: PositiveFloat | None = None
    """onecycle: final lr = initial lr / finalDivFactor (default 1e4)."""
    anneal_strategy: Literal["cos", "linear"] | None = None
    metric: str | None = None
    """plateau: evaluation metric to watch (default val_loss)."""
    mode: Literal["min", "max"] | None = None
    factor: Annotated[float, Field(gt=0, lt=1)] | None = None
    """plateau: lr multiplier on a plateau (default 0.1)."""
    patience: NonNegativeInt | None = None
    """plateau: evaluations without improvement before decaying (default 10)."""
    threshold: NonNegativeFloat | None = None
    cooldown: NonNegativeInt | None = None
    t0: PositiveInt | None = None
    """cosine_restarts: optimizer steps of the first cycle."""
    t_mult: PositiveInt | None = None
    """cosine_restarts: cycle length multiplier (default 1)."""
    timescale: PositiveInt | None = None
    """inverse_sqrt: lr = peak * sqrt(timescale / max(step, timescale)); default warm-up steps or 1."""

    @model_validator(mode="after")
    def _fields_match_name(self) -> ScheduleConfig:
        problems = Problems()
        check_only_for(problems, self, "name", self.name, SCHEDULE_FIELDS)
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            problems.add("warmupRatio", "set warmupSteps or warmupRatio, not both")
        if self.name == "step" and self.step_size is None:
            problems.add("stepSize", "is required for name: step (optimizer steps between decays)")
        if self.name == "multistep":
            if not self.milestones:
                problems.add("milestones", "is required for name: multistep, e.g. [1000, 2000]")
            elif any(b <= a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
                problems.add("milestones", f"must be strictly increasing, got {self.milestones}")
        if self.name == "exponential" and self.gamma is None:
            problems.add("gamma", "is required for name: exponential (decay per optimizer step, e.g. 0.999)")
        if self.name == "cosine_restarts" and self.t0 is None:
            problems.add("t0", "is required for name: cosine_restarts (optimizer steps of the first cycle)")
        problems.raise_if_any()
        return self

    @property
    def needs_horizon(self) -> bool:
        return self.name in NEEDS_HORIZON or self.warmup_ratio is not None
