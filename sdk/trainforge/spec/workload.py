"""What runs and where: the task, and the pod-level settings of each Ray worker."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import NonEmptyStr, Problems, SpecModel

BUILTIN_TASKS = {
    "digits": "trainforge_trainer.tasks.digits:build",
    "gpt": "trainforge_trainer.tasks.gpt:build",
}
_ENTRYPOINT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


class Task(SpecModel):
    entrypoint: str
    """A built-in task (digits, gpt) or "package.module:function" returning a trainforge Task."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Free-form keyword arguments passed to the task function."""

    def __init__(self, entrypoint: str | None = None, /, **data: Any) -> None:
        """`Task("pkg.module:build", args={...})` in Python; manifests validate without this."""
        if entrypoint is not None:
            data["entrypoint"] = entrypoint
        super().__init__(**data)

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_form(cls, value: str) -> str:
        if value in BUILTIN_TASKS or _ENTRYPOINT.match(value):
            return value
        raise ValueError(
            f"{value!r} is neither a built-in task ({', '.join(BUILTIN_TASKS)}) nor of the form "
            "'package.module:function'"
        )

    @property
    def resolved_entrypoint(self) -> str:
        return BUILTIN_TASKS.get(self.entrypoint, self.entrypoint)


class Toleration(SpecModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        problems = Problems()
        if self.operator == "Exists" and self.value:
            problems.add("value", "must be empty when operator is Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            problems.add("tolerationSeconds", "applies only to effect: NoExecute")
        problems.raise_if_any()
        return self


class KeyRef(SpecModel):
    name: NonEmptyStr
    key: NonEmptyStr


class EnvVarSource(SpecModel):
    secret_key_ref: KeyRef | None = None
    config_map_key_ref: KeyRef | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("set exactly one of secretKeyRef, configMapKeyRef")
        return self


_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class EnvVar(SpecModel):
    name: NonEmptyStr
    value: str | None = None
    value_from: EnvVarSource | None = None

    @field_validator("name")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid environment variable name")
        return value

    @model_validator(mode="after")
    def _value_or_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("set value or valueFrom, not both")
        return self
