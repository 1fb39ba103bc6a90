"""One attempt of a TrainingJob as a KubeRay `ray.io/v1` RayJob manifest. Pure: no I/O, no API calls.

The spec never enters a shell string: KubeRay's submitter runs the entrypoint through bash and Ray's
job supervisor through `sh -c`, so the entrypoint is a constant and the job travels as JSON in the
head container's SPEC_ENV variable, which the Ray driver inherits (raylet -> job supervisor -> driver).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any

from trainforge.spec import API_VERSION, KIND, EnvVar, Toleration, TrainingJobSpec
from trainforge.spec.contract import (
    ANNOTATION_GENERATION,
    ANNOTATION_SPEC_HASH,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_JOB_UID,
    LABEL_MANAGED_BY,
    LINEAGE_ENV,
    RAY_API_VERSION,
    SIGNING_KEY_ENV,
    SPEC_ENV,
    TRAINER_MODULE,
    TrainerPayload,
    attempt_name,
)

from .guard import auth_options
from .settings import OperatorSettings

ENTRYPOINT = f"python -m {TRAINER_MODULE}"
WORKER_GROUP, HEAD_CONTAINER, WORKER_CONTAINER = "workers", "ray-head", "ray-worker"
SUBMITTER_CONTAINER = "ray-job-submitter"  # KubeRay's name for it
GPU_RESOURCE = "nvidia.com/gpu"
SHM_VOLUME = "dshm"
STOP_WAIT_ENV = "RAY_JOB_STOP_WAIT_TIME_S"
PRESTOP_MODULE = "trainforge_trainer.prestop"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

Manifest = dict[str, Any]


def storage_for(spec: TrainingJobSpec, namespace: str, settings: OperatorSettings) -> str | None:
    """Where this job's checkpoints live; None when neither the job nor the operator says.

    A plain path is passed through: on a cluster it only works as a volume shared by every pod,
    which the trainer cannot check from here, so it is the user's call."""
    if spec.checkpoint.storage:
        return spec.checkpoint.storage
    if settings.default_storage:
        return f"{settings.default_storage.rstrip('/')}/{namespace}"
    return None


def endpoint_for(spec: TrainingJobSpec, storage: str | None, settings: OperatorSettings) -> str | None:
    """An S3 endpoint means nothing to gs:// or a path, so the operator's default applies to s3:// only."""
    if spec.checkpoint.endpoint or not (storage and storage.startswith("s3://")):
        return spec.checkpoint.endpoint
    return settings.default_endpoint


def job_payload(body: Mapping[str, Any], spec: TrainingJobSpec, settings: OperatorSettings,
                attempt: int = 1) -> TrainerPayload:
    """Everything the trainer needs. runName is the job's name in every attempt: same run, so it resumes.
    Only called once storage_for found a storage (reconcile fails the job otherwise)."""
    meta = body["metadata"]
    storage = storage_for(spec, meta["namespace"], settings)
    assert storage is not None
    return TrainerPayload(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"], attempt=attempt,
                          run_name=meta["name"], storage=storage, endpoint=endpoint_for(spec, storage, settings),
                          spec=spec)


def payload_spec(rayjob: Mapping[str, Any]) -> TrainingJobSpec | None:
    """The spec an existing attempt was built from; None when its payload is missing or unreadable."""
    try:
        head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        text = next(var["value"] for var in head.get("env") or [] if var.get("name") == SPEC_ENV)
        return TrainerPayload.from_json(text).spec
    except (KeyError, IndexError, TypeError, StopIteration, ValueError):  # ValidationError is a ValueError
        return None


def build_rayjob(body: Mapping[str, Any], spec: TrainingJobSpec, attempt: int,
                 settings: OperatorSettings, spec_hash: str | None = None) -> Manifest:
    """`spec_hash` names the accepted spec the attempt is built from (an annotation): a restart whose
    own RayJob is missing reads that spec back from an earlier attempt carrying the same hash."""
    meta = body["metadata"]
    name = attempt_name(meta["name"], attempt)
    labels = attempt_labels(meta["name"], attempt, meta.get("uid", ""))
    payload = job_payload(body, spec, settings, attempt)
    storage_env = storage_env_vars(spec, payload.endpoint)
    user_env = [k8s_env_var(var) for var in spec.env]
    # Deleting a running RayJob (the suspend grace is over) makes KubeRay stop its Ray job: SIGTERM,
    # then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S, 3 s by default, too short to save a checkpoint.
    # The pod's grace is the time allowed for that; a user's own value still wins.
    stop_env = [{"name": STOP_WAIT_ENV, "value": str(grace_seconds(spec, settings))}]
    # Every pod's preStop hook finds the attempt's stop flag by its lineage.
    lineage_env = [{"name": LINEAGE_ENV, "value": payload.lineage}]
    head_env = merge_env(storage_env, stop_env, user_env, lineage_env,
                         [{"name": SPEC_ENV, "value": payload.to_json()}])
    rayjob_spec: Manifest = {
        "entrypoint": ENTRYPOINT,
        # K8sJobMode (the default) is spelled out: a trainforge upgrade should not change how jobs submit.
        "submissionMode": "K8sJobMode",
        # The cluster goes TTL seconds after the job ends: a minute to read pod logs, not a GPU-hour
        # idling. The RayJob (status) and its submitter Job (the driver's log tail) stay.
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": settings.cluster_ttl_s,
        # One RayJob is one attempt: retries are trainforge's (restartPolicy, preemption accounting).
        "backoffLimit": 0,
        "rayClusterSpec": {
            "rayVersion": settings.ray_version,
            "headGroupSpec": head_group(spec, settings, labels, head_env),
            "workerGroupSpecs": [worker_group(spec, settings, labels, merge_env(storage_env, stop_env, user_env,
                                                                                   lineage_env))],
        },
        "submitterPodTemplate": submitter_template(spec, settings, labels),
    }
    if settings.ray_auth:
        rayjob_spec["rayClusterSpec"]["authOptions"] = auth_options(meta["name"])
    if spec.active_deadline_seconds is not None:
        rayjob_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    rayjob_labels = dict(labels)
    if queue := queue_for(spec, settings):
        # Kueue's RayJob integration: a RayJob with the queue label created suspended waits in the
        # LocalQueue; Kueue unsuspends it when the workload is admitted (quota, fair sharing).
        rayjob_labels[KUEUE_QUEUE_LABEL] = queue
        rayjob_spec["suspend"] = True
    annotations = {ANNOTATION_GENERATION: str(meta.get("generation", ""))}
    if spec_hash:
        annotations[ANNOTATION_SPEC_HASH] = spec_hash
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": rayjob_labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": rayjob_spec,
    }


def queue_for(spec: TrainingJobSpec, settings: OperatorSettings) -> str | None:
    """The Kueue LocalQueue of the job's attempts: the spec's, else the operator's default."""
    return spec.queue or settings.default_queue


def attempt_labels(job_name: str, attempt: int, uid: str = "") -> dict[str, str]:
    labels = {LABEL_JOB: job_name, LABEL_ATTEMPT: str(attempt), LABEL_MANAGED_BY: "trainforge"}
    if uid:
        labels[LABEL_JOB_UID] = uid
    return labels


def owner_reference(body: Mapping[str, Any]) -> Manifest:
    # The TrainingJob controls its RayJobs: deleting it garbage-collects every attempt.
    return {"apiVersion": body.get("apiVersion", API_VERSION), "kind": body.get("kind", KIND),
            "name": body["metadata"]["name"], "uid": body["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


# Pod Security `restricted` (https://kubernetes.io/docs/concepts/security/pod-security-standards/):
# the trainer image's `ray` user (uid 1000, gid 100), no privilege escalation, no capabilities, the
# runtime's seccomp profile. A custom spec.image must run as that non-root user too.
TRAINER_UID, TRAINER_GID = 1000, 100
POD_SECURITY: Manifest = {"runAsNonRoot": True, "runAsUser": TRAINER_UID, "runAsGroup": TRAINER_GID,
                          "fsGroup": TRAINER_GID, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY: Manifest = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                "runAsNonRoot": True}


def head_group(spec: TrainingJobSpec, settings: OperatorSettings, labels: Mapping[str, str],
               env: list[Manifest]) -> Manifest:
    resources = {"cpu": settings.head_cpu, "memory": settings.head_memory}
    container = ray_container(HEAD_CONTAINER, spec, settings, env, resources)
    return {
        # Zero CPUs and GPUs for Ray: no training worker is ever scheduled next to the driver.
        "rayStartParams": {"num-cpus": "0", "num-gpus": "0"},
        "template": pod_template(spec, settings, labels, container, volumes=[]),
    }


def worker_group(spec: TrainingJobSpec, settings: OperatorSettings, labels: Mapping[str, str],
                 env: list[Manifest]) -> Manifest:
    container = ray_container(WORKER_CONTAINER, spec, settings, env, worker_resources(spec))
    container["volumeMounts"] = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
    template = pod_template(spec, settings, labels, container, volumes=[shm_volume(spec)])
    # Workers run user code and never talk to the API server: no token to steal (the head's trainer
    # alone writes status, with the account's token).
    template["spec"]["automountServiceAccountToken"] = False
    if spec.node_selector:
        template["spec"]["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        template["spec"]["tolerations"] = [k8s_toleration(t) for t in spec.tolerations]
    return {
        "groupName": WORKER_GROUP,
        # A fixed-size group: Ray Train's worker count is spec.workers, nothing autoscales.
        "replicas": spec.workers,
        "minReplicas": spec.workers,
        "maxReplicas": spec.workers,
        "rayStartParams": worker_start_params(spec),
        "template": template,
    }


def submitter_template(spec: TrainingJobSpec, settings: OperatorSettings, labels: Mapping[str, str]) -> Manifest:
    """KubeRay's submitter pod (`ray job submit`), spelled out: KubeRay's default one has no
    securityContext (Pod Security `restricted` rejects it) and none of the job's labels (the job's
    NetworkPolicy admits its pods by them). No command: KubeRay fills in its own."""
    resources = {"cpu": "500m", "memory": "512Mi"}
    container = {"name": SUBMITTER_CONTAINER, "image": spec.image or settings.trainer_image,
                 "resources": {"requests": dict(resources), "limits": dict(resources)},
                 "securityContext": copy.deepcopy(CONTAINER_SECURITY)}
    return {"metadata": {"labels": dict(labels)},
            "spec": {"containers": [container], "restartPolicy": "Never", "automountServiceAccountToken": False,
                     "securityContext": copy.deepcopy(POD_SECURITY)}}


def ray_container(name: str, spec: TrainingJobSpec, settings: OperatorSettings, env: list[Manifest],
                  resources: Mapping[str, int | str]) -> Manifest:
    # requests == limits: GPUs demand it, and a training step's speed should not depend on the neighbours.
    return {"name": name, "image": spec.image or settings.trainer_image, "env": env,
            "resources": {"requests": dict(resources), "limits": dict(resources)},
            "lifecycle": {"preStop": {"exec": {"command": prestop_command(grace_seconds(spec, settings))}}},
            "securityContext": copy.deepcopy(CONTAINER_SECURITY)}


def grace_seconds(spec: TrainingJobSpec, settings: OperatorSettings) -> int:
    """The pods' terminationGracePeriodSeconds: the spec's, else the operator's."""
    return spec.termination_grace_period_seconds or settings.termination_grace_s


def prestop_command(grace_s: int) -> list[str]:
    """An evicted pod's hook: it asks the attempt's trainer to checkpoint and stop, and holds the
    pod's SIGTERM (which nothing forwards to the trainer: PID 1 is `ray start`) until the trainer
    is done or the grace is nearly over. It always exits 0: a failing hook must not block the kill."""
    return ["python", "-m", PRESTOP_MODULE, "--grace-seconds", str(grace_s)]


def pod_template(spec: TrainingJobSpec, settings: OperatorSettings, labels: Mapping[str, str],
                 container: Manifest, volumes: list[Manifest]) -> Manifest:
    pod: Manifest = {
        "containers": [container],
        # Time for the trainer to save and upload an emergency checkpoint when a pod is evicted.
        "terminationGracePeriodSeconds": grace_seconds(spec, settings),
        "securityContext": copy.deepcopy(POD_SECURITY),
    }
    if volumes:
        pod["volumes"] = volumes
    # The trainer on the head patches the job's status: its account needs the chart's trainer Role.
    account = spec.service_account_name or settings.trainer_service_account
    if account:
        pod["serviceAccountName"] = account
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    # Pod labels let the operator and users find an attempt's pods (KubeRay adds the ray.io/* ones).
    return {"metadata": {"labels": dict(labels)}, "spec": pod}


def worker_resources(spec: TrainingJobSpec) -> dict[str, int | str]:
    """spec.resources first, so the typed fields (which Ray's start params mirror) win a clash."""
    resources: dict[str, int | str] = dict(spec.resources)
    resources["cpu"] = cpu_quantity(spec.cpus_per_worker)
    if spec.memory_per_worker is not None:
        resources["memory"] = spec.memory_per_worker
    if spec.gpus_per_worker > 0:
        resources[GPU_RESOURCE] = spec.gpus_per_worker
    return resources


def worker_start_params(spec: TrainingJobSpec) -> dict[str, str]:
    # `ray start --num-cpus` takes an integer: round a fractional CPU up so a worker asking for
    # cpusPerWorker still fits on its own pod. num-gpus is explicit so a CPU pod that happens to
    # see a node's GPUs does not advertise them.
    return {"num-cpus": str(math.ceil(spec.cpus_per_worker)), "num-gpus": str(spec.gpus_per_worker)}


def cpu_quantity(cpus: float) -> str:
    millis = max(1, round(cpus * 1000))
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def shm_volume(spec: TrainingJobSpec) -> Manifest:
    """PyTorch DataLoader workers and NCCL outgrow the 64 MiB /dev/shm a container gets by default."""
    empty_dir: Manifest = {"medium": "Memory"}
    if spec.memory_per_worker is not None:
        # Memory-backed: it counts against the pod's memory anyway; the cap makes overuse an eviction.
        empty_dir["sizeLimit"] = spec.memory_per_worker
    return {"name": SHM_VOLUME, "emptyDir": empty_dir}


def storage_env_vars(spec: TrainingJobSpec, endpoint: str | None) -> list[Manifest]:
    """S3 settings for head and workers alike: workers upload their own checkpoint shards."""
    env: list[Manifest] = []
    secret = spec.checkpoint.credentials_secret
    if secret:
        env += [secret_env("AWS_ACCESS_KEY_ID", secret), secret_env("AWS_SECRET_ACCESS_KEY", secret),
                secret_env("AWS_SESSION_TOKEN", secret, optional=True)]
    if spec.checkpoint.signing_key_secret:  # every rank writes or checks manifests
        env.append(secret_env(SIGNING_KEY_ENV, spec.checkpoint.signing_key_secret))
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    if spec.checkpoint.region:
        env.append({"name": "AWS_REGION", "value": spec.checkpoint.region})
    return env


def secret_env(name: str, secret: str, optional: bool = False) -> Manifest:
    ref: Manifest = {"name": secret, "key": name}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def k8s_env_var(var: EnvVar) -> Manifest:
    if var.value_from is None:
        return {"name": var.name, "value": var.value or ""}
    source = var.value_from
    if source.secret_key_ref is not None:
        ref = {"secretKeyRef": {"name": source.secret_key_ref.name, "key": source.secret_key_ref.key}}
    else:
        assert source.config_map_key_ref is not None  # the spec requires exactly one
        ref = {"configMapKeyRef": {"name": source.config_map_key_ref.name, "key": source.config_map_key_ref.key}}
    return {"name": var.name, "valueFrom": ref}


def k8s_toleration(toleration: Toleration) -> Manifest:
    return toleration.model_dump(mode="json", by_alias=True, exclude_none=True)


def merge_env(*groups: Iterable[Manifest]) -> list[Manifest]:
    """One entry per name, a later group replacing an earlier one in place; copies, so that head and
    workers share no object a caller could mutate for both.

    KubeRay's CRD makes `env` a list-map keyed by name, so the API server rejects duplicates. The
    user's env may override the storage settings; SPEC_ENV, passed last, is the operator's alone."""
    merged: dict[str, Manifest] = {}
    for group in groups:
        for var in group:
            merged[var["name"]] = copy.deepcopy(var)
    return list(merged.values())
