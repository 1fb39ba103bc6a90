"""spec.runtime.workingDir through the operator: the SDK packs a directory that is neither installed
nor on sys.path and uploads it to moto S3; each attempt's driver (run by the KubeRay stand-in) fetches
it, checks its digest and hands it to Ray, and the workers import the task from it. A package changed
in storage after submission is refused, and a manifest applied with a local directory fails naming
the way out."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from trainforge.client import TrainingJobClient

from tests.integration.test_operator_e2e import cluster, digits_job, status, wait_status
from tests.support.kube import Kube
from tests.support.kuberay_standin import KubeRayStandIn

__all__ = ["cluster"]
pytestmark = pytest.mark.usefixtures("ray_session", "rbac_checked")


def own_code(root: Path) -> Path:
    (root / "shipped_pkg").mkdir(parents=True)
    (root / "shipped_pkg" / "__init__.py").write_text("")
    (root / "shipped_pkg" / "train.py").write_text(
        "from trainforge_trainer.tasks import digits\n\n\ndef build(**args):\n    return digits.build(**args)\n")
    (root / "notes.log").write_text("left out by .gitignore")
    (root / ".gitignore").write_text("*.log\n")
    (root / "made_for.txt").write_text(str(root))  # a package of its own: no node has it unpacked yet
    return root


def shipped_job(name: str, code: Path, bucket: str, endpoint: str) -> dict[str, object]:
    doc = digits_job(name, bucket, endpoint, maxSteps=10)
    doc["spec"]["task"] = {"entrypoint": "shipped_pkg.train:build", "args": {"hidden": 32}}
    doc["spec"]["runtime"] = {"workingDir": str(code), "env": {"SHIPPED_FLAG": "1"}}
    return doc


def test_a_shipped_directory_reaches_the_attempts_workers(kube: Kube, cluster: KubeRayStandIn, bucket: str,
                                                          moto_endpoint: str, tmp_path: Path) -> None:
    client = TrainingJobClient(backend="kubernetes", namespace="default")
    name = client.submit(shipped_job("shipped", own_code(tmp_path / "code"), bucket, moto_endpoint))
    created = kube.get("trainforge.dev/v1alpha1", "trainingjobs", "default", name)
    uri = created["spec"]["runtime"]["workingDir"]
    assert uri.startswith(f"s3://{bucket}/runs/_code/sha256-") and uri.endswith(".zip"), uri
    st = wait_status(kube, name, "finished", lambda s: s.get("phase") in ("Succeeded", "Failed"), 240)
    log = cluster.attempts[("default", f"{name}-a1")].log_path.read_text()
    assert st["phase"] == "Succeeded", (st, log[-3000:])
    assert st["progress"]["step"] == 10 and "code of spec.runtime.workingDir" in log


def test_a_package_changed_in_storage_is_refused(kube: Kube, cluster: KubeRayStandIn, bucket: str,
                                                 moto_endpoint: str, tmp_path: Path) -> None:
    client = TrainingJobClient(backend="kubernetes", namespace="default")
    doc = shipped_job("tampered", own_code(tmp_path / "code"), bucket, moto_endpoint)
    doc["spec"]["suspend"] = True  # created, not run: the package is swapped first
    name = client.submit(doc)
    uri = kube.get("trainforge.dev/v1alpha1", "trainingjobs", "default", name)["spec"]["runtime"]["workingDir"]
    key = uri.removeprefix(f"s3://{bucket}/")
    boto3.client("s3", endpoint_url=moto_endpoint).put_object(Bucket=bucket, Key=key, Body=b"PK not the same")
    client.resume(name)
    st = wait_status(kube, name, "failed", lambda s: s.get("phase") in ("Succeeded", "Failed"), 180)
    assert st["phase"] == "Failed" and "changed in storage" in (st.get("message") or ""), st


def test_a_local_working_dir_applied_to_the_cluster_fails_naming_the_fix(kube: Kube, cluster: KubeRayStandIn,
                                                                         bucket: str, moto_endpoint: str,
                                                                         tmp_path: Path) -> None:
    kube.create(shipped_job("unshipped", tmp_path / "code", bucket, moto_endpoint))  # as kubectl apply would
    st = wait_status(kube, "unshipped", "failed", lambda s: s.get("phase") == "Failed", 60)
    assert st["reason"] == "CodeNotShipped" and "trainforge ship" in st["message"], st
    assert not cluster.attempts and status(kube, "unshipped")["phase"] == "Failed"
