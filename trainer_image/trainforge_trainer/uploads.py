"""Copying a local directory of report files (profiles, TensorBoard events) to a run on remote storage."""

from __future__ import annotations

from pathlib import Path


def upload_dir(local: Path, uri: str, endpoint: str | None = None, region: str | None = None) -> int:
    """Every file under `local` to the same relative path under `uri`; returns how many. Raises OSError."""
    from trainforge.checkpoints import resolve_storage

    target = resolve_storage(uri, endpoint, region)
    count = 0
    for path in sorted(local.rglob("*")):
        if path.is_file():
            with target.filesystem.open_output_stream(f"{target.path}/{path.relative_to(local).as_posix()}") as out:
                out.write(path.read_bytes())
            count += 1
    return count
