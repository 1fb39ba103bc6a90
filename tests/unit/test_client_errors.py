"""The SDK's one-line errors, against the emulated API server (and no server at all)."""

from __future__ import annotations

import warnings
from pathlib import Path

import kmock
import pytest
from trainforge import Task, TrainingJob, TrainingJobClient
from trainforge.client import (
    ClusterUnreachable,
    CRDNotInstalled,
    InvalidJob,
    JobExists,
    JobNotFound,
    LogsUnavailable,
    PermissionDenied,
)

from tests.support.kube import Kube, serve
from tests.support.kube_emulator import StatefulEmulator

TJS = kmock.resource("trainforge.dev", "v1alpha1", "trainingjobs")


def job(name: str = "digits") -> TrainingJob:
    return TrainingJob(name=name, task=Task("digits"), epochs=1)


def test_a_missing_job_a_taken_name_and_a_refused_spec(kube: Kube) -> None:
    client = TrainingJobClient(namespace="default")
    with pytest.raises(JobNotFound, match=r"no TrainingJob nope in namespace default; `trainforge list -n default`"):
        client.get("nope")
    assert client.submit(job()) == "digits"
    with pytest.raises(JobExists, match="already exists in namespace default: delete it first"):
        client.submit(job())
    with pytest.raises(InvalidJob, match=r"spec\.workers"):
        client.submit({"apiVersion": "trainforge.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "x"},
                       "spec": {"task": {"entrypoint": "digits"}, "workers": 0, "epochs": 1}})
    with pytest.raises(LogsUnavailable, match="no attempt yet"):
        client.logs("digits")
    kube.patch_status("trainforge.dev/v1alpha1", "trainingjobs", "default", "digits", {"attempt": 1})
    with pytest.raises(LogsUnavailable, match=r"driver pod of attempt 1 \(RayJob digits-a1\) is gone"):
        client.logs("digits")


def test_a_cluster_without_the_crd_says_to_install_the_chart(tmp_path: Path) -> None:
    emulator = StatefulEmulator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        emulator.resources.load_bundled()
    with serve(emulator, tmp_path) as server:
        client = TrainingJobClient(api_client=server.api_client(), namespace="default")
        with pytest.raises(CRDNotInstalled, match=r"no TrainingJob resource .*install the trainforge Helm chart"):
            client.list()
        with pytest.raises(CRDNotInstalled):
            client.submit(job())


def test_rbac_denial_names_the_refusal_and_the_role(kube: Kube) -> None:
    forbidden = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                 "message": 'trainingjobs.trainforge.dev is forbidden: User "dev" cannot list resource '
                            '"trainingjobs" in API group "trainforge.dev" in the namespace "default"'}
    kube.emulator[kmock.method.GET, TJS] << 403 << forbidden
    with pytest.raises(PermissionDenied, match=r'RBAC denied: .*User "dev" cannot list.*trainforge-edit role'):
        TrainingJobClient(namespace="default").list()


def test_no_cluster_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
                      "users: [{name: u, user: {}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
                      "current-context: x\n")
    monkeypatch.setenv("KUBECONFIG", str(config))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ClusterUnreachable, match=r"cannot reach the Kubernetes API at http://127\.0\.0\.1:9"):
        TrainingJobClient(namespace="default").list()
    with pytest.raises(ClusterUnreachable, match=r"no Kubernetes cluster configured .*--backend local"):
        TrainingJobClient(context="missing").list()
