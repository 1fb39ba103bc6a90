"""CEL values and functions as Kubernetes gives them to CRD rules, for the emulator's rule evaluation.

Values: JSON typed by the structural schema (``to_cel``). Functions: Kubernetes' CEL libraries that
cel-python lacks, as celpy functions.

A real API server offers these to every CRD rule (k8s.io/apiserver/pkg/cel/library and cel-go's
strings extension); cel-python implements the CEL standard only. Each is written to the Kubernetes
documentation of the function; a rule that calls one not listed here fails at CRD registration
(tests/support/kube_cel.py), so add it here when a rule needs it.
"""

from __future__ import annotations

import base64
import itertools
import operator
import re
from collections.abc import Callable
from typing import Any

import celpy
import re2
from celpy import celtypes
from celpy.evaluation import CELEvalError, base_functions

RESERVED = {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
            "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"}
MACROS = {"all", "exists", "exists_one", "map", "filter"}
_NUMBERS = (celtypes.IntType, celtypes.UintType, celtypes.DoubleType)
Obj = dict[str, Any]


class UnorderedList(celtypes.ListType):
    """A ``listType: set`` or ``map`` list: Kubernetes compares these without regard to order."""

    def __eq__(self, other: Any) -> bool:
        return _true(equal(self, other))

    def __ne__(self, other: Any) -> bool:
        return not _true(equal(self, other))

    __hash__ = None  # type: ignore[assignment]


def equal(a: Any, b: Any) -> Any:
    """CEL's heterogeneous equality, as Kubernetes has it: ``1 == 1.0``, ``'a' == 1`` is false (celpy
    raises "no such overload" for both), lists and maps element by element, set/map lists in any order."""
    if isinstance(a, CELEvalError):
        return a
    if isinstance(b, CELEvalError):
        return b
    if isinstance(a, _NUMBERS) and isinstance(b, _NUMBERS):
        return celtypes.BoolType(float(a) == float(b))
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return celtypes.BoolType(False)
        if isinstance(a, UnorderedList) or isinstance(b, UnorderedList):
            rest = list(b)
            for item in a:
                match = next((i for i, o in enumerate(rest) if _true(equal(item, o))), None)
                if match is None:
                    return celtypes.BoolType(False)
                del rest[match]
            return celtypes.BoolType(True)
        return celtypes.BoolType(all(_true(equal(x, y)) for x, y in zip(a, b, strict=True)))
    if isinstance(a, dict) and isinstance(b, dict):
        return celtypes.BoolType(a.keys() == b.keys() and all(_true(equal(a[k], b[k])) for k in a))
    if type(a) is not type(b):
        return celtypes.BoolType(False)
    return celtypes.BoolType(a == b)


def escape(name: str) -> str | None:
    """A property name as CEL sees it (Kubernetes' escaping), or None where CEL cannot reach it."""
    if name in RESERVED:
        return f"__{name}__"
    if not re.fullmatch(r"[a-zA-Z_.\-/][a-zA-Z0-9_.\-/]*", name):
        return None
    for raw, escaped in (("__", "__underscores__"), (".", "__dot__"), ("-", "__dash__"), ("/", "__slash__")):
        name = name.replace(raw, escaped)
    return name


def with_object_meta(schema: Obj) -> Obj:
    """The root (or an embedded resource) as CEL sees it: apiVersion, kind, metadata.name/generateName."""
    string = {"type": "string"}
    meta = {"type": "object", "properties": {"name": string, "generateName": string}}
    return {**schema, "type": "object",
            "properties": {**schema.get("properties", {}), "apiVersion": string, "kind": string, "metadata": meta}}


def typed_object(schema: Obj) -> bool:
    return "properties" in schema or bool(schema.get("x-kubernetes-embedded-resource"))


def dyn(schema: Obj | None) -> bool:
    return (schema is None or bool(schema.get("x-kubernetes-int-or-string"))
            or (schema.get("type") == "object" and not typed_object(schema)
                and not isinstance(schema.get("additionalProperties"), dict)))


def to_cel(value: Any, schema: Obj | None, root: bool = False) -> Any:
    """A JSON value as a CEL value of the schema's type (UnstructuredToVal)."""
    if value is None:
        return None
    if schema is not None and (root or schema.get("x-kubernetes-embedded-resource")):
        schema = with_object_meta(schema)
    if dyn(schema):
        return celpy.json_to_cel(value)
    assert schema is not None
    if isinstance(value, dict) and typed_object(schema):
        props = schema["properties"]
        return celtypes.MapType({celtypes.StringType(name): to_cel(v, props[k]) for k, v in value.items()
                                 if k in props and (name := escape(k)) is not None})
    if isinstance(value, dict) and isinstance(extra := schema.get("additionalProperties"), dict):
        return celtypes.MapType({celtypes.StringType(k): to_cel(v, extra) for k, v in value.items()})
    if isinstance(value, list):
        items = [to_cel(v, schema.get("items")) for v in value]
        unordered = schema.get("x-kubernetes-list-type") in ("set", "map")
        return UnorderedList(items) if unordered else celtypes.ListType(items)
    return _scalar(value, schema)


def _scalar(value: Any, schema: Obj) -> Any:
    kind, fmt = schema.get("type"), schema.get("format")
    try:
        if kind == "integer" and isinstance(value, int):
            return celtypes.IntType(value)
        if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return celtypes.DoubleType(value)
        if kind == "string" and isinstance(value, str) and fmt in ("date-time", "date"):
            return celtypes.TimestampType(value if fmt == "date-time" else f"{value}T00:00:00Z")
        if kind == "string" and isinstance(value, str) and fmt == "duration":
            return celtypes.DurationType(value)
        if kind == "string" and isinstance(value, str) and fmt == "byte":
            return celtypes.BytesType(base64.b64decode(value))
    except ValueError:
        pass  # the schema check reports a malformed value; CEL sees the plain string
    return celpy.json_to_cel(value)


def _true(result: Any) -> bool:
    return not isinstance(result, CELEvalError) and bool(result)


def _ordering(op: Callable[[Any, Any], bool], standard: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """cel.CrossTypeNumericComparisons: ints, uints and doubles order against each other."""
    def compare(a: Any, b: Any) -> Any:
        if isinstance(a, _NUMBERS) and isinstance(b, _NUMBERS) and type(a) is not type(b):
            return celtypes.BoolType(op(float(a), float(b)))
        return standard(a, b)
    return compare


def _error(message: str) -> CELEvalError:
    return CELEvalError(message, ValueError, None)


def _index_of(target: Any, item: Any, start: Any = 0) -> Any:
    if isinstance(target, str):
        if not 0 <= start <= len(target):
            return _error(f"index out of range: {start}")
        return celtypes.IntType(target.find(item, start))
    return celtypes.IntType(next((i for i, x in enumerate(target) if equal(x, item)), -1))


def _last_index_of(target: Any, item: Any, end: Any = None) -> Any:
    if isinstance(target, str):
        return celtypes.IntType(target.rfind(item, 0, None if end is None else end + len(item)))
    return celtypes.IntType(next((i for i in reversed(range(len(target))) if equal(target[i], item)), -1))


def _substring(text: str, start: int, end: int | None = None) -> Any:
    end = len(text) if end is None else end
    if not 0 <= start <= end <= len(text):
        return _error(f"index out of range: {start}, {end}")
    return celtypes.StringType(text[start:end])


def _split(text: str, sep: str, limit: int = -1) -> Any:
    if limit == 0:
        return celtypes.ListType([])
    parts = text.split(sep, limit - 1 if limit > 0 else -1) if sep else list(text)
    return celtypes.ListType([celtypes.StringType(p) for p in parts])


def _replace(text: str, old: str, new: str, limit: int = -1) -> Any:
    return celtypes.StringType(text.replace(old, new, limit))


def _join(items: Any, sep: str = "") -> Any:
    return celtypes.StringType(sep.join(str(i) for i in items))


def _char_at(text: str, i: int) -> Any:
    if not 0 <= i <= len(text):
        return _error(f"index out of range: {i}")
    return celtypes.StringType(text[i:i + 1])


def _is_sorted(items: Any) -> Any:
    return celtypes.BoolType(all(not (b < a) for a, b in itertools.pairwise(items)))


def _sum(items: Any) -> Any:
    total: Any = celtypes.IntType(0)
    for item in items:
        total = item if total == 0 and not isinstance(item, celtypes.IntType) else total + item
    return total


def _max(items: Any) -> Any:
    return max(items) if items else _error("max(list) on an empty list")


def _find(text: str, pattern: str) -> Any:
    match = re2.search(pattern, text)
    return celtypes.StringType(match.group(0) if match else "")


def _find_all(text: str, pattern: str, limit: int = -1) -> Any:
    found = [celtypes.StringType(m.group(0)) for m in re2.finditer(pattern, text)]
    return celtypes.ListType(found if limit < 0 else found[:limit])


EXTENSIONS: dict[str, Callable[..., Any]] = {
    "_==_": equal, "_!=_": lambda a, b: r if isinstance(r := equal(a, b), CELEvalError) else celtypes.BoolType(not r),
    "_<_": _ordering(operator.lt, base_functions["_<_"]), "_<=_": _ordering(operator.le, base_functions["_<=_"]),
    "_>_": _ordering(operator.gt, base_functions["_>_"]), "_>=_": _ordering(operator.ge, base_functions["_>=_"]),
    "charAt": _char_at, "indexOf": _index_of, "lastIndexOf": _last_index_of,
    "lowerAscii": lambda s: celtypes.StringType(s.lower()), "upperAscii": lambda s: celtypes.StringType(s.upper()),
    "replace": _replace, "split": _split, "substring": _substring, "join": _join,
    "trim": lambda s: celtypes.StringType(s.strip()),
    "isSorted": _is_sorted, "sum": _sum, "max": _max, "find": _find, "findAll": _find_all,
}
KNOWN_FUNCTIONS = set(base_functions) | set(EXTENSIONS) | MACROS | {"has", "dyn", "min", "int", "uint"}
