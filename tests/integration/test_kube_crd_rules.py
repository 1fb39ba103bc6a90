"""The CRDs' CEL rules (x-kubernetes-validations) through the emulated API server: every rule of the
TrainingJob CRD passes and fails once, a broken rule shows, KubeRay's rules hold, status updates run them.

The emulator's CEL semantics on their own are in tests/unit/test_kube_cel.py.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest

from tests.support.kube import KUBERAY_CRDS_ENV, Kube, KubeApiError, load_crds
from tests.support.kube_cel import CelCompileError
from tests.unit.manifests import manifest

TJ = "trainforge.dev/v1alpha1"
Obj = dict[str, Any]


def _job(name: str, **spec: Any) -> Obj:
    doc = manifest(**spec)
    doc["metadata"]["name"] = name
    return doc


_SUSPENDED = "(has(oldSelf.suspend) && oldSelf.suspend)"


def _frozen(name: str) -> str:
    """The text of the rule that freezes spec.NAME while a job runs (written out here, not taken from crd.py)."""
    same = f"has(self.{name}) == has(oldSelf.{name}) && (!has(self.{name}) || self.{name} == oldSelf.{name})"
    return f"{_SUSPENDED} || ({same})"


RULE_CASES: dict[str, tuple[Obj, Obj]] = {
    # rule text → (spec fields at create, a merge patch of spec that the rule forbids while the job runs)
    f"{_SUSPENDED} || self.task.entrypoint == oldSelf.task.entrypoint": ({}, {"task": {"entrypoint": "other"}}),
    _frozen("image"): ({}, {"image": "repo/trainer:2"}),  # absent → set: the has() half of the rule
    _frozen("workers"): ({}, {"workers": 3}),
    _frozen("cpusPerWorker"): ({"cpusPerWorker": 1}, {"cpusPerWorker": 1.5}),  # JSON int, CEL double
    _frozen("gpusPerWorker"): ({"gpusPerWorker": 0}, {"gpusPerWorker": 1}),
    _frozen("memoryPerWorker"): ({"memoryPerWorker": "4Gi"}, {"memoryPerWorker": 4294967296}),  # int-or-string
    _frozen("precision"): ({"precision": "fp32"}, {"precision": "bf16"}),
    _frozen("compile"): ({}, {"compile": True}),
    _frozen("epochs"): ({}, {"epochs": None}),  # set → removed
    _frozen("maxSteps"): ({}, {"maxSteps": 100}),
    _frozen("stepsPerEpoch"): ({"stepsPerEpoch": 10}, {"stepsPerEpoch": 20}),
    _frozen("seed"): ({"seed": 1}, {"seed": 2}),
    _frozen("deterministic"): ({"deterministic": False}, {"deterministic": True}),
}


def _crd_rules(schema: Any, path: str = "") -> list[tuple[str, Obj]]:
    """Every x-kubernetes-validations entry of a schema with the field path it is declared at."""
    if not isinstance(schema, dict):
        return []
    found = [(path or "<nil>", rule) for rule in schema.get("x-kubernetes-validations") or []]
    for name, sub in (schema.get("properties") or {}).items():
        found += _crd_rules(sub, f"{path}.{name}".lstrip("."))
    for key in ("items", "additionalProperties"):
        found += _crd_rules(schema.get(key), f"{path}[*]")
    return found


def _trainingjob_crd() -> Obj:
    return next(c for c in load_crds() if c["spec"]["group"] == "trainforge.dev")


def _rule_misses(kube: Kube, crd: Obj, cases: dict[str, tuple[Obj, Obj]], prefix: str = "rule") -> list[str]:
    """For each CEL rule of the CRD, through the API: create (transition rules skipped), the change it
    forbids on a running job (422 naming the rule's field and message), the same change once suspended."""
    misses = []
    for i, (path, rule) in enumerate(_crd_rules(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])):
        if rule["rule"] not in cases:
            misses.append(f"no case for the rule at {path}: {rule['rule']}")
            continue
        before, change = cases[rule["rule"]]
        kube.create(_job(name := f"{prefix}-{i}", **before))
        try:
            kube.patch(TJ, "trainingjobs", None, name, {"spec": change})
            misses.append(f"accepted a change that {rule['rule']} forbids")
        except KubeApiError as e:
            cause = {"reason": "FieldValueInvalid", "field": path, "message": f"Invalid value: {rule['message']}"}
            if (e.status, e.body["reason"], e.body["details"]["causes"]) != (422, "Invalid", [cause]) or \
                    f'"{name}" is invalid: {path}: Invalid value: {rule["message"]}' not in e.body["message"]:
                misses.append(f"{rule['rule']}: {e.status} {e.body}")
        kube.patch(TJ, "trainingjobs", None, name, {"spec": {"suspend": True}})
        try:
            kube.patch(TJ, "trainingjobs", None, name, {"spec": change})
        except KubeApiError as e:
            misses.append(f"{rule['rule']} refused a change to a suspended job: {e}")
    return misses


def test_every_cel_rule_of_the_trainingjob_crd_passes_and_fails_through_the_api(kube: Kube) -> None:
    assert _rule_misses(kube, _trainingjob_crd(), RULE_CASES) == []

    running = kube.create(_job("running"))
    with pytest.raises(KubeApiError) as replaced:  # PUT runs the transition rules too
        kube.replace(running | {"spec": dict(running["spec"], workers=5)})
    assert replaced.value.status == 422 and "spec.workers cannot change" in replaced.value.body["message"]
    kube.patch_status(TJ, "trainingjobs", None, "running", {"phase": "Running"})  # spec unchanged: rules hold
    allowed = kube.patch(TJ, "trainingjobs", None, "running", {"spec": {"activeDeadlineSeconds": 60}})
    assert allowed["metadata"]["generation"] == 2  # every rule evaluated, none failed


def test_a_broken_crd_rule_fails_the_rule_test_or_its_registration(kube: Kube) -> None:
    crd = _trainingjob_crd()
    rules = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
    workers = next(r for r in rules if r["message"].startswith("spec.workers "))

    edited = copy.deepcopy(crd)  # compiles, but forgets that a suspended job may change
    wrong = next(r for r in _crd_rules(edited["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
                 if r[1]["rule"] == workers["rule"])[1]
    wrong["rule"] = workers["rule"].removeprefix(f"{_SUSPENDED} || ")
    kube.register_crd(edited)
    assert _rule_misses(kube, edited, RULE_CASES) == [f"no case for the rule at spec: {wrong['rule']}"]
    misses = _rule_misses(kube, edited, RULE_CASES | {wrong["rule"]: RULE_CASES[workers["rule"]]}, "again")
    assert misses == [f"{wrong['rule']} refused a change to a suspended job: 422: TrainingJob.trainforge.dev "
                      f'"again-2" is invalid: spec: Invalid value: {workers["message"]}']

    typo = copy.deepcopy(crd)
    typo["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"][2][
        "rule"] = workers["rule"].replace("self.workers", "self.wrkers")
    with pytest.raises(CelCompileError, match=r"properties\[spec\]\.x-kubernetes-validations\[2\].*undefined field"):
        kube.register_crd(typo)
    typo["metadata"]["name"] = "copies.trainforge.dev"
    typo["spec"]["names"] = {"plural": "copies", "kind": "Copy"}
    with pytest.raises(KubeApiError) as refused:  # a CRD written through the API: not stored
        kube.create(typo)
    assert refused.value.status == 422 and "undefined field 'wrkers'" in refused.value.body["message"]
    assert not kube.exists("apiextensions.k8s.io/v1", "customresourcedefinitions", None, "copies.trainforge.dev")


@pytest.mark.skipif(not os.environ.get(KUBERAY_CRDS_ENV), reason=f"KubeRay's CRDs come from ${KUBERAY_CRDS_ENV}")
def test_kuberays_own_cel_rules_hold_for_rayjobs(kube: Kube) -> None:
    def rayjob(name: str, **spec: Any) -> Obj:
        return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name},
                "spec": {"entrypoint": "python train.py", **spec}}

    kube.create(rayjob("plain"))
    managed = kube.create(rayjob("managed", managedBy="ray.io/kuberay-operator"))
    with pytest.raises(KubeApiError) as foreign:
        kube.create(rayjob("foreign", managedBy="someone-else"))
    assert foreign.value.body["details"]["causes"] == [{
        "reason": "FieldValueInvalid", "field": "spec.managedBy", "message": 'Invalid value: "someone-else": the '
        "managedBy field value must be either 'ray.io/kuberay-operator' or 'kueue.x-k8s.io/multikueue'"}]
    with pytest.raises(KubeApiError) as moved:  # a transition rule on a string
        kube.patch("ray.io/v1", "rayjobs", None, "managed", {"spec": {"managedBy": "kueue.x-k8s.io/multikueue"}})
    assert "the managedBy field is immutable" in moved.value.body["message"]
    assert kube.replace(managed)["spec"]["managedBy"] == "ray.io/kuberay-operator"
    both = {"onSuccess": {"policy": "DeleteCluster"}, "onFailure": {"policy": "DeleteNone"},
            "deletionRules": [{"policy": "DeleteCluster", "condition": {"jobStatus": "SUCCEEDED"}}]}
    with pytest.raises(KubeApiError) as mixed:
        kube.create(rayjob("mixed", deletionStrategy=both))
    assert [c["field"] for c in mixed.value.body["details"]["causes"]] == ["spec.deletionStrategy"]
    rules_only = {"deletionRules": [{"policy": "DeleteCluster", "condition": {"jobStatus": "SUCCEEDED"}}]}
    assert kube.create(rayjob("rules", deletionStrategy=rules_only))["spec"]["deletionStrategy"] == rules_only


def test_status_updates_run_the_rules_with_the_old_status(kube: Kube) -> None:
    status = {"type": "object", "properties": {"phase": {"type": "string"}, "step": {"type": "integer"}},
              "x-kubernetes-validations": [{"rule": "!has(oldSelf.step) || self.step >= oldSelf.step",
                                            "message": "step cannot go back"}]}
    kube.create({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                 "metadata": {"name": "counters.example.com"},
                 "spec": {"group": "example.com", "scope": "Namespaced",
                          "names": {"plural": "counters", "kind": "Counter"},
                          "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                                        "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                            "status": status}}}}]}})
    kube.create({"apiVersion": "example.com/v1", "kind": "Counter", "metadata": {"name": "c"}})
    kube.patch_status("example.com/v1", "counters", None, "c", {"phase": "Running", "step": 5})
    with pytest.raises(KubeApiError) as back:
        kube.patch_status("example.com/v1", "counters", None, "c", {"step": 4})
    assert back.value.status == 422 and back.value.body["details"]["causes"] == [
        {"reason": "FieldValueInvalid", "field": "status", "message": "Invalid value: step cannot go back"}]
    assert kube.patch_status("example.com/v1", "counters", None, "c", {"step": 6})["status"]["step"] == 6
