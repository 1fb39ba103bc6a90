"""Copies between a local directory and storage, one file at a time, retried through outages.

The manifest goes last, so a checkpoint directory on storage never holds a manifest before the
files it lists. pyarrow retries single S3 requests; tenacity here rides out an endpoint that
refuses connections for longer (a restarting MinIO, a network blip)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from tenacity import before_sleep_log, retry, retry_if_exception_type, stop_after_delay, wait_exponential
from trainforge.checkpoints import MANIFEST

log = logging.getLogger("trainforge.checkpoint")
RETRY_FOR_S = float(os.environ.get("TRAINFORGE_STORAGE_RETRY_S", "300"))
_CHUNK = 64 << 20  # few large requests: S3 charges (and some servers slow down) per request

_retrying = retry(
    stop=stop_after_delay(RETRY_FOR_S),
    wait=wait_exponential(multiplier=0.5, max=10),
    retry=retry_if_exception_type(OSError),
    before_sleep=before_sleep_log(log, logging.WARNING),
    reraise=True,
)


@_retrying
def _put(src: Path, fs: Any, dst: str) -> None:
    with open(src, "rb") as fin, fs.open_output_stream(dst) as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)


@_retrying
def _get(fs: Any, src: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(src) as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)


@_retrying
def _mkdir(fs: Any, path: str) -> None:
    fs.create_dir(path, recursive=True)


@_retrying
def _walk(fs: Any, path: str) -> list[Any]:
    return fs.get_file_info(pafs.FileSelector(path, recursive=True))


def upload_dir(local: Path, fs: Any, dest: str) -> None:
    """Every file under `local` to `dest` on `fs`; the top-level manifest, if any, last."""
    files = sorted(p for p in local.rglob("*") if p.is_file())
    manifest = local / MANIFEST
    ordered = [p for p in files if p != manifest] + ([manifest] if manifest in files else [])
    _mkdir(fs, dest)
    for path in ordered:
        rel = path.relative_to(local).as_posix()
        if "/" in rel:
            _mkdir(fs, f"{dest}/{rel.rsplit('/', 1)[0]}")
        _put(path, fs, f"{dest}/{rel}")


def download_dir(fs: Any, src: str, local: Path) -> None:
    root = src.rstrip("/")
    for info in _walk(fs, root):
        if info.type == pafs.FileType.File:
            _get(fs, info.path, local / info.path[len(root) + 1:])
