"""The RayJobs the operator builds against KubeRay's published CRD: valid, and nothing a real API
server would prune. Skipped unless TRAINFORGE_KUBERAY_CRDS points at the CRDs (CI sets it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft4Validator

from tests.unit.test_rayjob import GPU_SPEC, SCHEMA_CASES, build, workers_of

# --- KubeRay's CRD: valid, and nothing a real API server would prune -----------------------------

CRDS = os.environ.get("TRAINFORGE_KUBERAY_CRDS")
needs_crds = pytest.mark.skipif(
    not CRDS, reason="TRAINFORGE_KUBERAY_CRDS unset: point it at a folder holding KubeRay's ray.io_rayjobs.yaml")


@pytest.fixture(scope="module")
def rayjob_schema() -> dict[str, Any]:
    assert CRDS is not None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 25k lines: libyaml when present
    crd = yaml.load((Path(CRDS) / "ray.io_rayjobs.yaml").read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    assert version["served"] and version["storage"]
    return version["schema"]["openAPIV3Schema"]


def without_kubernetes_extensions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_kubernetes_extensions(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if isinstance(node, list):
        return [without_kubernetes_extensions(v) for v in node]
    return node


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths of keys a structural schema does not define: what the API server silently prunes."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, list):
        items = schema.get("items", {})
        return [p for i, v in enumerate(value) for p in unknown_fields(v, items, f"{path}[{i}]")]
    if not isinstance(value, dict):
        return []
    found: list[str] = []
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for key, sub in value.items():
        where = f"{path}.{key}"
        if where == ".metadata":
            continue  # the root's ObjectMeta is the API server's own, not this schema's
        if key in properties:
            found += unknown_fields(sub, properties[key], where)
        elif isinstance(extra, dict):
            found += unknown_fields(sub, extra, where)
        elif extra is not True:
            found.append(where)
    return found


@needs_crds
@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_rayjob_validates_against_kuberay_crd(case: str, rayjob_schema: dict[str, Any]) -> None:
    rayjob = build(**SCHEMA_CASES[case])
    validator = Draft4Validator(without_kubernetes_extensions(rayjob_schema))
    errors = sorted(validator.iter_errors(rayjob), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


@needs_crds
@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_rayjob_has_no_field_kuberay_would_prune(case: str, rayjob_schema: dict[str, Any]) -> None:
    rayjob = build(**SCHEMA_CASES[case])
    assert unknown_fields(rayjob, rayjob_schema) == []


@needs_crds
def test_the_pruning_check_sees_unknown_fields(rayjob_schema: dict[str, Any]) -> None:
    rayjob = build(**GPU_SPEC)
    rayjob["spec"]["restartPolicy"] = "Never"
    workers_of(rayjob)["template"]["spec"]["containers"][0]["gpus"] = 1
    assert sorted(unknown_fields(rayjob, rayjob_schema)) == [
        ".spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0].gpus",
        ".spec.restartPolicy",
    ]


@needs_crds
def test_the_schema_check_sees_wrong_types(rayjob_schema: dict[str, Any]) -> None:
    rayjob = build()
    workers_of(rayjob)["rayStartParams"]["num-cpus"] = 2  # KubeRay's rayStartParams are strings only
    validator = Draft4Validator(without_kubernetes_extensions(rayjob_schema))
    assert [list(e.path)[-1] for e in validator.iter_errors(rayjob)] == ["num-cpus"]
