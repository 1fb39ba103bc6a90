"""Shipping spec.runtime's code: upload a packed directory to the job's storage under its digest,
and fetch it back on the cluster, checking the bytes against the digest the spec names (storage
contents are untrusted: a package changed in the bucket is refused, never run)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from ..checkpoints.retry import Retry
from ..checkpoints.storage import StorageTarget, resolve_storage
from ..spec import TrainingJob
from ..spec.runtime import RuntimeConfig, package_digest
from .package import MAX_PACKAGE_BYTES, CodeError, CodePackage, pack

CODE_DIR = "_code"
"""Packages lie under <storage>/_code/: no job is named so (names start with a letter)."""
CACHE_ENV = "TRAINFORGE_CODE_CACHE"


def upload(package: CodePackage, target: StorageTarget, retry: Retry) -> str:
    """Put the package under the storage (once: the same digest is the same bytes); returns its URI."""
    import pyarrow.fs as pafs

    path = f"{target.path.rstrip('/')}/{CODE_DIR}/{package.name}"
    info = retry.call(f"looking for code package {package.name}", target.filesystem.get_file_info, path)
    if info.type != pafs.FileType.File or info.size != len(package.data):
        retry.call(f"creating {CODE_DIR}/", target.filesystem.create_dir, path.rsplit("/", 1)[0], recursive=True)
        retry.call(f"uploading code package {package.name}", _write, target.filesystem, path, package.data)
    return f"{target.uri.rstrip('/')}/{CODE_DIR}/{package.name}"


def _write(fs: object, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as stream:  # type: ignore[attr-defined]
        stream.write(data)


def ship(job: TrainingJob) -> TrainingJob:
    """The job with a local spec.runtime.workingDir packed and uploaded to its checkpoint storage,
    and the package's URI in its place: the manifest then runs on any cluster (`kubectl apply` too)."""
    runtime = job.spec.runtime
    if runtime is None or not runtime.needs_upload:
        return job
    cfg = job.spec.checkpoint
    if not cfg.storage:
        raise CodeError("spec.runtime.workingDir: a local directory is uploaded to spec.checkpoint.storage, which "
                        "is not set; set it (s3://bucket/prefix), or upload the package yourself and give its URI")
    target = resolve_storage(cfg.storage, cfg.endpoint, cfg.region)
    uri = upload(pack(local_path(runtime), runtime.excludes), target, Retry.for_config(cfg, target.uri))
    doc = job.model_dump(mode="json", by_alias=True, exclude_unset=True)
    doc["spec"]["runtime"]["workingDir"] = uri
    return TrainingJob.model_validate(doc)


def local_path(runtime: RuntimeConfig) -> Path:
    assert runtime.working_dir is not None
    text = runtime.working_dir.removeprefix("file://")
    return Path(text).expanduser()


def materialize(runtime: RuntimeConfig, endpoint: str | None = None, region: str | None = None,
                retry: Retry | None = None) -> Path:
    """A local directory holding exactly what the package holds, for Ray's runtime_env working_dir.

    A local directory is packed here too, so that excludes and limits are the same locally and on a
    cluster; an uploaded one is downloaded and checked against its digest. Both are cached by digest.
    """
    if runtime.needs_upload:
        return extract(pack(local_path(runtime), runtime.excludes))
    assert runtime.working_dir is not None
    digest = package_digest(runtime.working_dir)
    if digest is not None and (cached := _cached(digest)) is not None:
        return cached  # checked when it was unpacked: a later attempt on this node downloads nothing
    return extract(fetch(runtime.working_dir, endpoint, region, retry or Retry()))


def _cached(digest: str) -> Path | None:
    final = cache_root() / digest
    return final if (final / ".complete").exists() else None


def fetch(uri: str, endpoint: str | None, region: str | None, retry: Retry) -> CodePackage:
    digest = package_digest(uri)
    if digest is None:
        raise CodeError(f"spec.runtime.workingDir: {uri} does not name a code package (sha256-<hex>.zip)")
    target = resolve_storage(uri, endpoint, region)
    data = retry.call(f"downloading code package {uri.rsplit('/', 1)[-1]}", _read, target.filesystem, target.path)
    found = hashlib.sha256(data).hexdigest()
    if found != digest:
        raise CodeError(f"spec.runtime.workingDir: {uri} holds bytes with SHA-256 {found}, not the {digest} its "
                        "name says: it was changed in storage and is not run. Submit the job again to upload it anew")
    return CodePackage(data, digest, 0, 0)


def _read(fs: object, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:  # type: ignore[attr-defined]
        return stream.read(MAX_PACKAGE_BYTES + 1)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "trainforge-code")


def extract(package: CodePackage) -> Path:
    """The package unpacked under the cache (once per digest); members that would land outside it,
    links and sizes beyond the limit are refused."""
    if (cached := _cached(package.digest)) is not None:
        return cached
    final = cache_root() / package.digest
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{package.digest[:12]}-", dir=final.parent))
    try:
        _unzip_checked(package.data, staging)
        (staging / ".complete").write_text(package.digest)
        try:
            staging.rename(final)
        except OSError:  # another process got there first: its copy is the same bytes
            if not (final / ".complete").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _unzip_checked(data: bytes, dest: Path) -> None:
    total = 0
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts or info.filename.startswith("\\") or ":" in name.parts[0]:
                raise CodeError(f"code package member {info.filename!r} would land outside its directory")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise CodeError(f"code package member {info.filename!r} is a symbolic link")
            total += info.file_size
            if total > MAX_PACKAGE_BYTES:
                raise CodeError(f"code package unpacks to more than {MAX_PACKAGE_BYTES / 2**20:.0f} MiB")
            if not info.is_dir():
                out = dest / name
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                out.chmod(0o755 if (info.external_attr >> 16) & 0o111 else 0o644)
