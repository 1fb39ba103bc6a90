"""spec.runtime: the user's own code (a directory shipped with the job), extra pip packages and
environment variables, given to every Ray worker through Ray's runtime_env."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator

from .base import NonEmptyStr, SpecModel

PACKAGE_NAME = re.compile(r"^sha256-([0-9a-f]{64})\.zip$")
"""How an uploaded code package is named: by the SHA-256 of its bytes, which the trainer checks."""
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV_PREFIXES = ("TRAINFORGE_", "RAY_")
"""Variables trainforge and Ray set themselves: a job may not override them through spec.runtime.env."""


def is_uri(value: str) -> bool:
    return "://" in value


def package_digest(uri: str) -> str | None:
    """The SHA-256 an uploaded package's URI names; None when the URI does not name one."""
    found = PACKAGE_NAME.match(uri.rstrip("/").rsplit("/", 1)[-1])
    return found.group(1) if found else None


class RuntimeConfig(SpecModel):
    working_dir: NonEmptyStr | None = None
    """The task's code: a local directory when submitting (`trainforge submit` and the SDK pack it,
    upload it to the job's storage and put the package's URI here; `trainforge run` uses it in
    place), or the URI of a package uploaded that way (`s3://.../_code/sha256-<hex>.zip`). Every
    worker runs in it, so `spec.task.entrypoint: my_pkg.train:build` imports from it."""
    excludes: list[NonEmptyStr] = Field(default_factory=list)
    """.gitignore-style patterns left out of the package, besides the directory's own .gitignore."""
    pip: list[NonEmptyStr] = Field(default_factory=list)
    """Extra requirements installed into each worker's environment (Ray runtime_env pip); the
    cluster's nodes must reach the package index."""
    env: dict[str, Annotated[str, Field(max_length=32768)]] = Field(default_factory=dict)
    """Environment variables of the trainer's processes (Ray runtime_env env_vars), locally and on
    a cluster. Pod-level variables (from Secrets) are spec.env."""

    @field_validator("working_dir")
    @classmethod
    def _package_uri(cls, value: str | None) -> str | None:
        if value is not None and is_uri(value) and not value.startswith("file://") and package_digest(value) is None:
            raise ValueError(f"{value!r} does not name a trainforge code package (<storage>/_code/sha256-<hex>.zip); "
                             "give a local directory and let `trainforge submit` upload it")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if name.startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(f"{name!r}: variables starting with {' or '.join(RESERVED_ENV_PREFIXES)} are "
                                 "trainforge's and Ray's own")
        return value

    @property
    def needs_upload(self) -> bool:
        """The working directory is still a local path: it must be packed and uploaded to reach a cluster."""
        return self.working_dir is not None and (not is_uri(self.working_dir) or self.working_dir.startswith("file://"))
