"""Where a rank stages its part of a checkpoint and how the checkpoint reaches the run's storage.

`RayStore`: each rank stages into a local temp dir and `ray.train.report(checkpoint=...)` uploads
it (in the background when async) into one directory of the run; Ray Train's `storage_path` and
`storage_filesystem` decide where. Without Ray (torchrun): `DirStore` has all ranks write straight
into a run directory on a shared filesystem; `UploadStore` stages locally and uploads to remote
storage itself, in a background thread when async (the same split Ray's async upload makes).

Every store's transfers go through its `retry` (the checkpointer sets it from the spec's
retryWindowSeconds): outages are ridden out, access denied or a missing bucket fail at once."""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import pyarrow.fs as pafs
from trainforge.checkpoints import resolve_storage
from trainforge.checkpoints.retry import Retry
from trainforge.spec import CheckpointConfig

from .transfer import DEFAULT_RETRY, download_dir, upload_dir


class Store(Protocol):
    fs: Any
    run_path: str
    stages_locally: bool
    """Each rank stages into its own temp dir (removed once uploaded)."""
    trainer_prunes: bool
    """Rank 0 applies retention after saving (under Ray the controller does it)."""
    retry: Retry
    """How uploads and downloads ride out outages (the checkpointer sets the spec's window)."""

    def staging(self, name: str) -> Path: ...

    def commit(self, local: Path | None, name: str, metrics: dict[str, Any], async_upload: bool) -> None:
        """Make the staged checkpoint part of the run; `local` None: this rank wrote nothing."""

    def fetch(self, path: str) -> contextlib.AbstractContextManager[Path]: ...

    def close(self) -> None:
        """Wait for uploads still in flight."""


class DirStore:
    stages_locally = False
    trainer_prunes = True
    retry = DEFAULT_RETRY

    def __init__(self, run_dir: str | Path) -> None:
        self.fs = pafs.LocalFileSystem()
        self.run_path = str(Path(run_dir).resolve())

    def staging(self, name: str) -> Path:
        path = Path(self.run_path) / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def commit(self, local: Path | None, name: str, metrics: dict[str, Any], async_upload: bool) -> None:
        pass  # already in place; the manifest was written last

    @contextlib.contextmanager
    def fetch(self, path: str) -> Iterator[Path]:
        yield Path(path)

    def close(self) -> None:
        pass


class UploadStore:
    """Remote storage without Ray: each rank uploads its own staged part; one upload in flight."""

    stages_locally = True
    trainer_prunes = True
    retry = DEFAULT_RETRY

    def __init__(self, fs: Any, run_path: str) -> None:
        self.fs, self.run_path = fs, run_path.rstrip("/")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainforge-upload")
        self._pending: Future[None] | None = None

    def staging(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-"))

    def commit(self, local: Path | None, name: str, metrics: dict[str, Any], async_upload: bool) -> None:
        self.wait()  # the previous upload must land first: checkpoints reach storage in order
        if local is None:
            return
        self._pending = self._pool.submit(self._upload, local, f"{self.run_path}/{name}")
        if not async_upload:
            self.wait()

    def _upload(self, local: Path, dest: str) -> None:
        try:
            upload_dir(local, self.fs, dest, self.retry)
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def wait(self) -> None:
        """Block until the upload in flight has finished; raises what it raised."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def fetch(self, path: str) -> contextlib.AbstractContextManager[Path]:
        return download_to_temp(self.fs, path, self.retry)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown()


def run_dir_store(run_dir: str | None, cfg: CheckpointConfig) -> Store | None:
    """The store of a run directory without Ray: a local path (or shared filesystem) is written in
    place, remote storage is uploaded to; no directory, no checkpoints."""
    if not run_dir:
        return None
    if "://" not in run_dir:
        return DirStore(run_dir)
    target = resolve_storage(run_dir, cfg.endpoint, cfg.region)
    return UploadStore(target.filesystem, target.path)


def _ray_upload(checkpoint: Any, dir_name: str, retry: Retry = DEFAULT_RETRY) -> Any:
    """Ray Train's `checkpoint_upload_fn`: ordered and retried, unlike a plain copy_files."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    dest = storage.build_checkpoint_path_from_name(dir_name)
    upload_dir(Path(checkpoint.path), storage.storage_filesystem, dest, retry)
    return ray.train.Checkpoint(path=dest, filesystem=storage.storage_filesystem)


class RayStore:
    stages_locally = True
    trainer_prunes = False
    retry = DEFAULT_RETRY

    def __init__(self) -> None:
        import ray.train

        storage = ray.train.get_context().get_storage()
        self.fs = storage.storage_filesystem
        self.run_path = storage.experiment_fs_path

    def staging(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-"))

    def commit(self, local: Path | None, name: str, metrics: dict[str, Any], async_upload: bool) -> None:
        import ray.train
        from ray.train import CheckpointUploadMode

        if local is None:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
            return
        ray.train.report(
            metrics, checkpoint=ray.train.Checkpoint.from_directory(str(local)), checkpoint_dir_name=name,
            checkpoint_upload_mode=CheckpointUploadMode.ASYNC if async_upload else CheckpointUploadMode.SYNC,
            delete_local_checkpoint_after_upload=True,
            checkpoint_upload_fn=functools.partial(_ray_upload, retry=self.retry),
        )

    def fetch(self, path: str) -> contextlib.AbstractContextManager[Path]:
        return download_to_temp(self.fs, path, self.retry)

    def close(self) -> None:
        pass  # Ray Train finishes in-flight async uploads before the run completes


@contextlib.contextmanager
def download_to_temp(fs: Any, path: str, retry: Retry = DEFAULT_RETRY) -> Iterator[Path]:
    """A checkpoint's files, all ranks' parts, in a local temp dir for the duration."""
    local = Path(tempfile.mkdtemp(prefix="trainforge-restore-"))
    try:
        download_dir(fs, path, local, retry)
        yield local
    finally:
        shutil.rmtree(local, ignore_errors=True)
