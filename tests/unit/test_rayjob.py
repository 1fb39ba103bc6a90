"""TrainingJob -> RayJob: every field the operator sets, and (with KubeRay's CRD at hand) that the
API server would keep every one of them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from trainforge.spec import TrainingJobSpec, parse_job
from trainforge.spec.contract import SPEC_ENV
from trainforge_operator.rayjob import (
    ENTRYPOINT,
    attempt_name,
    build_rayjob,
    cpu_quantity,
    job_payload,
    payload_spec,
    storage_for,
)
from trainforge_operator.settings import OperatorSettings

from tests.unit.manifests import manifest

NAMESPACE = "ml"
UID = "0b6c5a4e-1111-2222-3333-444455556666"
SETTINGS = OperatorSettings(trainer_image="registry.example/trainer:1", default_storage="s3://tf-runs/jobs/",
                            default_endpoint="http://minio.minio:9000", ray_version="2.60.0",
                            head_cpu="2", head_memory="4Gi", termination_grace_s=120, cluster_ttl_s=60)
GPU_SPEC: dict[str, Any] = {
    "workers": 2, "gpusPerWorker": 1, "cpusPerWorker": 4, "memoryPerWorker": "16Gi",
    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "spot", "value": "true", "effect": "NoExecute", "tolerationSeconds": 30}],
}
CREDENTIALS_SPEC: dict[str, Any] = {
    "checkpoint": {"storage": "s3://team-bucket/runs", "endpoint": "http://ceph.storage:8080",
                   "region": "eu-west-1", "credentialsSecret": "s3-creds"},
}
ENV_SPEC: dict[str, Any] = {
    "serviceAccountName": "trainer",
    "env": [{"name": "WANDB_MODE", "value": "offline"},
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
            {"name": "DATA_ROOT", "valueFrom": {"configMapKeyRef": {"name": "data", "key": "root"}}}],
}
RESOURCES_SPEC: dict[str, Any] = {"cpusPerWorker": 0.5, "resources": {"vpc.amazonaws.com/efa": 1,
                                                                      "example.com/fpga": "2"}}
SCHEMA_CASES = {
    "cpu": {},
    "gpu-tolerations-nodeselector": GPU_SPEC,
    "credentials-endpoint": CREDENTIALS_SPEC,
    "extra-resources": RESOURCES_SPEC,
    "env-valuefrom": ENV_SPEC,
    "everything": {**GPU_SPEC, **CREDENTIALS_SPEC, **ENV_SPEC, "resources": RESOURCES_SPEC["resources"],
                   "image": "registry.example/custom:2", "activeDeadlineSeconds": 3600},
    "own-grace": {"terminationGracePeriodSeconds": 45, "hangTimeoutSeconds": 600},
    "kueue-queue-priority": {"queue": "team-a", "priorityClassName": "batch-high"},
}


def body_of(name: str = "digits", generation: int = 3, **spec: Any) -> dict[str, Any]:
    """A TrainingJob as kopf delivers it: the manifest plus what the API server adds."""
    doc = manifest(**spec)
    doc["metadata"] = {"name": name, "namespace": NAMESPACE, "uid": UID, "generation": generation,
                       "labels": {"team": "vision"}}
    return doc


def spec_of(**spec: Any) -> TrainingJobSpec:
    return parse_job(manifest(**spec)).spec


def build(attempt: int = 1, **spec: Any) -> dict[str, Any]:
    body = body_of(**spec)
    return build_rayjob(body, parse_job(body).spec, attempt, SETTINGS)


def head_of(rayjob: dict[str, Any]) -> dict[str, Any]:
    return rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]


def workers_of(rayjob: dict[str, Any]) -> dict[str, Any]:
    groups = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert len(groups) == 1
    return groups[0]


def container(group: dict[str, Any]) -> dict[str, Any]:
    containers = group["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(group: dict[str, Any]) -> dict[str, dict[str, Any]]:
    env = container(group)["env"]
    names = [var["name"] for var in env]
    assert len(names) == len(set(names)), f"duplicate env names (KubeRay's env is a list-map): {names}"
    return {var["name"]: var for var in env}


def payload_of(rayjob: dict[str, Any]) -> dict[str, Any]:
    return json.loads(env_of(head_of(rayjob))[SPEC_ENV]["value"])


# --- names, storage, payload ---------------------------------------------------------------------


def test_attempt_name() -> None:
    assert attempt_name("digits", 1) == "digits-a1"
    assert attempt_name("digits", 12) == "digits-a12"


def test_storage_is_the_jobs_own_else_the_operator_default_per_namespace() -> None:
    own = spec_of(checkpoint={"storage": "s3://mine/x"})
    unset = spec_of()
    assert storage_for(own, NAMESPACE, SETTINGS) == "s3://mine/x"
    assert storage_for(unset, NAMESPACE, SETTINGS) == "s3://tf-runs/jobs/ml"
    assert storage_for(unset, NAMESPACE, OperatorSettings()) is None


def test_a_path_is_passed_through_for_shared_mounts() -> None:
    spec = spec_of(checkpoint={"storage": "/mnt/shared/runs"})
    assert storage_for(spec, NAMESPACE, SETTINGS) == "/mnt/shared/runs"
    assert job_payload(body_of(checkpoint={"storage": "/mnt/shared/runs"}), spec, SETTINGS).endpoint is None


def test_default_endpoint_applies_to_s3_only() -> None:
    gcs = {"checkpoint": {"storage": "gs://bucket/runs"}}
    assert job_payload(body_of(**gcs), spec_of(**gcs), SETTINGS).endpoint is None
    assert payload_of(build())["endpoint"] == "http://minio.minio:9000"
    assert payload_of(build(**CREDENTIALS_SPEC))["endpoint"] == "http://ceph.storage:8080"


def test_payload_fields() -> None:
    payload = payload_of(build())
    assert payload["name"] == "digits"
    assert payload["namespace"] == NAMESPACE
    assert payload["uid"] == UID
    assert payload["storage"] == "s3://tf-runs/jobs/ml"
    assert payload["attempt"] == 1
    assert set(payload) == {"name", "namespace", "uid", "attempt", "runName", "storage", "endpoint", "spec"}


def test_run_name_is_stable_across_attempts_so_the_trainer_resumes() -> None:
    first, second = payload_of(build(attempt=1)), payload_of(build(attempt=2))
    assert first["runName"] == second["runName"] == "digits"
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert {k: v for k, v in first.items() if k != "attempt"} == {k: v for k, v in second.items() if k != "attempt"}


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_payload_spec_round_trips_into_an_equal_spec(case: str) -> None:
    rayjob, spec = build(**SCHEMA_CASES[case]), spec_of(**SCHEMA_CASES[case])
    text = env_of(head_of(rayjob))[SPEC_ENV]["value"]
    assert TrainingJobSpec.model_validate(json.loads(text)["spec"]) == spec
    assert TrainingJobSpec.model_validate_json(json.dumps(json.loads(text)["spec"])) == spec


def test_payload_spec_reads_an_attempts_spec_back() -> None:
    rayjob = build(**GPU_SPEC)
    assert payload_spec(rayjob) == spec_of(**GPU_SPEC)
    assert payload_spec({"spec": {}}) is None
    head_of(rayjob)["template"]["spec"]["containers"][0]["env"] = [{"name": SPEC_ENV, "value": "not json"}]
    assert payload_spec(rayjob) is None


def test_payload_is_deterministic_json() -> None:
    text = env_of(head_of(build()))[SPEC_ENV]["value"]
    assert text == json.dumps(json.loads(text), sort_keys=True)
    assert build() == build()


def test_head_and_workers_share_no_mutable_object() -> None:
    rayjob = build(**CREDENTIALS_SPEC)
    env_of(head_of(rayjob))["AWS_REGION"]["value"] = "changed"
    assert env_of(workers_of(rayjob))["AWS_REGION"]["value"] == "eu-west-1"


# --- the RayJob itself ---------------------------------------------------------------------------


def test_metadata_names_labels_and_generation() -> None:
    meta = build(attempt=3)["metadata"]
    assert meta["name"] == "digits-a3"
    assert meta["namespace"] == NAMESPACE
    assert meta["labels"] == {"trainforge.dev/job": "digits", "trainforge.dev/attempt": "3",
                              "trainforge.dev/job-uid": UID, "app.kubernetes.io/managed-by": "trainforge"}
    assert meta["annotations"] == {"trainforge.dev/generation": "3"}


def test_owner_reference_is_the_controlling_trainingjob() -> None:
    assert build()["metadata"]["ownerReferences"] == [{
        "apiVersion": "trainforge.dev/v1alpha1", "kind": "TrainingJob", "name": "digits", "uid": UID,
        "controller": True, "blockOwnerDeletion": True,
    }]


def test_pods_carry_the_attempt_labels() -> None:
    rayjob = build(attempt=2)
    for group in (head_of(rayjob), workers_of(rayjob)):
        assert group["template"]["metadata"]["labels"]["trainforge.dev/job"] == "digits"
        assert group["template"]["metadata"]["labels"]["trainforge.dev/attempt"] == "2"


def test_rayjob_spec_lifecycle_fields() -> None:
    rayjob = build()
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["entrypoint"] == "python -m trainforge_trainer.run" == ENTRYPOINT
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 60
    assert spec["backoffLimit"] == 0
    assert "activeDeadlineSeconds" not in spec
    assert "runtimeEnvYAML" not in spec
    assert spec["rayClusterSpec"]["rayVersion"] == "2.60.0"
    assert build(activeDeadlineSeconds=7200)["spec"]["activeDeadlineSeconds"] == 7200


def _strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [s for i, v in enumerate(node) for s in _strings(v, f"{path}[{i}]")]
    return [(path, node)] if isinstance(node, str) else []


def test_the_spec_reaches_no_shell_string() -> None:
    hostile = "'; rm -rf / #$(reboot)`id`"
    rayjob = build(task={"entrypoint": "digits", "args": {"note": hostile}})
    assert rayjob["spec"]["entrypoint"] == ENTRYPOINT
    carriers = [path for path, text in _strings(rayjob) if "rm -rf" in text]
    head_env = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    index = [var["name"] for var in head_env].index(SPEC_ENV)
    assert carriers == [f".spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].env[{index}].value"]
    assert payload_of(rayjob)["spec"]["task"]["args"]["note"] == hostile


def test_head_is_cpu_only_and_sized_by_the_operator() -> None:
    rayjob = build(**GPU_SPEC, serviceAccountName="trainer")
    head = head_of(rayjob)
    assert head["rayStartParams"] == {"num-cpus": "0", "num-gpus": "0"}
    ray_head = container(head)
    assert ray_head["name"] == "ray-head"
    assert ray_head["image"] == "registry.example/trainer:1"
    assert ray_head["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    pod = head["template"]["spec"]
    assert pod["serviceAccountName"] == "trainer"
    assert pod["terminationGracePeriodSeconds"] == 120
    assert "nodeSelector" not in pod and "tolerations" not in pod


def test_spec_image_overrides_the_operator_image_everywhere() -> None:
    rayjob = build(image="registry.example/custom:2")
    assert container(head_of(rayjob))["image"] == container(workers_of(rayjob))["image"] == "registry.example/custom:2"


def test_one_fixed_size_worker_group() -> None:
    group = workers_of(build(workers=4))
    assert group["groupName"] == "workers"
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    assert container(group)["name"] == "ray-worker"


def test_cpu_worker_resources_and_ray_params() -> None:
    group = workers_of(build(cpusPerWorker=2))
    assert container(group)["resources"] == {"requests": {"cpu": "2"}, "limits": {"cpu": "2"}}
    assert group["rayStartParams"] == {"num-cpus": "2", "num-gpus": "0"}


def test_gpu_worker_pod() -> None:
    group = workers_of(build(**GPU_SPEC))
    want = {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 1}
    assert container(group)["resources"] == {"requests": want, "limits": want}
    assert group["rayStartParams"] == {"num-cpus": "4", "num-gpus": "1"}
    pod = group["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 30},
    ]
    assert pod["terminationGracePeriodSeconds"] == 120


def test_fractional_cpus_and_extra_resources() -> None:
    group = workers_of(build(**RESOURCES_SPEC))
    want = {"cpu": "500m", "vpc.amazonaws.com/efa": 1, "example.com/fpga": "2"}
    assert container(group)["resources"] == {"requests": want, "limits": want}
    assert group["rayStartParams"]["num-cpus"] == "1"  # `ray start --num-cpus` is an integer


def test_typed_fields_win_over_the_same_key_in_resources() -> None:
    group = workers_of(build(cpusPerWorker=2, resources={"cpu": "8"}))
    assert container(group)["resources"]["limits"]["cpu"] == "2"


def test_grace_and_ttl_are_operator_settings() -> None:
    assert (OperatorSettings().termination_grace_s, OperatorSettings().cluster_ttl_s) == (120, 60)
    settings = OperatorSettings.from_env({"TRAINFORGE_TERMINATION_GRACE_S": "300", "TRAINFORGE_CLUSTER_TTL_S": "0"})
    assert (settings.termination_grace_s, settings.cluster_ttl_s) == (300, 0)


@pytest.mark.parametrize(("cpus", "quantity"), [(1.0, "1"), (2, "2"), (0.5, "500m"), (2.25, "2250m"), (0.0001, "1m")])
def test_cpu_quantity(cpus: float, quantity: str) -> None:
    assert cpu_quantity(cpus) == quantity


def test_workers_get_a_memory_backed_dev_shm() -> None:
    group = workers_of(build(**GPU_SPEC))
    assert container(group)["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    assert group["template"]["spec"]["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory",
                                                                                   "sizeLimit": "16Gi"}}]
    unbounded = workers_of(build())["template"]["spec"]["volumes"]
    assert unbounded == [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]


def test_the_payload_is_on_the_head_only() -> None:
    rayjob = build()
    assert SPEC_ENV in env_of(head_of(rayjob))
    assert SPEC_ENV not in env_of(workers_of(rayjob))


def test_a_queued_job_is_created_suspended_with_kueues_queue_label() -> None:
    queued = build(queue="team-a", priorityClassName="batch-high")
    assert queued["spec"]["suspend"] is True
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    pods = [head_of(queued)["template"], *(g["template"] for g in queued["spec"]["rayClusterSpec"]["workerGroupSpecs"])]
    assert all(t["spec"]["priorityClassName"] == "batch-high" for t in pods)
    assert "kueue.x-k8s.io/queue-name" not in pods[0]["metadata"]["labels"]  # the RayJob's alone: one workload
    plain = build()
    assert "suspend" not in plain["spec"] and "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]
    assert "priorityClassName" not in head_of(plain)["template"]["spec"]
    settings = OperatorSettings(default_queue="shared", default_storage="s3://bucket/runs")
    by_default = build_rayjob(body_of(), spec_of(), 1, settings)
    assert by_default["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "shared" and by_default["spec"]["suspend"]
