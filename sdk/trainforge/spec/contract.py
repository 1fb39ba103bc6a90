"""The wire contract between trainforge's processes: names and payloads shared by the SDK, the
operator, the local supervisor and the trainer. Defined once here; every side imports them.

Note:
    Changing a value here changes what older operators or trainers read: the API group, plural,
    labels and env-var names are part of the public API, like the CRD itself."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any

from .base import NonNegativeInt, SpecModel
from .job import API_GROUP, API_VERSION, KIND, TrainingJobSpec

VERSION = API_VERSION.split("/")[1]
PLURAL = "trainingjobs"
SINGULAR = "trainingjob"
SHORT_NAMES = ("tj",)

RAY_API_VERSION = "ray.io/v1"
RAY_GROUP, RAY_VERSION = RAY_API_VERSION.split("/")
RAYJOBS = "rayjobs"

LABEL_JOB = "trainforge.dev/job"
LABEL_ATTEMPT = "trainforge.dev/attempt"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB_UID = "trainforge.dev/job-uid"
"""On an attempt's RayJob and pods: the uid of the TrainingJob incarnation they belong to (names are
reused when a job is deleted and created again; uids never are)."""
ANNOTATION_GENERATION = "trainforge.dev/generation"
ANNOTATION_SPEC_HASH = "trainforge.dev/spec-hash"

SPEC_ENV = "TRAINFORGE_JOB"
"""Env var carrying the TrainerPayload (JSON) to the trainer: on the head container of a cluster
attempt; never interpolated into a shell string."""
STATUS_INTERVAL_ENV = "TRAINFORGE_STATUS_INTERVAL_S"
"""Seconds between the trainer's progress writes (checkpoints and the end are always written)."""
BACKEND_ENV = "TRAINFORGE_BACKEND"
LOCAL_ROOT_ENV = "TRAINFORGE_LOCAL_ROOT"
DEFAULT_LOCAL_ROOT = "trainforge-runs"
"""Where local jobs and runs live (relative to the working directory) unless told otherwise."""

TRAINER_MODULE = "trainforge_trainer.run"
"""The cluster entrypoint: `python -m trainforge_trainer.run` in every RayJob."""
SUPERVISOR_MODULE = "trainforge_trainer.local.supervisor"
"""The local backend's per-job process: `python -m trainforge_trainer.local.supervisor JOB_DIR`."""
TRAINER_EXTRA_HINT = "install the trainer with `pip install 'trainforge[trainer]'` (torch and Ray)"

SIGNING_KEY_ENV = "TRAINFORGE_CHECKPOINT_KEY"
"""Env var (and the key in spec.checkpoint.signingKeySecret's Secret) holding the manifest signing key."""
LINEAGE_ENV = "TRAINFORGE_LINEAGE"
"""Env var on every pod (head and workers) of an attempt: its lineage id (`lineage_id`). The preStop
hook of a pod finds the attempt's stop flag by it."""
STOP_ACTOR_NAMESPACE = "trainforge"
"""Ray namespace of the attempts' named stop flags (`stop_flag_name`)."""


def attempt_name(job_name: str, attempt: int) -> str:
    """The name of attempt N of a job: its RayJob's name on a cluster, its log's on the local backend."""
    return f"{job_name}-a{attempt}"


def lineage_id(uid: str, attempt: int) -> str:
    """Who may write for attempt N of one incarnation of a job: the job's uid and the attempt number.
    A re-created job (same name, new uid) or a later attempt has another lineage, so writes of a
    stale one are told apart and refused (status preconditions, the run's owner record)."""
    return f"{uid or 'local'}.a{attempt}"


def stop_flag_name(lineage: str) -> str:
    """The named Ray actor an attempt's driver creates and its workers poll: set, they checkpoint at
    the next step boundary and stop. Pods' preStop hooks set it on eviction."""
    return f"trainforge-stop-{lineage}"


class TrainerPayload(SpecModel):
    """Everything the trainer needs to run one attempt; parsed by the trainer with this same model."""

    name: str
    namespace: str
    uid: str = ""
    attempt: NonNegativeInt = 1
    run_name: str
    """The run every attempt of the job shares, so each attempt resumes the last."""
    storage: str
    endpoint: str | None = None
    spec: TrainingJobSpec

    @property
    def lineage(self) -> str:
        return lineage_id(self.uid, self.attempt)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainerPayload:
        """Raises ValueError (pydantic's ValidationError is one) when the payload is not one."""
        return cls.model_validate(json.loads(text))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch: maps merge, null deletes, anything else
    (lists too) replaces. Returns a new document sharing nothing with either argument."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def stamp(now: datetime) -> str:
    """RFC 3339 in UTC to the second, as metav1.Time writes it."""
    if now.tzinfo is not None:
        now = now.astimezone(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    """A metav1.Time string (or a datetime) as an aware datetime; None for nothing."""
    if not value:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


__all__ = [
    "ANNOTATION_GENERATION",
    "ANNOTATION_SPEC_HASH",
    "API_GROUP",
    "API_VERSION",
    "BACKEND_ENV",
    "DEFAULT_LOCAL_ROOT",
    "KIND",
    "LABEL_ATTEMPT",
    "LABEL_JOB",
    "LABEL_JOB_UID",
    "LABEL_MANAGED_BY",
    "LINEAGE_ENV",
    "LOCAL_ROOT_ENV",
    "PLURAL",
    "RAYJOBS",
    "RAY_API_VERSION",
    "RAY_GROUP",
    "RAY_VERSION",
    "SHORT_NAMES",
    "SINGULAR",
    "SPEC_ENV",
    "STATUS_INTERVAL_ENV",
    "STOP_ACTOR_NAMESPACE",
    "SUPERVISOR_MODULE",
    "TRAINER_EXTRA_HINT",
    "TRAINER_MODULE",
    "VERSION",
    "TrainerPayload",
    "attempt_name",
    "lineage_id",
    "merge_patch",
    "parse_time",
    "stamp",
    "stop_flag_name",
    "utcnow",
]
