"""Where a rank stages its part of a checkpoint and how the checkpoint reaches the run's storage.

`RayStore`: each rank stages into a local temp dir and `ray.train.report(checkpoint=...)` uploads
it (in the background when async) into one directory of the run; Ray Train's `storage_path` and
`storage_filesystem` decide where. `DirStore` (torchrun): all ranks write straight into the run
directory on a shared filesystem."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pyarrow.fs as pafs

from .transfer import download_dir, upload_dir


class Store(Protocol):
    fs: Any
    run_path: str
    uploads_on_report: bool

    def staging(self, name: str) -> Path: ...

    def commit(self, local: Path | None, name: str, metrics: dict[str, Any], async_upload: bool) -> None:
        """Make the staged checkpoint part of the run; `local` None: this rank wrote nothing."""

    def fetch(self, path: str) -> contextlib.AbstractContextManager[Path]: ...


class DirStore:
    uploads_on_report = False

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


def _ray_upload(checkpoint: Any, dir_name: str) -> Any:
    """Ray Train's `checkpoint_upload_fn`: ordered and retried, unlike a plain copy_files."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    dest = storage.build_checkpoint_path_from_name(dir_name)
    upload_dir(Path(checkpoint.path), storage.storage_filesystem, dest)
    return ray.train.Checkpoint(path=dest, filesystem=storage.storage_filesystem)


class RayStore:
    uploads_on_report = True

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
            delete_local_checkpoint_after_upload=True, checkpoint_upload_fn=_ray_upload,
        )

    @contextlib.contextmanager
    def fetch(self, path: str) -> Iterator[Path]:
        local = Path(tempfile.mkdtemp(prefix="trainforge-restore-"))
        try:
            download_dir(self.fs, path, local)
            yield local
        finally:
            shutil.rmtree(local, ignore_errors=True)
