"""Generate the TrainingJob CustomResourceDefinition from the pydantic models.

The API server wants a *structural* OpenAPI v3 schema: every node typed, no $ref, no anyOf/oneOf
carrying types, OpenAPI-3.0 boolean exclusiveMinimum. Defaults are deliberately left out: the models
apply them, so a job means the same thing whether it arrived through kubectl or the SDK, and checks
like "gamma applies only to name: step" see exactly what the user wrote.
"""

from __future__ import annotations

from typing import Any

from .job import API_GROUP, KIND, TrainingJob

PLURAL = "trainingjobs"
SINGULAR = "trainingjob"
SHORT_NAMES = ["tj"]
VERSION = "v1alpha1"

# Places whose content is genuinely free-form: the user's task arguments and the values a sweep
# substitutes (whose type is that of whatever spec path they target).
_FREE_FORM = {"x-kubernetes-preserve-unknown-fields": True}
_DROP_KEYS = {"title", "default", "additionalProperties", "$defs", "examples"}

IMMUTABLE_SCALARS = ("image", "workers", "cpusPerWorker", "gpusPerWorker", "memoryPerWorker", "precision",
                     "compile", "epochs", "maxSteps", "stepsPerEpoch", "seed", "deterministic")
PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Epoch", "type": "integer", "jsonPath": ".status.progress.epoch"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
    {"name": "Progress", "type": "number", "jsonPath": ".status.progress.percent", "description": "percent"},
    {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.metrics.loss"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt", "priority": 1},
    {"name": "Preemptions", "type": "integer", "jsonPath": ".status.preemptions", "priority": 1},
    {"name": "Checkpoint", "type": "string", "jsonPath": ".status.latestCheckpoint", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite one pydantic JSON-schema node into Kubernetes' structural dialect."""
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return structural(merged, defs)
    if "anyOf" in node:
        return _union(node, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = structural(value, defs) if value else dict(_FREE_FORM)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value
    extra = node.get("additionalProperties")
    if node.get("type") == "object" and "properties" not in node:
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = structural(extra, defs)
        else:
            out.update(_FREE_FORM)
    if node.get("type") == "array" and "items" not in node:
        out["items"] = dict(_FREE_FORM)
    return out


def _union(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    options = [o for o in node["anyOf"] if o.get("type") != "null"]
    nullable = len(options) != len(node["anyOf"])
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if node.get("x-kubernetes-int-or-string"):
        return {k: v for k, v in rest.items() if k not in _DROP_KEYS} | {
            "anyOf": [{"type": "integer"}, {"type": "string"}]
        }
    if len(options) != 1:
        raise ValueError(f"cannot express union {node} structurally; give it one type")
    out = structural({**options[0], **{k: v for k, v in rest.items() if k not in _DROP_KEYS}}, defs)
    if nullable:
        out["nullable"] = True
    return out


def openapi_schema() -> dict[str, Any]:
    raw = TrainingJob.model_json_schema(by_alias=True, mode="validation")
    schema = structural(raw, raw.get("$defs", {}))
    schema.pop("required", None)
    props = schema["properties"]
    # The API server owns metadata's schema; only the root type may be stated.
    props["metadata"] = {"type": "object"}
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    schema["required"] = ["spec"]
    props["spec"]["x-kubernetes-validations"] = immutability_rules()
    return schema


def immutability_rules() -> list[dict[str, str]]:
    """CEL transition rules: the shape of a running job cannot change under it (the operator also
    refuses such edits, for API servers without CEL). Scalars only: equality on unbounded lists
    and maps would blow the API server's CEL cost budget."""
    suspended = "(has(oldSelf.suspend) && oldSelf.suspend)"
    fix = "suspend the job first (spec.suspend: true), or delete and re-create it"
    rules = [{"rule": f"{suspended} || self.task.entrypoint == oldSelf.task.entrypoint",
              "message": f"spec.task.entrypoint cannot change while the job runs; {fix}"}]
    for name in IMMUTABLE_SCALARS:
        same = f"has(self.{name}) == has(oldSelf.{name}) && (!has(self.{name}) || self.{name} == oldSelf.{name})"
        rules.append({"rule": f"{suspended} || ({same})",
                      "message": f"spec.{name} cannot change while the job runs; {fix}"})
    return rules


def crd_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["all", "trainforge"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    from .yamlio import dumps

    header = "# Generated by `trainforge crd` from trainforge.spec; do not edit by hand.\n"
    return header + dumps(crd_manifest())
