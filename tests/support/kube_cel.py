"""CRD validation rules (``x-kubernetes-validations``) for the test-only API emulator, evaluated with cel-python.

A real API server compiles every rule of a CRD's structural schema when the CRD is written and
evaluates them on each create and update of a custom resource; without this a broken rule would
only show on a real cluster. What is emulated, after apiextensions-apiserver's ``schema/cel``:

- compile at registration: a parse error, an unknown field of a typed object (``self.tsk``), an
  unknown function or variable, a transition rule on an uncorrelatable part of the schema (items of
  a list that is not ``listType: map``), a multi-line rule with no message, a bad ``fieldPath`` or
  ``reason``: all fail loudly (``CelCompileError``), all at once;
- ``self`` typed by the schema (integer → int, number → double, date-time/date → timestamp,
  duration → duration, byte → bytes, int-or-string and untyped → dyn), property names escaped as
  Kubernetes does (``__dash__``, ``__dot__``, ...), the root's (and embedded resources') metadata
  reduced to name and generateName; set and map lists compare without order;
- transition rules (those that use ``oldSelf``) run on update only, where the old value correlates
  (object properties, map keys, map-list keys), and are skipped on create; a null value is not
  validated; errors of rules without ``oldSelf`` on a value equal to its old one are ratcheted;
- failure details as the server words them: ``message``, ``messageExpression`` (falling back to
  ``message`` when it fails), or ``failed rule: RULE``; ``fieldPath`` and ``reason``; runtime errors
  as "... evaluating rule: ...".
- Kubernetes' CEL libraries that cel-python lacks, as celpy functions (``EXTENSIONS``): the string
  library (charAt, indexOf, lastIndexOf, lowerAscii, upperAscii, replace, split, substring, trim,
  join), the list library (isSorted, sum, max, indexOf, lastIndexOf), regex find/findAll, and
  cross-type numeric ordering (``1 < 1.5``).

Not emulated: the cost budget, ``optionalOldSelf`` (celpy has no optionals; registration says so),
the url/ip/cidr/quantity/authz/sets/format libraries (a rule using one fails registration as an
unknown function: add it to ``EXTENSIONS``), rules under ``allOf``/``anyOf``, full type checking
(only field names, variables and function names are checked before a rule runs).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import celpy
import lark
from celpy import celtypes

from tests.support import kube_cel_lib as lib

Obj = dict[str, Any]
_ENV = celpy.Environment()  # builds the parser: ~0.2 s, so once per process
# celpy logs every step of every evaluation at DEBUG: under kopf's --verbose that floods the log, slowly.
logging.getLogger("celpy").setLevel(logging.WARNING)
_REASONS = {"FieldValueInvalid": "Invalid value", "FieldValueForbidden": "Forbidden",
            "FieldValueRequired": "Required value", "FieldValueDuplicate": "Duplicate value"}


class CelCompileError(ValueError):
    """A CRD whose rules a real API server would refuse to store."""


@dataclass(frozen=True)
class Rule:
    location: str  # where it is declared, as a field path ("spec", "spec.items[*]", "<nil>" for the root)
    source: Obj  # the x-kubernetes-validations entry as written
    program: celpy.Runner
    message_program: celpy.Runner | None
    uses_old_self: bool
    field_path: str  # the rule's fieldPath as a path suffix (".min", "[key]"), "" for none


@dataclass
class Node:
    """One schema level that has rules, or has a level below it that has some."""

    schema: Obj
    rules: list[Rule] = field(default_factory=list)
    properties: dict[str, Node] = field(default_factory=dict)
    additional: Node | None = None
    items: Node | None = None


# --- compiling --------------------------------------------------------------------------------------

def compile_schema(schema: Obj | None, where: str = "openAPIV3Schema") -> Node | None:
    """The rule tree of a structural schema (None if it has no rules); CelCompileError lists every bad rule."""
    errors: list[str] = []
    node = _compile(schema, where, "", errors, root=True, correlatable=True) if schema else None
    if errors:
        raise CelCompileError("; ".join(errors))
    return node


def compile_crd(crd: Obj) -> dict[str, Node | None]:
    """Each version's rule tree, by version name; CelCompileError naming the CRD and every bad rule."""
    compiled, errors = {}, []
    for i, version in enumerate(crd["spec"]["versions"]):
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        try:
            compiled[version["name"]] = compile_schema(schema, f"spec.versions[{i}].schema.openAPIV3Schema")
        except CelCompileError as e:
            errors.append(str(e))
    if errors:
        raise CelCompileError(f'CustomResourceDefinition.apiextensions.k8s.io "{crd["metadata"]["name"]}" is '
                              f"invalid: {'; '.join(errors)}")
    return compiled


def _compile(schema: Obj, where: str, path: str, errors: list[str], *, root: bool = False,
             correlatable: bool) -> Node | None:
    node = Node(schema)
    typed = lib.with_object_meta(schema) if root or schema.get("x-kubernetes-embedded-resource") else schema
    for i, source in enumerate(schema.get("x-kubernetes-validations") or []):
        try:
            node.rules.append(_compile_rule(source, typed, path or "<nil>", correlatable))
        except CelCompileError as e:
            errors.append(f"{where}.x-kubernetes-validations[{i}].rule: Invalid value: "
                          f"{json.dumps(source.get('rule'))}: {e}")
    for name, sub in (schema.get("properties") or {}).items():
        if (child := _compile(sub, f"{where}.properties[{name}]", f"{path}.{name}".lstrip("."), errors,
                              correlatable=correlatable)) is not None:
            node.properties[name] = child
    if isinstance(extra := schema.get("additionalProperties"), dict):
        node.additional = _compile(extra, f"{where}.additionalProperties", f"{path}[*]", errors,
                                   correlatable=correlatable)
    if isinstance(items := schema.get("items"), dict):
        keyed = schema.get("x-kubernetes-list-type") == "map"
        node.items = _compile(items, f"{where}.items", f"{path}[*]", errors, correlatable=correlatable and keyed)
    return node if node.rules or node.properties or node.additional or node.items else None


def _compile_rule(source: Obj, schema: Obj, location: str, correlatable: bool) -> Rule:
    text, message = source.get("rule"), source.get("message")
    if not isinstance(text, str) or not text.strip():
        raise CelCompileError("rule must be a non-empty string")
    if "\n" in text.strip() and not message and not source.get("messageExpression"):
        raise CelCompileError("message must be specified if rule contains line breaks")
    if source.get("optionalOldSelf"):
        raise CelCompileError("optionalOldSelf is not emulated (cel-python has no optional types)")
    if (reason := source.get("reason")) is not None and reason not in _REASONS:
        raise CelCompileError(f"reason must be one of {sorted(_REASONS)}, not {reason!r}")
    program, uses_old_self = _program(text, schema)
    if uses_old_self and not correlatable:
        raise CelCompileError("oldSelf cannot be used on the uncorrelatable portion of the schema "
                              "(items of a list that is not listType=map)")
    message_program = _program(source["messageExpression"], schema)[0] \
        if source.get("messageExpression") else None
    return Rule(location, source, program, message_program, uses_old_self,
                _field_path(source.get("fieldPath"), schema))


def _program(text: str, schema: Obj) -> tuple[celpy.Runner, bool]:
    """Parse and check one expression; also whether it uses ``oldSelf`` (a transition rule)."""
    try:
        tree = _ENV.compile(text)
    except celpy.CELParseError as e:
        raise CelCompileError(f"compilation failed: syntax error: {' '.join(str(e).split())}") from None
    checker = _Checker()
    checker.check(tree, {"self": schema, "oldSelf": schema})
    if checker.errors:
        raise CelCompileError("compilation failed: " + ", ".join(checker.errors))
    return _ENV.program(tree, functions=lib.EXTENSIONS), checker.uses_old_self


_PATH_STEP = re.compile(r"\.([^.\[\]']+)|\['((?:[^'\\]|\\.)*)'\]")


def _field_path(text: str | None, schema: Obj) -> str:
    """A rule's fieldPath (".a.b", ".m['k']") checked against the schema, as the server's error path."""
    if not text:
        return ""
    steps = list(_PATH_STEP.finditer(text))
    if "".join(m.group(0) for m in steps) != text:
        raise CelCompileError(f"fieldPath {text!r} is not a JSON path of fields and map keys")
    parts, node = [], schema
    for m in steps:
        step = m.group(1) or m.group(2)
        if step in (node.get("properties") or {}):
            parts.append(f".{step}")
            node = node["properties"][step]
        elif isinstance(node.get("additionalProperties"), dict):
            parts.append(f"[{step}]")
            node = node["additionalProperties"]
        else:
            raise CelCompileError(f"fieldPath {text!r} does not refer to a valid field")
    return "".join(parts)


class _Checker:
    """The checks a CEL type checker would make before a rule runs: fields, variables, functions."""

    _PASS = {"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication", "unary",
             "member", "primary", "paren_expr"}

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.uses_old_self = False

    def check(self, tree: Any, scope: dict[str, Obj | None]) -> Obj | None:
        """Check the subtree and answer the schema of its value where it is a field of ``self``."""
        if not isinstance(tree, lark.Tree):
            return None
        kind, kids = tree.data, tree.children
        if kind in self._PASS and len(kids) == 1:
            return self.check(kids[0], scope)
        if kind == "ident":
            return self._ident(str(kids[0]), scope)
        if kind == "member_dot":
            return self._select(self.check(kids[0], scope), str(kids[1]))
        if kind == "member_index":
            target = self.check(kids[0], scope)
            self.check(kids[1], scope)
            return None if target is None else target.get("items") or _extra(target)
        if kind == "member_dot_arg":
            return self._method(kids, scope)
        if kind == "ident_arg":
            name, args = str(kids[0]), _args(kids[1:])
            if name == "has" and (len(args) != 1 or _unwrap(args[0]).data != "member_dot"):
                self.errors.append("invalid argument to has() macro")
            elif name not in lib.KNOWN_FUNCTIONS:
                self.errors.append(f"undeclared reference to '{name}' (not a CEL function Kubernetes offers, "
                                   "or one tests/support/kube_cel_lib.py does not emulate yet)")
        for kid in kids:
            self.check(kid, scope)
        return None

    def _ident(self, name: str, scope: dict[str, Obj | None]) -> Obj | None:
        if name == "oldSelf" and name in scope:
            self.uses_old_self = True
        if name in scope:
            return scope[name]
        if name not in lib.KNOWN_FUNCTIONS:  # type names (int, string, ...) are identifiers too
            self.errors.append(f"undeclared reference to '{name}'")
        return None

    def _select(self, target: Obj | None, name: str) -> Obj | None:
        if target is None or lib.dyn(target):
            return None
        if lib.typed_object(target):
            for key, sub in target.get("properties", {}).items():
                if lib.escape(key) == name:
                    return sub
            self.errors.append(f"undefined field '{name}'")
            return None
        return _extra(target)

    def _method(self, kids: list[Any], scope: dict[str, Obj | None]) -> Obj | None:
        target, name, args = self.check(kids[0], scope), str(kids[1]), _args(kids[2:])
        if name in lib.MACROS and args:
            var = _unwrap(args[0])
            if var.data != "ident":
                self.errors.append(f"{name}() needs a variable name as its first argument")
                return None
            element = None if target is None else target.get("items") or (
                {"type": "string"} if lib.typed_object(target) or _extra(target) else None)
            for arg in args[1:]:
                self.check(arg, {**scope, str(var.children[0]): element})
            return None
        if name not in lib.KNOWN_FUNCTIONS:
            self.errors.append(f"undeclared reference to '{name}' (not a CEL function Kubernetes offers, "
                               "or one tests/support/kube_cel_lib.py does not emulate yet)")
        for arg in args:
            self.check(arg, scope)
        return None


def _extra(schema: Obj) -> Obj | None:
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def _args(kids: list[Any]) -> list[lark.Tree]:
    exprlist = next((k for k in kids if isinstance(k, lark.Tree) and k.data == "exprlist"), None)
    return list(exprlist.children) if exprlist is not None else []


def _unwrap(tree: lark.Tree) -> lark.Tree:
    while tree.data in _Checker._PASS and len(tree.children) == 1 and isinstance(tree.children[0], lark.Tree):
        tree = tree.children[0]
    return tree


# --- validating -------------------------------------------------------------------------------------

def validate(node: Node | None, obj: Any, old: Any = None) -> list[Obj]:
    """The ``details.causes`` for every failed rule, as a real server reports them (root first)."""
    causes: list[Obj] = []
    if node is not None:
        _validate(node, obj, old, "", causes, root=True, correlated=old is not None, unchanged=False)
    return causes


def _validate(node: Node, value: Any, old: Any, path: str, causes: list[Obj], *, root: bool = False,
              correlated: bool, unchanged: bool) -> None:
    """``correlated``: ``old`` is this value's old self. ``unchanged``: this value (or, where it has no
    correlated old self, its nearest correlated ancestor) equals its old self, for ratcheting."""
    if value is None:
        return  # null values are not validated, as in Kubernetes
    if node.rules:
        causes.extend(_run_rules(node, value, old if correlated else None, path, root, unchanged))

    def child(sub: Node, item: Any, before: Any, where: str, keeps: bool) -> None:
        same = keeps and before == item if keeps else unchanged
        _validate(sub, item, before if keeps else None, where, causes, correlated=keeps, unchanged=same)

    if isinstance(value, dict):
        olds = old if correlated and isinstance(old, dict) else {}
        for name, sub in node.properties.items():
            if name in value:
                child(sub, value[name], olds.get(name), f"{path}.{name}".lstrip("."), correlated and name in olds)
        if node.additional is not None:
            for key, item in value.items():
                child(node.additional, item, olds.get(key), f"{path}[{key}]", correlated and key in olds)
    elif isinstance(value, list) and node.items is not None:
        keys = node.schema.get("x-kubernetes-list-map-keys") or []
        keyed = correlated and node.schema.get("x-kubernetes-list-type") == "map" and isinstance(old, list)
        by_key = {_map_key(o, keys): o for o in old if isinstance(o, dict)} if keyed else {}
        for i, item in enumerate(value):
            key = _map_key(item, keys) if isinstance(item, dict) else None
            child(node.items, item, by_key.get(key), f"{path}[{i}]", keyed and key in by_key)


def _map_key(item: Obj, keys: list[str]) -> str:
    return json.dumps([item.get(k) for k in keys])


def _run_rules(node: Node, value: Any, old: Any, path: str, root: bool, unchanged: bool) -> list[Obj]:
    activation = {"self": lib.to_cel(value, node.schema, root)}
    if old is not None:
        activation["oldSelf"] = lib.to_cel(old, node.schema, root)
    causes = []
    for rule in node.rules:
        if rule.uses_old_self and old is None:
            continue  # transition rules need an old value: never on create
        try:
            result = rule.program.evaluate(activation)
        except celpy.CELEvalError as e:
            result = e
        if result is True or (isinstance(result, celtypes.BoolType) and bool(result)):
            continue
        if not rule.uses_old_self and unchanged:
            continue  # ratcheting: an unchanged value may keep failing a rule added after it was stored
        causes.append(_cause(rule, value, f"{path}{rule.field_path}".lstrip(".") or "<nil>", activation, result))
    return causes


def _cause(rule: Rule, value: Any, where: str, activation: Obj, result: Any) -> Obj:
    reason = rule.source.get("reason") or "FieldValueInvalid"
    if isinstance(result, celpy.CELEvalError) or not isinstance(result, (bool, celtypes.BoolType)):
        detail = f"{_error_text(result)} evaluating rule: {_rule_string(rule.source)}"
        reason = "FieldValueInvalid"
    else:
        detail = _message(rule, activation)
    head = _REASONS[reason]
    if reason == "FieldValueDuplicate":
        return {"reason": reason, "field": where, "message": f"{head}: {json.dumps(value)}"}
    if reason == "FieldValueInvalid" and not isinstance(value, (dict, list)):
        head = f"{head}: {json.dumps(value)}"  # objects and lists omit their value
    return {"reason": reason, "field": where, "message": f"{head}: {detail}"}


def _message(rule: Rule, activation: Obj) -> str:
    if rule.message_program is not None:
        try:
            text = rule.message_program.evaluate(activation)
        except celpy.CELEvalError:
            text = None
        if isinstance(text, str) and text.strip() and "\n" not in text.strip():
            return text.strip()
    if rule.source.get("message"):
        return str(rule.source["message"]).strip()
    return f"failed rule: {_rule_string(rule.source)}"


def _rule_string(source: Obj) -> str:
    return str(source.get("message") or source["rule"]).strip()


def _error_text(result: Any) -> str:
    if isinstance(result, celpy.CELEvalError) and result.args:
        text = str(result.args[0])
        return re.sub(r"^no such member in mapping: '(.*)'$", r"no such key: \1", text)
    return f"rule returned {result!r}, not a bool"

