"""Copies between a local directory and storage, one file at a time, each retried through outages.

The manifest goes last, so a checkpoint directory on storage never holds a manifest before the
files it lists. pyarrow retries single S3 requests for a few seconds; `Retry` (the spec's
retryWindowSeconds) rides out an endpoint that refuses connections for longer (a restarting MinIO,
a network blip) and fails fast on access denied or a missing bucket (see trainforge.checkpoints.retry)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from trainforge.checkpoints import MANIFEST
from trainforge.checkpoints.manifest import inside_checkpoint
from trainforge.checkpoints.retry import Retry

from .safe_load import UnsafeCheckpoint

log = logging.getLogger("trainforge.checkpoint")
_CHUNK = 64 << 20  # few large requests: S3 charges (and some servers slow down) per request
DEFAULT_RETRY = Retry()


def _put(src: Path, fs: Any, dst: str) -> None:
    with open(src, "rb") as fin, fs.open_output_stream(dst) as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)


def _get(fs: Any, src: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(src) as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)


def upload_dir(local: Path, fs: Any, dest: str, retry: Retry = DEFAULT_RETRY) -> None:
    """Every file under `local` to `dest` on `fs`; the top-level manifest, if any, last."""
    files = sorted(p for p in local.rglob("*") if p.is_file())
    manifest = local / MANIFEST
    ordered = [p for p in files if p != manifest] + ([manifest] if manifest in files else [])
    retry.call(f"creating {dest}", fs.create_dir, dest, recursive=True)
    for path in ordered:
        rel = path.relative_to(local).as_posix()
        if "/" in rel:
            parent = f"{dest}/{rel.rsplit('/', 1)[0]}"
            retry.call(f"creating {parent}", fs.create_dir, parent, recursive=True)
        retry.call(f"uploading {dest}/{rel}", _put, path, fs, f"{dest}/{rel}")


def download_dir(fs: Any, src: str, local: Path, retry: Retry = DEFAULT_RETRY) -> None:
    """Every file under `src` into `local`.

    Note:
        Keys are untrusted. One whose name would leave `local` (`..`, an absolute or empty part)
        makes the whole checkpoint unusable (`UnsafeCheckpoint`, before anything is downloaded): a
        checkpoint someone tampered with is skipped, not half-used.
    """
    root = src.rstrip("/")
    infos = retry.call(f"listing {root}", fs.get_file_info, pafs.FileSelector(root, recursive=True))
    files = [(info.path, info.path[len(root) + 1:]) for info in infos if info.type == pafs.FileType.File]
    if bad := [path for path, rel in files if not path.startswith(f"{root}/") or not inside_checkpoint(rel)]:
        raise UnsafeCheckpoint(f"storage key {bad[0]!r} is not a path inside the checkpoint {root}"
                               + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    for path, rel in files:
        retry.call(f"downloading {path}", _get, fs, path, local / rel)
