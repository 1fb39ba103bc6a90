"""A job's Ray cluster, fenced: Ray token auth with a per-job Secret, and a per-job NetworkPolicy
(the manifests, checked against Kubernetes' own schemas; the operator creating them runs in
tests/integration/test_operator.py)."""

from __future__ import annotations

import base64
import dataclasses

import kubernetes_validate
from trainforge.spec import parse_job
from trainforge.spec.contract import LABEL_JOB
from trainforge_operator.guard import (
    AUTH_TOKEN_KEY,
    auth_secret,
    network_policy,
    new_token,
    owned_by,
    stale_owner,
)
from trainforge_operator.rayjob import build_rayjob
from trainforge_operator.settings import OperatorSettings

from tests.unit.test_rayjob import SETTINGS, UID, body_of, build


def test_every_attempt_turns_ray_token_auth_on_with_the_jobs_secret() -> None:
    cluster = build(attempt=3)["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "digits-ray-auth"}
    off = dataclasses.replace(SETTINGS, ray_auth=False)
    assert "authOptions" not in build_rayjob(body_of(), parse_job(body_of()).spec, 1, off)["spec"]["rayClusterSpec"]


def test_the_secret_holds_a_fresh_token_under_kuberays_key_owned_by_the_job() -> None:
    tokens = {new_token() for _ in range(5)}
    assert len(tokens) == 5 and all(len(t) == 64 for t in tokens)
    secret = auth_secret(body_of(), tokens.pop())
    kubernetes_validate.validate(secret, "1.32", strict=True)
    token = base64.b64decode(secret["data"][AUTH_TOKEN_KEY]).decode()
    assert len(token) == 64 and token not in str(secret)  # stored encoded, as the API server keeps it
    assert secret["metadata"]["ownerReferences"] == [{"apiVersion": "trainforge.dev/v1alpha1", "kind": "TrainingJob",
                                                      "name": "digits", "uid": UID, "controller": True}]
    assert owned_by(secret, body_of()) and not stale_owner(secret, body_of())


def test_an_earlier_incarnations_object_is_told_from_someone_elses() -> None:
    old = auth_secret(body_of(), new_token())
    old["metadata"]["ownerReferences"][0]["uid"] = "another-uid"
    assert stale_owner(old, body_of()) and not owned_by(old, body_of())
    planted = auth_secret(body_of(), "known-to-whoever-made-it")
    del planted["metadata"]["ownerReferences"]
    assert not stale_owner(planted, body_of()) and not owned_by(planted, body_of())


def test_the_network_policy_admits_only_the_jobs_pods_and_the_kuberay_operator() -> None:
    policy = network_policy(body_of(), SETTINGS)
    kubernetes_validate.validate(policy, "1.32", strict=True)
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {LABEL_JOB: "digits"}} and spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert "ports" not in rule  # every port of the head (GCS, dashboard, client) and of the workers
    assert rule["from"] == [{"podSelector": {"matchLabels": {LABEL_JOB: "digits"}}},
                            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
                             "namespaceSelector": {}}]
    pinned = network_policy(body_of(), dataclasses.replace(SETTINGS, kuberay_namespace="kuberay-system"))
    assert pinned["spec"]["ingress"][0]["from"][1]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}}


def test_every_pod_of_an_attempt_carries_the_label_the_policy_selects() -> None:
    rayjob = build()
    spec = rayjob["spec"]
    templates = [spec["rayClusterSpec"]["headGroupSpec"]["template"],
                 spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"], spec["submitterPodTemplate"]]
    assert all(t["metadata"]["labels"][LABEL_JOB] == "digits" for t in templates)


def test_settings_from_env() -> None:
    s = OperatorSettings.from_env({"TRAINFORGE_RAY_AUTH": "false", "TRAINFORGE_NETWORK_POLICY": "0",
                                   "TRAINFORGE_KUBERAY_NAMESPACE": "kuberay",
                                   "TRAINFORGE_KUBERAY_POD_LABELS": "app=kuberay, tier=control"})
    assert (s.ray_auth, s.network_policy, s.kuberay_namespace) == (False, False, "kuberay")
    assert s.kuberay_pod_labels == (("app", "kuberay"), ("tier", "control"))
    assert OperatorSettings.from_env({}).ray_auth and OperatorSettings.from_env({}).network_policy
