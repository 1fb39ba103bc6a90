"""Where and how often the complete training state is saved."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import PositiveFloat, PositiveInt, Problems, SpecModel

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_ENDPOINT = re.compile(r"^https?://[^\s/]+(:\d+)?/?$")
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
REMOTE_SCHEMES = ("s3", "gs")


class KeepBestConfig(SpecModel):
    metric: str
    """Reported metric that ranks checkpoints, e.g. val_accuracy."""
    mode: Literal["min", "max"] = "max"
    count: PositiveInt = 1
    """How many best checkpoints to keep beside the newest ones."""


class CheckpointConfig(SpecModel):
    storage: str | None = None
    """Local path or s3://bucket/prefix (gs:// too); default ./trainforge-runs locally, the operator's
    default storage on a cluster. All attempts of a job share it, which is what makes resume work."""
    endpoint: str | None = None
    """S3-compatible endpoint URL (MinIO, Ceph, moto ...), e.g. http://minio.minio:9000."""
    region: str | None = None
    credentials_secret: str | None = None
    """Kubernetes Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, mounted as env on a cluster."""
    signing_key_secret: str | None = None
    """Kubernetes Secret whose `TRAINFORGE_CHECKPOINT_KEY` signs every manifest (HMAC-SHA256) and is
    required of every checkpoint resume takes: a writer of the bucket without the key cannot forge
    one. Locally, set TRAINFORGE_CHECKPOINT_KEY in the environment instead."""
    every_steps: PositiveInt | None = None
    every_seconds: PositiveFloat | None = None
    every_epoch: bool = True
    keep: PositiveInt = 3
    """Newest checkpoints kept (besides keepBest)."""
    keep_best: KeepBestConfig | None = None
    async_: bool = Field(default=True, alias="async")
    """Copy the state at the step, then write, hash and upload it in the background (interval and
    epoch saves of unsharded state); the checkpoint is committed a few steps later."""
    retry_window_seconds: PositiveFloat = 300.0
    """How long each storage operation (listing and reading checkpoints at resume, uploads, downloads,
    retention's prunes) is retried through an outage (connection errors, timeouts, 5xx, throttling)
    before the attempt fails with a reason starting `StorageUnavailable:`. Errors no retry fixes
    (access denied, a missing bucket) fail at once, with the fix."""
    resume_from: str | None = None
    """A checkpoint (its full URI, `.../<run>/checkpoint_...`) to start from when the run has none of
    its own. Naming a checkpoint of a run another job owns takes that run over: without it, a job
    whose name and storage lead to another job's checkpoints is refused rather than resumed."""

    @field_validator("storage")
    @classmethod
    def _storage_form(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("must not be empty; use a path or s3://bucket/prefix")
        scheme, sep, rest = value.partition("://")
        if not sep:
            return value
        if scheme == "file":
            return value
        if scheme not in REMOTE_SCHEMES:
            raise ValueError(f"scheme {scheme!r} is not supported; use s3://bucket/prefix, gs://, or a path")
        bucket = rest.split("/", 1)[0]
        if not _BUCKET.match(bucket):
            raise ValueError(
                f"{bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, dots, hyphens)"
            )
        return value

    @field_validator("resume_from")
    @classmethod
    def _resume_from_form(cls, value: str | None) -> str | None:
        if value is not None and not value.rstrip("/").rsplit("/", 1)[-1].startswith("checkpoint_"):
            raise ValueError(f"{value!r} must name a checkpoint directory, e.g. s3://bucket/runs/exp/checkpoint_...")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint_form(cls, value: str | None) -> str | None:
        if value is not None and not _ENDPOINT.match(value):
            raise ValueError(f"{value!r} must be an http(s) URL of the S3 endpoint, e.g. http://minio:9000")
        return value

    @field_validator("credentials_secret", "signing_key_secret")
    @classmethod
    def _secret_name(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 253 or not _SECRET_NAME.match(value)):
            raise ValueError(f"{value!r} is not a valid Secret name (lowercase DNS subdomain)")
        return value

    @model_validator(mode="after")
    def _remote_only_options(self) -> CheckpointConfig:
        problems = Problems()
        if not self.is_remote:
            for name, alias in (("endpoint", "endpoint"), ("region", "region"),
                                ("credentials_secret", "credentialsSecret")):
                if getattr(self, name) is not None:
                    problems.add(alias, "applies only to s3:// or gs:// storage; set storage: s3://bucket/prefix")
        if self.endpoint is not None and self.scheme != "s3":
            problems.add("endpoint", "applies only to s3:// storage")
        problems.raise_if_any()
        return self

    @property
    def scheme(self) -> str:
        if self.storage and "://" in self.storage:
            return self.storage.split("://", 1)[0]
        return "file"

    @property
    def is_remote(self) -> bool:
        return self.scheme in REMOTE_SCHEMES


