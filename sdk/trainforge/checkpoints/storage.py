"""Where runs live: a local directory or s3://bucket/prefix on any S3-compatible endpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


@dataclass(frozen=True)
class StorageTarget:
    """A run's storage as Ray Train wants it: `storage_path` on `filesystem`."""

    uri: str
    """What the user wrote, normalised: an absolute path or s3://bucket/prefix."""
    filesystem: Any
    path: str
    """The path on `filesystem` (no scheme)."""
    endpoint: str | None = None
    region: str | None = None

    def run_path(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    def run_uri(self, name: str) -> str:
        return f"{self.uri.rstrip('/')}/{name}"


def s3_filesystem(endpoint: str | None, region: str | None) -> Any:
    """pyarrow's S3 filesystem. Credentials come from the usual AWS chain (env vars, which a
    cluster fills from the spec's credentialsSecret). `endpoint` falls back to AWS_ENDPOINT_URL."""
    import pyarrow.fs as pafs

    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {
        # pyarrow's own retries cover throttling; outages longer than that are retried by the uploader.
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=5),
        "connect_timeout": 5.0,
        "request_timeout": 60.0,
    }
    if region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
        kwargs["region"] = region or os.environ.get("AWS_REGION") or os.environ["AWS_DEFAULT_REGION"]
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
        kwargs.setdefault("region", "us-east-1")  # custom endpoints ignore it, but pyarrow wants one
        kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


def resolve_storage(uri: str, endpoint: str | None = None, region: str | None = None) -> StorageTarget:
    """Turn a storage URI or path into the (filesystem, path) pair used for every read and write."""
    try:
        import pyarrow.fs as pafs
    except ImportError as exc:  # the SDK alone does not carry pyarrow
        raise RuntimeError("reading checkpoints needs pyarrow: pip install 'trainforge[trainer]'") from exc
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme == "file":
        local = str(Path(rest if sep else uri).expanduser().resolve())
        return StorageTarget(local, pafs.LocalFileSystem(), local)
    if scheme == "s3":
        return StorageTarget(f"s3://{rest.rstrip('/')}", s3_filesystem(endpoint, region), rest.rstrip("/"),
                             endpoint, region)
    fs, path = pafs.FileSystem.from_uri(uri)
    return StorageTarget(uri.rstrip("/"), fs, path)
