"""Self-test of the Kubernetes API emulator harness (tests/support/kube.py): is it faithful enough for kopf?"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.watch
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.support.kube import KUBERAY_CRDS_ENV, Kube, KubeApiError, load_crds, run_operator
from tests.unit.manifests import MALFORMED, manifest

TJ = "trainforge.dev/v1alpha1"
DEMO = "tests.support.demo_operator"
Obj = dict[str, Any]


def _job(name: str, **spec: Any) -> Obj:
    doc = manifest(**spec)
    doc["metadata"]["name"] = name
    return doc


def _config_map(name: str, labels: dict[str, str] | None = None, owners: list[Obj] | None = None,
                finalizers: list[str] | None = None) -> Obj:
    meta: Obj = {"name": name, "labels": labels or {}}
    if owners:
        meta["ownerReferences"] = [{"apiVersion": o["apiVersion"], "kind": o["kind"], "name": o["metadata"]["name"],
                                    "uid": o["metadata"]["uid"]} for o in owners]
    if finalizers:
        meta["finalizers"] = finalizers
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {}}


def _handled(kube: Kube, name: str, generation: int) -> bool:
    """kopf is done with this generation: status reflects it and kopf has stored that it handled this spec."""
    job = kube.get(TJ, "trainingjobs", None, name)
    annotations = job["metadata"].get("annotations", {})
    handled = json.loads(annotations.get("kopf.zalando.org/last-handled-configuration", "{}")).get("spec")
    return job.get("status", {}).get("observedGeneration") == generation and handled == job["spec"]


def test_operator_handles_each_change_once_and_survives_a_restart(kube: Kube) -> None:
    with run_operator(kube, module=DEMO) as op:
        calls = op.module.CALLS
        calls.clear()
        job = kube.create(_job("digits"))
        kube.wait_for(lambda: _handled(kube, "digits", 1), message="the create handler")
        time.sleep(0.3)  # room for a duplicate run to show up
        assert calls.count(("create", "digits")) == 1
        child = kube.get("v1", "configmaps", None, "digits-config")
        assert child["data"] == {"workers": "2"}
        [owner] = child["metadata"]["ownerReferences"]
        assert (owner["uid"], owner["kind"], owner["controller"]) == (job["metadata"]["uid"], "TrainingJob", True)
        assert kube.get(TJ, "trainingjobs", None, "digits")["status"]["phase"] == "Created"

    calls.clear()
    with run_operator(kube, module=DEMO) as op:
        assert op.module.CALLS is calls  # one import per session: the registry and module state persist
        kube.create(_job("second"))
        kube.wait_for(lambda: _handled(kube, "second", 1), message="the second job's create handler")
        assert [c for c in calls if c[0] == "create"] == [("create", "second")]  # digits is not re-created

        patched = kube.patch(TJ, "trainingjobs", None, "digits", {"spec": {"activeDeadlineSeconds": 600}})
        assert patched["metadata"]["generation"] == 2
        kube.wait_for(lambda: _handled(kube, "digits", 2), message="the update handler")
        time.sleep(0.3)
        assert calls.count(("update", "digits")) == 1
        assert kube.get(TJ, "trainingjobs", None, "digits")["status"]["message"] == "updated to generation 2"

        kube.delete(TJ, "trainingjobs", None, "digits")
        assert not kube.exists("v1", "configmaps", None, "digits-config")  # garbage-collected with its owner
        kube.wait_for(lambda: ("event:DELETED", "digits-config") in calls, message="the child's DELETED event")

    operator_calls = {(c.verb, c.group, c.resource, c.subresource) for c in kube.requests
                      if c.user_agent.startswith(("kopf", "OpenAPI"))}
    assert {("list", "trainforge.dev", "trainingjobs", None), ("watch", "trainforge.dev", "trainingjobs", None),
            ("patch", "trainforge.dev", "trainingjobs", None), ("patch", "trainforge.dev", "trainingjobs", "status"),
            ("create", "", "configmaps", None)} <= operator_calls
    warnings = [line for line in op.output.splitlines() if "[WARNING" in line and "not in the main thread" not in line]
    assert warnings == []  # e.g. "Patching failed with inconsistencies" when the emulator misbehaves
    assert "digits" in op.output


def test_kubernetes_client_create_get_conflict_and_logs(kube: Kube) -> None:
    with kube.api_client() as api:
        core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
        created = core.create_namespaced_config_map("default", _config_map("plain"))
        assert created.metadata.uid and created.metadata.resource_version and created.metadata.namespace == "default"
        job = custom.create_namespaced_custom_object("trainforge.dev", "v1alpha1", "default", "trainingjobs",
                                                     _job("via-client"))
        assert job["metadata"]["generation"] == 1 and job["metadata"]["creationTimestamp"]
        with pytest.raises(ApiException) as conflict:
            core.create_namespaced_config_map("default", _config_map("plain"))
        assert conflict.value.status == 409

        core.create_namespaced_pod("default", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "head"},
                                               "spec": {"containers": [{"name": "ray", "image": "ray"}]}})
        kube.set_pod_log("default", "head", "line 1\nline 2\n")
        assert core.read_namespaced_pod_log("head", "default") == "line 1\nline 2\n"
        assert core.read_namespaced_pod_log("head", "default", tail_lines=1) == "line 2\n"

    kube.set_pod_log("default", "head", "start\n", finished=False)
    lines: list[bytes] = []
    first_line = threading.Event()

    def follow() -> None:
        with urllib.request.urlopen(f"{kube.url}/api/v1/namespaces/default/pods/head/log?follow=true",
                                    timeout=10) as stream:
            lines.append(stream.readline())
            first_line.set()
            lines.append(stream.read())  # the rest, until the log is finished

    reader = threading.Thread(target=follow)
    reader.start()
    assert first_line.wait(timeout=10)  # streamed before the log goes on
    kube.set_pod_log("default", "head", "more\n", append=True, finished=True)
    reader.join(timeout=10)
    assert lines == [b"start\n", b"more\n"]


def test_label_selectors_on_list_and_watch(kube: Kube) -> None:
    for name, labels in {"a": {"app": "x", "tier": "web"}, "b": {"app": "y"}, "c": {}}.items():
        kube.create(_config_map(name, labels))

    def names(selector: str) -> set[str]:
        return {o["metadata"]["name"] for o in kube.list("v1", "configmaps", "default", label_selector=selector)}

    assert names("app=x") == {"a"}
    assert names("app==x,tier=web") == {"a"}
    assert names("app!=x") == {"b", "c"}
    assert names("app") == {"a", "b"}
    assert names("!app") == {"c"}
    assert names("app in (x, y)") == {"a", "b"}
    assert names("app notin (x)") == {"b", "c"}
    with pytest.raises(KubeApiError) as bad:
        kube.list("v1", "configmaps", label_selector="app=(")
    assert bad.value.status == 400
    assert [o["metadata"]["name"] for o in kube.list("v1", "configmaps", field_selector="metadata.name=b")] == ["b"]

    since = kube.get("v1", "configmaps", None, "c")["metadata"]["resourceVersion"]
    kube.patch("v1", "configmaps", None, "b", {"metadata": {"labels": {"app": "x"}}})  # starts matching
    kube.patch("v1", "configmaps", None, "a", {"metadata": {"labels": {"app": None}}})  # stops matching
    kube.patch("v1", "configmaps", None, "c", {"data": {"k": "v"}})  # never matches
    events = kube.watch("v1", "configmaps", "default", resource_version=since, label_selector="app=x")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "b"), ("DELETED", "a")]


def test_watch_resumes_after_a_resource_version(kube: Kube) -> None:
    first = kube.create(_config_map("first"))
    second = kube.create(_config_map("second"))
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    kube.patch("v1", "configmaps", None, "first", {"data": {"k": "v"}})
    kube.delete("v1", "configmaps", None, "second")

    with kube.api_client() as api:
        stream = kubernetes.watch.Watch().stream(kubernetes.client.CoreV1Api(api).list_namespaced_config_map,
                                                 "default", resource_version=second["metadata"]["resourceVersion"],
                                                 timeout_seconds=1)
        seen = [(e["type"], e["object"].metadata.name, e["object"].metadata.resource_version) for e in stream]
    assert [s[:2] for s in seen] == [("MODIFIED", "first"), ("DELETED", "second")]
    assert int(seen[0][2]) < int(seen[1][2])

    fresh = kube.watch("v1", "configmaps", "default")  # no version: the current state, as ADDED
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in fresh] == [("ADDED", "first")]
    later = str(int(seen[1][2]))
    assert kube.watch("v1", "configmaps", "default", resource_version=later) == []


def test_status_subresource_generation_and_replace(kube: Kube) -> None:
    # suspended: the CRD's transition rules let a suspended job's spec change (see test_crd_cel_rules_*)
    job = kube.create(_job("iso", suspend=True) | {"status": {"phase": "Running"}})
    assert "status" not in job  # create ignores .status when the CRD has a status subresource
    meta = job["metadata"]
    assert (meta["generation"], meta["namespace"]) == (1, "default") and meta["uid"] and meta["creationTimestamp"]

    main = kube.patch(TJ, "trainingjobs", None, "iso", {"spec": {"workers": 3}, "status": {"phase": "Failed"}})
    assert main["spec"]["workers"] == 3 and "status" not in main and main["metadata"]["generation"] == 2
    status = kube.patch_status(TJ, "trainingjobs", None, "iso", {"phase": "Running"})
    status_with_spec = kube.patch(TJ, "trainingjobs", None, "iso", {"spec": {"workers": 9}},
                                  subresource="status")
    assert status["status"] == {"phase": "Running"} and status["metadata"]["generation"] == 2
    assert status_with_spec["spec"]["workers"] == 3
    annotated = kube.patch(TJ, "trainingjobs", None, "iso", {"metadata": {"annotations": {"a": "b"}}})
    assert annotated["metadata"]["generation"] == 2  # metadata is no spec change
    noop = kube.patch(TJ, "trainingjobs", None, "iso", {"spec": {"workers": 3}})
    assert noop["metadata"]["resourceVersion"] == annotated["metadata"]["resourceVersion"]

    stale = dict(annotated, spec=dict(annotated["spec"], workers=5))
    kube.patch(TJ, "trainingjobs", None, "iso", {"metadata": {"labels": {"x": "y"}}})  # moves the version on
    with pytest.raises(KubeApiError) as conflict:
        kube.replace(stale)
    assert conflict.value.status == 409
    current = kube.get(TJ, "trainingjobs", None, "iso")
    replaced = kube.replace(dict(current, spec=dict(current["spec"], workers=5)))
    assert replaced["spec"]["workers"] == 5 and replaced["metadata"]["generation"] == 3
    assert replaced["status"] == {"phase": "Running"}  # a replace of the main resource keeps .status

    with pytest.raises(KubeApiError) as missing:
        kube.replace(dict(current, metadata=dict(current["metadata"], name="absent")))
    assert missing.value.status == 404
    generated = kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "cm-"}})
    assert generated["metadata"]["name"].startswith("cm-") and len(generated["metadata"]["name"]) == 8
    with pytest.raises(KubeApiError) as no_status:  # configmaps have no status subresource
        kube.patch_status("v1", "configmaps", None, generated["metadata"]["name"], {})
    assert no_status.value.status == 404 and "status" in no_status.value.body["message"]

    test_op = [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
               {"op": "replace", "path": "/spec/workers", "value": 7}]
    with pytest.raises(KubeApiError) as failed_test:
        kube.patch(TJ, "trainingjobs", None, "iso", test_op, content_type="application/json-patch+json")
    assert failed_test.value.status == 422  # what kopf expects to retry its JSON-patches on


def test_garbage_collection_and_finalizers(kube: Kube) -> None:
    job = kube.create(_job("owner"))
    other = kube.create(_job("other-owner"))
    child = kube.create(_config_map("child", owners=[job]))
    kube.create(_config_map("grandchild", owners=[child]))
    kube.create(_config_map("shared", owners=[job, other]))
    kube.create(_config_map("held", owners=[job], finalizers=["example.com/hold"]))
    kube.create(_config_map("unrelated"))

    deleted = kube.delete(TJ, "trainingjobs", None, "owner")
    assert deleted["metadata"]["name"] == "owner"
    assert not kube.exists(TJ, "trainingjobs", None, "owner")
    assert not kube.exists("v1", "configmaps", None, "child")
    assert not kube.exists("v1", "configmaps", None, "grandchild")  # cascades
    shared = kube.get("v1", "configmaps", None, "shared")  # another owner is still alive
    assert [ref["uid"] for ref in shared["metadata"]["ownerReferences"]] == [other["metadata"]["uid"]]
    held = kube.get("v1", "configmaps", None, "held")
    assert held["metadata"]["deletionTimestamp"]  # waits for its finalizer
    with pytest.raises(KubeApiError) as forbidden:
        kube.patch("v1", "configmaps", None, "held", {"metadata": {"finalizers": ["example.com/hold", "new"]}})
    assert forbidden.value.status == 422
    kube.patch("v1", "configmaps", None, "held", {"metadata": {"finalizers": None}})
    assert not kube.exists("v1", "configmaps", None, "held")
    assert kube.exists("v1", "configmaps", None, "unrelated")

    finalized = kube.create(_job("finalized") | {"metadata": {"name": "finalized", "finalizers": ["example.com/x"]}})
    kube.create(_config_map("waits", owners=[finalized]))
    assert kube.delete(TJ, "trainingjobs", None, "finalized")["metadata"]["deletionTimestamp"]
    assert kube.exists("v1", "configmaps", None, "waits")  # its owner still exists, being finalized
    kube.patch(TJ, "trainingjobs", None, "finalized", {"metadata": {"finalizers": []}})
    assert not kube.exists(TJ, "trainingjobs", None, "finalized")
    assert not kube.exists("v1", "configmaps", None, "waits")

    kube.create(_config_map("orphan", owners=[other]))
    kube.delete(TJ, "trainingjobs", None, "other-owner", propagation_policy="Orphan")
    assert "ownerReferences" not in kube.get("v1", "configmaps", None, "orphan")["metadata"]
    assert "ownerReferences" not in kube.get("v1", "configmaps", None, "shared")["metadata"]


def test_crd_schema_validation_and_pruning(kube: Kube) -> None:
    missed = []
    for i, bad in enumerate(MALFORMED):
        try:
            kube.create(_job(f"bad-{i}") | {"spec": bad.doc["spec"]})
        except KubeApiError as e:
            fields = [cause["field"] for cause in e.body["details"]["causes"]]
            if not bad.schema_catches or e.status != 422 or bad.path not in fields or bad.path not in e.body["message"]:
                missed.append((bad.id, e.status, e.body["message"]))
        else:
            if bad.schema_catches:
                missed.append((bad.id, 201, "accepted"))
    assert missed == []

    with kube.api_client() as api, pytest.raises(ApiException) as invalid:
        kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
            "trainforge.dev", "v1alpha1", "default", "trainingjobs", _job("zero", workers=0))
    assert invalid.value.status == 422 and "spec.workers" in invalid.value.body

    typo = kube.create(_job("typo", batch={"gradAcumulation": 2}))
    assert typo["spec"]["batch"] == {}  # unknown fields are pruned, as the API server does
    kube.patch_status(TJ, "trainingjobs", None, "typo", {"phase": "Running", "bogus": 1})
    assert kube.get(TJ, "trainingjobs", None, "typo")["status"] == {"phase": "Running"}
    with pytest.raises(KubeApiError) as bad_patch:
        kube.patch(TJ, "trainingjobs", None, "typo", {"spec": {"workers": -1}})
    assert bad_patch.value.status == 422 and kube.get(TJ, "trainingjobs", None, "typo")["spec"]["workers"] == 2

    [crd] = [c for c in load_crds() if c["spec"]["group"] == "trainforge.dev"]
    kube.register_crd(crd, validate=False)
    assert kube.create(_job("unchecked", workers=0))["spec"]["workers"] == 0


def test_crd_created_through_the_api_is_served(kube: Kube) -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.com"},
           "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"plural": "widgets", "kind": "Widget", "singular": "widget"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "properties": {"spec": {"type": "object", "required": ["size"],
                                                                  "properties": {"size": {"type": "integer"}}}}}}}]}}
    kube.create(crd)
    discovery = kube.request("GET", "/apis/example.com/v1")
    assert [r["name"] for r in discovery["resources"]] == ["widgets"]
    assert kube.create({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
                        "spec": {"size": 1}})["metadata"]["uid"]
    with pytest.raises(KubeApiError) as invalid:
        kube.create({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}, "spec": {}})
    assert invalid.value.body["details"]["causes"][0]["field"] == "spec.size"
    assert {"rayjobs.ray.io", "trainingjobs.trainforge.dev", "widgets.example.com"} <= {
        c["metadata"]["name"] for c in kube.list("apiextensions.k8s.io/v1", "customresourcedefinitions")}


def test_kuberay_crds_come_from_the_folder_when_given(kube: Kube, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    served = kube.get("apiextensions.k8s.io/v1", "customresourcedefinitions", None, "rayjobs.ray.io")
    # KubeRay's own schema when the environment points at it (CI does), else the built-in stand-in
    assert ("schema" in served["spec"]["versions"][0]) == bool(os.environ.get(KUBERAY_CRDS_ENV))
    rayjobs = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": "rayjobs.ray.io"},
               "spec": {"group": "ray.io", "scope": "Namespaced", "names": {"plural": "rayjobs", "kind": "RayJob"},
                        "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                                      "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                          "spec": {"type": "object", "properties": {"entrypoint": {
                                              "type": "string"}}}}}}}]}}
    (tmp_path / "ray.io_rayjobs.yaml").write_text(yaml.safe_dump(rayjobs))
    monkeypatch.setenv(KUBERAY_CRDS_ENV, str(tmp_path))
    by_name = {crd["metadata"]["name"]: crd for crd in load_crds()}
    assert by_name["rayjobs.ray.io"] == rayjobs  # from the folder; rayclusters falls back to the stand-in
    assert "schema" not in by_name["rayclusters.ray.io"]["spec"]["versions"][0]
    kube.register_crd(by_name["rayjobs.ray.io"])
    with pytest.raises(KubeApiError) as invalid:
        kube.create({"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "r"}, "spec": {"entrypoint": 1}})
    assert invalid.value.status == 422


def test_create_answers_201_and_generate_name_picks_a_free_name(kube: Kube) -> None:
    with kube.api_client() as api:
        core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
        _, status, _ = core.create_namespaced_config_map_with_http_info("default", _config_map("plain"))
        assert status == 201  # with 200 the client's typed create would not deserialize the answer
        _, status, _ = custom.create_namespaced_custom_object_with_http_info(
            "trainforge.dev", "v1alpha1", "default", "trainingjobs", _job("created"))
        assert status == 201
    names = {kube.create(_config_map("") | {"metadata": {"generateName": "cm-"}})["metadata"]["name"]
             for _ in range(40)}
    assert len(names) == 40 and all(re.fullmatch(r"cm-[bcdfghjklmnpqrstvwxz2456789]{5}", n) for n in names)
    long = kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "x" * 70}})
    assert len(long["metadata"]["name"]) == 63  # the prefix is cut so that the name stays valid
    with pytest.raises(KubeApiError) as nameless:
        kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}})
    assert nameless.value.status == 422 and nameless.value.body["reason"] == "Invalid"
    assert nameless.value.body["details"]["causes"] == [{"reason": "FieldValueRequired", "field": "metadata.name",
                                                         "message": "Required value: name or generateName is required"}]
