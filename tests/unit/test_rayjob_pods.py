"""TrainingJob -> RayJob, the pods' side: storage credentials, the user's env and service account,
the preStop hook, the attempt's lineage and the termination grace."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest
from trainforge.spec import parse_job
from trainforge.spec.contract import LINEAGE_ENV, SPEC_ENV, lineage_id
from trainforge_operator.rayjob import build_rayjob

from tests.support.pod_security import restricted_violations
from tests.unit.test_rayjob import (
    CREDENTIALS_SPEC,
    ENV_SPEC,
    SCHEMA_CASES,
    SETTINGS,
    UID,
    body_of,
    build,
    container,
    env_of,
    head_of,
    workers_of,
)


def test_credentials_endpoint_and_region_reach_head_and_workers() -> None:
    rayjob = build(**CREDENTIALS_SPEC)
    for group in (head_of(rayjob), workers_of(rayjob)):
        env = env_of(group)
        assert env["AWS_ACCESS_KEY_ID"] == {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {
            "secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}}}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}
        assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "s3-creds", "key": "AWS_SESSION_TOKEN", "optional": True}
        assert env["AWS_ENDPOINT_URL"] == {"name": "AWS_ENDPOINT_URL", "value": "http://ceph.storage:8080"}
        assert env["AWS_REGION"] == {"name": "AWS_REGION", "value": "eu-west-1"}


def test_no_secret_no_credential_env() -> None:
    rayjob = build()
    for group in (head_of(rayjob), workers_of(rayjob)):
        env = env_of(group)
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION"} & set(env)
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.minio:9000"  # the operator's default storage


def test_spec_env_and_service_account_on_every_container() -> None:
    rayjob = build(**ENV_SPEC)
    for group in (head_of(rayjob), workers_of(rayjob)):
        env = env_of(group)
        assert env["WANDB_MODE"] == {"name": "WANDB_MODE", "value": "offline"}
        assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
        assert env["DATA_ROOT"] == {"name": "DATA_ROOT",
                                    "valueFrom": {"configMapKeyRef": {"name": "data", "key": "root"}}}
        assert group["template"]["spec"]["serviceAccountName"] == "trainer"
    assert "serviceAccountName" not in head_of(build())["template"]["spec"]


def test_user_env_overrides_storage_env_but_not_the_payload() -> None:
    rayjob = build(**CREDENTIALS_SPEC, env=[{"name": "AWS_REGION", "value": "us-east-2"},
                                            {"name": SPEC_ENV, "value": "{}"}])
    head = env_of(head_of(rayjob))
    assert head["AWS_REGION"]["value"] == "us-east-2"
    assert json.loads(head[SPEC_ENV]["value"])["name"] == "digits"
    assert env_of(workers_of(rayjob))["AWS_REGION"]["value"] == "us-east-2"


def test_pods_default_to_the_operators_trainer_account_which_a_job_can_override() -> None:

    settings = dataclasses.replace(SETTINGS, trainer_service_account="trainforge-trainer")
    body = body_of()
    default = build_rayjob(body, parse_job(body).spec, 1, settings)
    own = build_rayjob(body_of(serviceAccountName="mine"), parse_job(body_of(serviceAccountName="mine")).spec, 1,
                       settings)
    for rayjob, account in ((default, "trainforge-trainer"), (own, "mine")):
        cluster = rayjob["spec"]["rayClusterSpec"]
        pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        assert {p["template"]["spec"]["serviceAccountName"] for p in pods} == {account}
    assert "serviceAccountName" not in head_of(build())["template"]["spec"]


def test_ray_job_stop_waits_the_pods_termination_grace_unless_the_job_says_otherwise() -> None:
    # KubeRay stops the Ray job of a deleted RayJob (suspend): SIGTERM, then SIGKILL after this wait.
    for group in (head_of(build()), workers_of(build())):
        assert env_of(group)["RAY_JOB_STOP_WAIT_TIME_S"] == {"name": "RAY_JOB_STOP_WAIT_TIME_S", "value": "120"}
    own = build(env=[{"name": "RAY_JOB_STOP_WAIT_TIME_S", "value": "30"}])
    for group in (head_of(own), workers_of(own)):
        assert env_of(group)["RAY_JOB_STOP_WAIT_TIME_S"]["value"] == "30"


def test_the_accepted_spec_hash_is_annotated_when_given() -> None:
    body = body_of()
    annotations = build_rayjob(body, parse_job(body).spec, 1, SETTINGS, "abc123")["metadata"]["annotations"]
    assert annotations == {"trainforge.dev/generation": "3", "trainforge.dev/spec-hash": "abc123"}


# --- eviction: the preStop hook, the lineage it finds the stop flag by, the grace ------------------


def test_every_pod_gets_the_prestop_hook_and_the_attempts_lineage() -> None:
    rayjob = build(attempt=3)
    for group in (head_of(rayjob), workers_of(rayjob)):
        assert env_of(group)[LINEAGE_ENV] == {"name": LINEAGE_ENV, "value": lineage_id(UID, 3)}
        hook = container(group)["lifecycle"]["preStop"]["exec"]["command"]
        assert hook == ["python", "-m", "trainforge_trainer.prestop", "--grace-seconds", "120"]


def test_the_users_env_cannot_take_the_lineage() -> None:
    rayjob = build(env=[{"name": LINEAGE_ENV, "value": "someone-else.a1"}])
    for group in (head_of(rayjob), workers_of(rayjob)):
        assert env_of(group)[LINEAGE_ENV]["value"] == lineage_id(UID, 1)


def test_the_specs_grace_period_sets_the_pods_the_hook_and_the_job_stop_wait() -> None:
    rayjob = build(terminationGracePeriodSeconds=45)
    for group in (head_of(rayjob), workers_of(rayjob)):
        assert group["template"]["spec"]["terminationGracePeriodSeconds"] == 45
        assert env_of(group)["RAY_JOB_STOP_WAIT_TIME_S"]["value"] == "45"
        assert container(group)["lifecycle"]["preStop"]["exec"]["command"][-1] == "45"


# --- pod security: `restricted`, and no token where user code runs without need ------------------

def pod_specs(rayjob: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod an attempt has: head, workers and KubeRay's submitter (`ray job submit`)."""
    return [head_of(rayjob)["template"]["spec"], workers_of(rayjob)["template"]["spec"],
            rayjob["spec"]["submitterPodTemplate"]["spec"]]


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_every_pod_template_passes_pod_security_restricted(case: str) -> None:
    for pod in pod_specs(build(**SCHEMA_CASES[case])):
        assert restricted_violations(pod) == [], case


def test_the_restricted_checker_is_not_vacuous() -> None:
    """A pod as the operator built them before: no security context at all."""
    bare = {"containers": [{"name": "ray-worker", "image": "x"}], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    assert restricted_violations(bare) == ["hostPathVolumes", "restrictedVolumes", "allowPrivilegeEscalation",
                                           "runAsNonRoot", "seccompProfile_restricted", "capabilities_restricted"]
    root = copy.deepcopy(pod_specs(build())[1])
    root["securityContext"]["runAsUser"] = 0
    root["containers"][0]["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]
    assert restricted_violations(root) == ["capabilities_baseline", "runAsUser", "capabilities_restricted"]


def test_worker_pods_mount_no_service_account_token_and_the_head_keeps_its_own() -> None:
    head, workers, submitter = pod_specs(build(serviceAccountName="trainer"))
    assert workers["automountServiceAccountToken"] is False and submitter["automountServiceAccountToken"] is False
    assert "automountServiceAccountToken" not in head and head["serviceAccountName"] == "trainer"


def test_the_signing_key_secret_reaches_every_rank() -> None:
    rayjob = build(checkpoint={"storage": "s3://ckpt/runs", "signingKeySecret": "ckpt-key"})
    for group in (head_of(rayjob), workers_of(rayjob)):
        assert env_of(group)["TRAINFORGE_CHECKPOINT_KEY"] == {"name": "TRAINFORGE_CHECKPOINT_KEY", "valueFrom": {
            "secretKeyRef": {"name": "ckpt-key", "key": "TRAINFORGE_CHECKPOINT_KEY"}}}
    assert "TRAINFORGE_CHECKPOINT_KEY" not in env_of(head_of(build()))
