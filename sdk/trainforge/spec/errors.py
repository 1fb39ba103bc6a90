"""Turn pydantic errors into one line per problem: the YAML path as the user wrote it, and the fix."""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel, ValidationError

from .base import Loc, SpecFieldError

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# pydantic adds these to locations inside unions and typed wrappers; users never wrote them.
_SYNTHETIC = re.compile(r"^(function-.*|.*\[.*\]|int|str|float|bool|list|dict|none)$")


@dataclass(frozen=True)
class SpecIssue:
    loc: Loc
    message: str
    where: str = ""
    """file:line of the offending field, when the manifest came from a file."""

    @property
    def path(self) -> str:
        return format_loc(self.loc)

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.loc else self.message
        return f"{self.where}: {text}" if self.where else text


class SpecValidationError(ValueError):
    """A manifest failed validation; `.issues` holds one entry per problem."""

    def __init__(self, issues: list[SpecIssue], source: str = "") -> None:
        self.issues = issues
        self.source = source
        head = f"{source}: " if source and not any(i.where for i in issues) else ""
        super().__init__(head + "; ".join(map(str, issues)))


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]" if out else repr(part)
    return out


def unwrap_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside Optional[...] / Annotated[...], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = unwrap_model(arg)
            if found is not None:
                return found
    return None


def model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """Walk field annotations along `loc`; the model found there, or None for free-form places."""
    current: Any = root
    for part in loc:
        model = unwrap_model(current)
        if model is None:
            current = _element_type(current)
            continue
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        if part not in fields:
            return None
        current = fields[part].annotation
    return unwrap_model(current)


def _element_type(annotation: Any) -> Any:
    """The item type of list[X] / dict[str, X], looking through Optional and Annotated."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return _element_type(next(a for a in args if a is not type(None)))
    if origin is typing.Annotated:
        return _element_type(args[0])
    if origin is list and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def suggest(name: str, known: typing.Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; allowed: {', '.join(known)}" if known else ""


def _describe_input(value: Any) -> str:
    if isinstance(value, dict | list):
        return ""
    text = repr(value)
    return f" (got {text if len(text) <= 40 else text[:37] + '...'})"


def _message(root: type[BaseModel], err: dict[str, Any], loc: Loc) -> str:
    kind = err["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        parent = model_at(root, loc[:-1])
        known = [f.alias or n for n, f in parent.model_fields.items()] if parent else []
        return f"unknown field{suggest(str(loc[-1]), known)}"
    if kind == "literal_error":
        return f"must be one of {err['ctx']['expected']}{_describe_input(err['input'])}"
    msg: str = err["msg"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        return msg
    msg = msg.replace("Input should be", "must be").replace("Input should have", "must have")
    return msg[0].lower() + msg[1:] + _describe_input(err["input"])


def issues_from(error: ValidationError, root: type[BaseModel], prefix: Loc = ()) -> list[SpecIssue]:
    issues: list[SpecIssue] = []
    for err in error.errors(include_url=False):
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and _SYNTHETIC.match(p)))
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, SpecFieldError):
            issues.extend(SpecIssue(loc + rel, msg) for rel, msg in cause.problems)
            continue
        issues.append(SpecIssue(loc, _message(root, err, loc[len(prefix):])))
    return issues
