"""The stateless parts of the test-only Kubernetes API emulator (kube_emulator.py): URL parsing, label
and field selectors, merge patches, CRD schemas (pruning, Draft 4 validation, Status causes), records.
The CRDs' CEL rules are in kube_cel.py."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import jsonschema
import kmock
from kmock._internal import parsing, rendering  # kmock's ParsedPath, so that its action guessing reads ours

from tests.support import kube_cel

Obj = dict[str, Any]


def fail(status: int, reason: str, message: str, details: Obj | None = None) -> NoReturn:
    raise kmock.KubernetesError(status, reason, message, details or {})


def parse_path(path: str) -> parsing.ParsedPath:
    """kmock's own parser raises on /api/v1/namespaces and misreads /api/v1/namespaces/NAME."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 2 and parts[0] == "apis":
        group, version, rest = parts[1], (parts[2] if len(parts) > 2 else None), parts[3:]
    else:
        return parsing.ParsedPath()
    namespace = None
    # namespaces/NAME[/status|/finalize] is the Namespace object itself, not a namespaced collection.
    if rest[:1] == ["namespaces"] and len(rest) >= 3 and not (group == "" and rest[2] in ("status", "finalize")):
        namespace, rest = rest[1], rest[2:]
    return parsing.ParsedPath(group, version, rest[0] if rest else None, namespace,
                              rest[1] if len(rest) > 1 else None, "/".join(rest[2:]) or None)


def label_selector(text: str | None) -> Callable[[Mapping[str, str]], bool]:
    """Equality (a=b, a==b, a!=b), set (a in (x,y), a notin (x)) and existence (a, !a) requirements."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for part in re.split(r",(?![^(]*\))", text) if text else []:  # commas outside (x,y) sets
        m = re.fullmatch(r"\s*(!?)\s*([\w./-]+)\s*(?:(==|=|!=)\s*([\w.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*", part)
        if m is None:
            fail(400, "BadRequest", f"unable to parse requirement: {part!r}")
        neg, key, op, value, set_op, values = m.groups()
        options = {v.strip() for v in (values or "").split(",")}
        if op in ("=", "=="):
            checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif op == "!=":
            checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif set_op == "in":
            checks.append(lambda labels, k=key, o=options: labels.get(k) in o)
        elif set_op == "notin":  # an absent label is not in any set
            checks.append(lambda labels, k=key, o=options: labels.get(k) not in o)
        else:
            checks.append(lambda labels, k=key, n=bool(neg): (k in labels) != n)
    return lambda labels: all(check(labels) for check in checks)


def field_selector(text: str | None) -> Callable[[Obj], bool]:
    checks: list[tuple[list[str], bool, str]] = []
    for part in filter(None, (text or "").split(",")):
        m = re.fullmatch(r"\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*", part)
        if m is None:
            fail(400, "BadRequest", f"invalid field selector: {part!r}")
        checks.append((m[1].split("."), m[2] != "!=", m[3]))

    def matches(obj: Obj) -> bool:
        for path, equal, value in checks:
            node: Any = obj
            for step in path:
                node = node.get(step) if isinstance(node, dict) else None
            if (str(node if node is not None else "") == value) != equal:
                return False
        return True
    return matches


def draft4(schema: Any) -> Any:
    """openAPIV3Schema → Draft 4: drop x-kubernetes-* keys; ``nullable`` becomes an explicit null."""
    if isinstance(schema, list):
        return [draft4(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: ({k: draft4(v) for k, v in value.items()} if key in ("properties", "patternProperties")
                 else draft4(value))
           for key, value in schema.items() if not key.startswith("x-kubernetes-") and key != "nullable"}
    if schema.get("nullable"):
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        elif "type" not in out:
            out = {"anyOf": [{"type": "null"}, out]}
    return out


def prune(value: Any, schema: Obj, root: bool = False) -> None:
    """Drop fields the structural schema does not know, in place, as the API server does on write."""
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            prune(item, schema["items"])
    if not isinstance(value, dict) or (schema.get("type") != "object" and "properties" not in schema):
        return
    props, extra = schema.get("properties", {}), schema.get("additionalProperties")
    keep = schema.get("x-kubernetes-preserve-unknown-fields") or extra is True
    embedded = root or schema.get("x-kubernetes-embedded-resource")
    for key in list(value):
        if embedded and key in ("apiVersion", "kind", "metadata"):  # ObjectMeta is not the schema's business
            continue
        if key in props:
            prune(value[key], props[key])
        elif isinstance(extra, dict):
            prune(value[key], extra)
        elif not keep:
            del value[key]


def field_path(path: Any) -> str:
    """["spec", "env", 0, "name"] → spec.env[0].name, as the API server names fields."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def schema_causes(validator: jsonschema.Draft4Validator, obj: Obj) -> list[Obj]:
    """The ``details.causes`` of a 422 Status, one per schema violation."""
    causes: list[Obj] = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]):
        if error.validator == "required":
            for missing in [p for p in error.validator_value if p not in error.instance]:
                field = field_path([*error.absolute_path, missing])
                causes.append({"reason": "FieldValueRequired", "field": field, "message": "Required value"})
        else:
            field = field_path(error.absolute_path) or "<root>"
            reason = "FieldValueNotSupported" if error.validator == "enum" else "FieldValueInvalid"
            message = f"Invalid value: {json.dumps(error.instance)}: {field} in body: {error.message}"
            causes.append({"reason": reason, "field": field, "message": message})
    return causes


@dataclass(frozen=True)
class ApiCall:
    """One request as RBAC sees it; ``resource`` is None for non-resource URLs (discovery, /version)."""

    verb: str
    group: str | None
    version: str | None
    resource: str | None
    subresource: str | None
    namespace: str | None
    name: str | None
    path: str
    user_agent: str


@dataclass(frozen=True)
class Event:
    rv: int
    resource: kmock.resource
    type: str
    obj: Obj
    old: Obj | None


@dataclass
class Crd:
    kind: str
    schema: Obj | None
    validator: jsonschema.Draft4Validator | None
    prune: bool
    cel: kube_cel.Node | None = None  # the compiled x-kubernetes-validations rules, None if it has none


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_call(request: rendering.Request, path: parsing.ParsedPath) -> ApiCall:
    """The RBAC verb and coordinates of a request."""
    method, named = request.method.value, path.name is not None
    verb = {"GET": "watch" if request.params.get("watch") in ("true", "1") else "get" if named else "list",
            "POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete" if named else "deletecollection"}.get(method, method.lower())
    return ApiCall(verb if path.plural else method.lower(), path.group, path.version, path.plural,
                   path.subresource, path.namespace, path.name, request.url.path,
                   request.headers.get("User-Agent", ""))


def request_selector(request: rendering.Request) -> Callable[[Obj | None], bool]:
    """Whether an object is one a get/list/watch request asks for: its namespace, name, label and
    field selectors."""
    labels = label_selector(request.params.get("labelSelector"))
    fields = field_selector(request.params.get("fieldSelector"))

    def matches(obj: Obj | None) -> bool:
        meta = (obj or {}).get("metadata", {})
        return (obj is not None and request.namespace in (None, meta.get("namespace"))
                and request.name in (None, meta.get("name")) and labels(meta.get("labels") or {})
                and fields(obj))
    return matches
