"""The CRD is generated from the models, committed, structural, and fails the build when it drifts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainforge.spec.crd import crd_manifest, crd_yaml
from trainforge.spec.yamlio import loads_all

CRD_PATH = Path("charts/trainforge/files/trainingjobs.trainforge.dev.yaml")
# The only places where anything goes: the task's own arguments, the values a sweep substitutes
# (typed like whatever path they target) and the best trial's config that echoes them.
FREE_FORM_ALLOWED = {
    "spec.task.args",
    "spec.tune.space.*.choice[]",
    "spec.tune.space.*.grid[]",
    "status.tune.best.config",
}


def test_committed_crd_matches_the_models(repo_root: Path) -> None:
    committed = (repo_root / CRD_PATH).read_text()
    assert committed == crd_yaml(), "CRD drifted from trainforge.spec: run `make crd` and commit it"


def test_crd_identity_and_columns() -> None:
    crd = crd_manifest()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "trainingjobs.trainforge.dev"
    assert spec["names"]["shortNames"] == ["tj"]
    assert spec["names"]["plural"] == "trainingjobs"
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = version["additionalPrinterColumns"]
    shown = ["Phase", "Epoch", "Step", "Progress", "ETA", "Loss", "Restarts", "Age"]
    assert [c["name"] for c in columns if not c.get("priority")] == shown
    paths = {c["name"]: c["jsonPath"] for c in columns}
    assert (paths["Progress"], paths["ETA"]) == (".status.progress.percent", ".status.progress.eta")
    assert [c["name"] for c in columns if c.get("priority")] == ["Attempt", "Preemptions", "Checkpoint"]  # -o wide


def _walk(node: dict[str, Any], path: str, visit: Any) -> None:
    visit(node, path)
    for name, sub in node.get("properties", {}).items():
        _walk(sub, f"{path}.{name}" if path else name, visit)
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{path}.*", visit)
    if isinstance(node.get("items"), dict):
        _walk(node["items"], f"{path}[]", visit)


def test_schema_is_structural() -> None:
    schema = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    problems: list[str] = []
    free_form: set[str] = set()

    def visit(node: dict[str, Any], path: str) -> None:
        if "$ref" in node or "oneOf" in node or "allOf" in node or "$defs" in node:
            problems.append(f"{path}: non-structural keyword")
        if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: anyOf outside int-or-string")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties together")
        if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
            problems.append(f"{path}: exclusiveMinimum must be a boolean in OpenAPI v3.0")
        special = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        if "type" not in node and not special:
            problems.append(f"{path}: no type")
        if node.get("x-kubernetes-preserve-unknown-fields"):
            free_form.add(path)

    _walk(schema, "", visit)
    assert not problems, problems
    assert free_form == FREE_FORM_ALLOWED


def test_crd_cli_prints_the_same_document(repo_root: Path) -> None:
    from click.testing import CliRunner
    from trainforge.cli import cli

    result = CliRunner().invoke(cli, ["crd"])
    assert result.exit_code == 0
    assert loads_all(result.output)[0] == crd_manifest()


def test_immutability_rules_name_spec_fields_that_are_not_editable_while_running() -> None:
    from trainforge.spec import TrainingJobSpec
    from trainforge.spec.crd import IMMUTABLE_SCALARS, immutability_rules
    from trainforge.spec.job import MUTABLE_WHILE_RUNNING

    aliases = {f.alias or n for n, f in TrainingJobSpec.model_fields.items()}
    assert set(IMMUTABLE_SCALARS) <= aliases and not set(IMMUTABLE_SCALARS) & MUTABLE_WHILE_RUNNING
    assert aliases >= MUTABLE_WHILE_RUNNING
    for rule in immutability_rules():
        assert "oldSelf.suspend" in rule["rule"] and rule["message"].startswith("spec.")
