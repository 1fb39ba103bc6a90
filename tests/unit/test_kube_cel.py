"""The emulated API server's CEL rule evaluation (tests/support/kube_cel.py) against what a real one does.

No server needed: the rules are compiled and evaluated directly, on a made-up Widget schema that
uses each feature once. The TrainingJob CRD's own rules run through the emulator in
tests/integration/test_kube_harness.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.kube_cel import CelCompileError, compile_schema, validate

Obj = dict[str, Any]
STRING, INT = {"type": "string"}, {"type": "integer"}


def _schema(rules: list[Obj], **props: Obj) -> Obj:
    return {"type": "object", "properties": {"spec": {"type": "object", "properties": props,
                                                      "x-kubernetes-validations": rules}}}


def _causes(rules: list[Obj], spec: Obj, old: Obj | None = None, **props: Obj) -> list[Obj]:
    node = compile_schema(_schema(rules, **props))
    return validate(node, {"spec": spec}, None if old is None else {"spec": old})


def _fields(causes: list[Obj]) -> list[tuple[str, str]]:
    return [(c["field"], c["message"]) for c in causes]


def test_presence_size_strings_and_list_macros() -> None:
    props = {"name": STRING, "tags": {"type": "array", "items": STRING}, "limit": INT}
    rules = [{"rule": "!has(self.limit) || size(self.tags) <= self.limit", "message": "too many tags"},
             {"rule": "self.name.startsWith('w-') && self.name.matches('^[a-z-]+$')", "message": "bad name"},
             {"rule": "self.tags.all(t, t.size() > 1) && !self.tags.exists(t, t == 'xx')", "message": "bad tag"},
             {"rule": "self.name.lowerAscii().split('-').size() == 2"}]
    assert _causes(rules, {"name": "w-a", "tags": ["ab"]}, **props) == []  # limit absent: has() false
    assert _fields(_causes(rules, {"name": "W-A-B", "tags": ["ab", "cd", "xx", "y"], "limit": 2}, **props)) == [
        ("spec", "Invalid value: too many tags"), ("spec", "Invalid value: bad name"),
        ("spec", "Invalid value: bad tag"),
        ("spec", "Invalid value: failed rule: self.name.lowerAscii().split('-').size() == 2")]


def test_message_expression_field_path_reason_and_runtime_errors() -> None:
    props = {"min": INT, "max": INT, "note": STRING}
    rules = [{"rule": "self.min <= self.max", "messageExpression": "'min ' + string(self.min) + ' > max'",
              "fieldPath": ".min", "reason": "FieldValueForbidden"},
             {"rule": "self.max < 10", "messageExpression": "string(self.max / (self.min - self.min))",
              "message": "max too big"},  # the expression fails at run time: the message stands
             {"rule": "self.note != ''"}]
    assert _fields(_causes(rules, {"min": 15, "max": 12}, **props)) == [
        ("spec.min", "Forbidden: min 15 > max"), ("spec", "Invalid value: max too big"),
        ("spec", "Invalid value: no such key: note evaluating rule: self.note != ''")]


def test_scalar_rules_show_the_value_and_numbers_are_typed_by_the_schema() -> None:
    props = {"ratio": {"type": "number", "x-kubernetes-validations": [{"rule": "self < 1.5 && self > 0"}]},
             "size": {"x-kubernetes-int-or-string": True,
                      "x-kubernetes-validations": [{"rule": "self == 4 || self == '4Gi'", "message": "odd"}]}}
    assert _causes([], {"ratio": 1, "size": 4}, **props) == []  # JSON 1 is a double here
    assert _fields(_causes([], {"ratio": 2, "size": "8Gi"}, **props)) == [
        ("spec.ratio", "Invalid value: 2: failed rule: self < 1.5 && self > 0"),
        ("spec.size", 'Invalid value: "8Gi": odd')]


def test_transition_rules_skip_create_and_correlate_map_list_items_by_key() -> None:
    item = {"type": "object", "properties": {"name": STRING, "port": INT},
            "x-kubernetes-validations": [{"rule": "self.port == oldSelf.port", "message": "port is fixed"}]}
    props = {"ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                       "items": item}, "mode": STRING}
    rules = [{"rule": "self.mode == oldSelf.mode", "message": "mode is fixed"}]
    old = {"mode": "a", "ports": [{"name": "http", "port": 80}, {"name": "grpc", "port": 90}]}
    assert _causes(rules, old, **props) == []  # create: no oldSelf, no transition rule
    reordered = {"mode": "a", "ports": [{"name": "grpc", "port": 90}, {"name": "http", "port": 80},
                                        {"name": "new", "port": 1}]}
    assert _causes(rules, reordered, old, **props) == []
    changed = {"mode": "b", "ports": [{"name": "grpc", "port": 91}]}
    assert _fields(_causes(rules, changed, old, **props)) == [
        ("spec", "Invalid value: mode is fixed"), ("spec.ports[0]", "Invalid value: port is fixed")]


def test_set_lists_compare_without_order_and_unchanged_values_are_ratcheted() -> None:
    props = {"zones": {"type": "array", "x-kubernetes-list-type": "set", "items": STRING},
             "name": {"type": "string", "x-kubernetes-validations": [{"rule": "self.size() < 4"}]}}
    rules = [{"rule": "self.zones == oldSelf.zones", "message": "zones are fixed"}]
    old = {"zones": ["a", "b"], "name": "toolong"}
    assert _causes(rules, {"zones": ["b", "a"], "name": "toolong"}, old, **props) == []  # name unchanged
    assert _fields(_causes(rules, {"zones": ["a", "c"], "name": "longer"}, old, **props)) == [
        ("spec", "Invalid value: zones are fixed"), ("spec.name", 'Invalid value: "longer": failed rule: '
                                                                  "self.size() < 4")]


def test_escaped_names_root_metadata_and_nulls() -> None:
    schema = {"type": "object", "x-kubernetes-validations": [
        {"rule": "self.metadata.name.startsWith(self.spec.prefix__dash__name)", "message": "name needs the prefix"}],
        "properties": {"spec": {"type": "object", "properties": {
            "prefix-name": STRING, "limit": {"type": "integer", "nullable": True,
                                             "x-kubernetes-validations": [{"rule": "self > 0"}]}}}}}
    node = compile_schema(schema)
    ok = {"metadata": {"name": "w-1", "labels": {"a": "b"}}, "spec": {"prefix-name": "w-", "limit": None}}
    assert validate(node, ok) == []  # a null value is not validated
    bad = {"metadata": {"name": "x"}, "spec": {"prefix-name": "w-", "limit": 0}}
    assert _fields(validate(node, bad)) == [("<nil>", "Invalid value: name needs the prefix"),
                                            ("spec.limit", "Invalid value: 0: failed rule: self > 0")]
    schema["x-kubernetes-validations"] = [{"rule": "has(self.metadata.labels)"}]
    with pytest.raises(CelCompileError, match="undefined field 'labels'"):  # only name and generateName
        compile_schema(schema)


@pytest.mark.parametrize(("rule", "error"), [
    ({"rule": "self.name =="}, "syntax error"),
    ({"rule": "self.nmae == 'x'"}, "undefined field 'nmae'"),
    ({"rule": "self.name.quantity() > 1"}, "undeclared reference to 'quantity'"),
    ({"rule": "other == 1"}, "undeclared reference to 'other'"),
    ({"rule": "self.items.all(i, i.nmae != '')"}, "undefined field 'nmae'"),
    ({"rule": "self.name ==\n'x'"}, "message must be specified if rule contains line breaks"),
    ({"rule": "self.name != ''", "fieldPath": ".nope"}, "does not refer to a valid field"),
    ({"rule": "self.name != ''", "reason": "Nope"}, "reason must be one of"),
    ({"rule": "self.name == oldSelf.name", "optionalOldSelf": True}, "optionalOldSelf is not emulated"),
    ({"rule": "has(self)"}, "invalid argument to has() macro"),
])
def test_a_rule_that_does_not_compile_fails_registration(rule: Obj, error: str) -> None:
    props = {"name": STRING, "items": {"type": "array", "items": {"type": "object", "properties": {"name": STRING}}}}
    with pytest.raises(CelCompileError, match=r"properties\[spec\]\.x-kubernetes-validations\[0\]\.rule") as info:
        compile_schema(_schema([rule], **props))
    assert error in str(info.value)


def test_old_self_on_items_of_an_unkeyed_list_fails_registration() -> None:
    item = {"type": "object", "properties": {"name": STRING},
            "x-kubernetes-validations": [{"rule": "self.name == oldSelf.name"}]}
    with pytest.raises(CelCompileError, match="uncorrelatable"):
        compile_schema(_schema([], items={"type": "array", "items": item}))
