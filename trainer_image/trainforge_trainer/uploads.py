"""Copying a local directory of report files (profiles, TensorBoard events, exports) to a run's URI."""

from __future__ import annotations

from pathlib import Path

from .checkpoint.transfer import upload_dir as upload_to


def upload_dir(local: Path, uri: str, endpoint: str | None = None, region: str | None = None) -> None:
    """Every file under `local` to the same relative path under `uri` (retried like checkpoint uploads)."""
    from trainforge.checkpoints import resolve_storage

    target = resolve_storage(uri, endpoint, region)
    upload_to(local, target.filesystem, target.path)
