"""Shared base for every spec model: camelCase on the wire, strict types, unknown fields rejected."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema
from pydantic.alias_generators import to_camel

Loc = tuple[str | int, ...]


class SpecModel(BaseModel):
    """Base of all spec models.

    strict=True makes the models type values the way the Kubernetes API server does ("1e-3" is a
    string, not a number; "true" is not a boolean), so a manifest that passes here passes there.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        strict=True,
        use_attribute_docstrings=True,
    )

    def set_fields(self) -> set[str]:
        """Python names of the fields the user wrote (not defaulted)."""
        return {name for name in self.model_fields_set if getattr(self, name) is not None}


class SpecFieldError(ValueError):
    """Raised by cross-field checks; carries (relative location, message) pairs.

    The error formatter joins each relative location onto the model's own location, so a check on
    `ScheduleConfig` can point at `spec.schedule.warmupSteps` rather than at `spec.schedule`.
    """

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))


class Problems:
    """Collects every cross-field problem of one model so the user sees them all at once."""

    def __init__(self) -> None:
        self.items: list[tuple[Loc, str]] = []

    def add(self, loc: str | Loc, message: str) -> None:
        self.items.append(((loc,) if isinstance(loc, str) else tuple(loc), message))

    def raise_if_any(self) -> None:
        if self.items:
            raise SpecFieldError(self.items)


def alias_of(model: type[BaseModel], python_name: str) -> str:
    field = model.model_fields[python_name]
    return field.alias or python_name


def check_only_for(
    problems: Problems,
    model: SpecModel,
    selector: str,
    selected: str,
    allowed: dict[str, Iterable[str]],
) -> None:
    """Report fields set on `model` that the chosen variant (`selector` == `selected`) ignores."""
    permitted = set(allowed.get(selected, ()))
    owners: dict[str, list[str]] = {}
    for variant, names in allowed.items():
        for name in names:
            owners.setdefault(name, []).append(variant)
    for name in sorted(model.set_fields()):
        if name in owners and name not in permitted:
            where = " or ".join(f"{selector}: {v}" for v in owners[name])
            problems.add(
                alias_of(type(model), name),
                f"applies only to {where} (this one has {selector}: {selected}); remove it",
            )


# --- Kubernetes-style scalar types -----------------------------------------------------------

_QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i?|[munkMGTPE]|k)?$")


def _validate_quantity(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a Kubernetes quantity such as 4Gi, 500Mi, 2 or 0.5")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if not _QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity; write e.g. 4Gi, 512Mi, 2 or 500m")
    return value


Quantity = Annotated[
    int | str,
    PlainValidator(_validate_quantity),
    PlainSerializer(lambda v: v),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}),
]
"""An int or a quantity string, exactly what Kubernetes accepts for resources."""

NonEmptyStr = Annotated[str, Field(min_length=1)]
INT32_MAX = 2**31 - 1
"""Every spec integer fits Kubernetes' int32 (replicas, RayJob deadlines): a larger one passes the
CRD's int64 and then fails in the object trainforge makes from it."""
INT64_MAX = 2**63 - 1
PositiveInt = Annotated[int, Field(ge=1, le=INT32_MAX)]
NonNegativeInt = Annotated[int, Field(ge=0, le=INT32_MAX)]


def _within_int64(value: int) -> int:
    if value > INT64_MAX:
        raise ValueError(f"must be at most {INT64_MAX} (int64)")
    return value


# No `maximum` in the schema for this one: Helm renders 2**63-1 as a float, and int64 is already
# what the API server itself enforces.
NonNegativeInt64 = Annotated[int, Field(ge=0), AfterValidator(_within_int64)]
"""For what Kubernetes itself counts in int64 (metadata.generation)."""
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Ratio = Annotated[float, Field(ge=0, le=1)]
