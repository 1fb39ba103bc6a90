"""The run's metrics.jsonl: rank 0's reports, one JSON object a line, on any storage.

On a local run directory the file is written in place. On S3 (or any remote storage) it is written to
a local copy and uploaded whole before each checkpoint commits and at the end (and read back first,
so a resumed attempt appends to what earlier attempts logged): whatever checkpoint a run resumes
from, the log on storage holds every step up to it. A resumed run
first drops the records past the step it resumed from: the steps a lost attempt logged after its last
checkpoint are trained again, and logged again, so every step appears once.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("trainforge.metrics")
FILE = "metrics.jsonl"
UPLOAD_WAIT_S = 15.0
"""How long a commit waits for the log's upload: a slow store delays the checkpoint, never for good."""


class JsonlLog:
    """Appends reports to a local file and, with `remote` (filesystem, path), keeps a copy there.

    Args:
        path: the local file; None writes nothing (ranks other than 0).
        remote: pyarrow filesystem and path of the run's metrics.jsonl on remote storage.
    """

    def __init__(self, path: Path | None, remote: tuple[Any, str] | None = None) -> None:
        self.path, self.remote = path, remote
        self._upload: threading.Thread | None = None
        self._dirty = False
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if remote is not None:
            self._download()

    @classmethod
    def for_run(cls, run_dir: str | None, is_main: bool, endpoint: str | None = None,
                region: str | None = None) -> JsonlLog:
        """Rank 0's log of a run directory (local path or URI); a log that writes nothing elsewhere."""
        if not run_dir or not is_main:
            return cls(None)
        if "://" not in run_dir:
            return cls(Path(run_dir) / FILE)
        from trainforge.checkpoints import resolve_storage

        target = resolve_storage(run_dir, endpoint, region)
        local = Path(tempfile.mkdtemp(prefix="trainforge-metrics-")) / FILE
        return cls(local, (target.filesystem, f"{target.path.rstrip('/')}/{FILE}"))

    def _download(self) -> None:
        fs, remote = self.remote  # type: ignore[misc]
        try:
            with fs.open_input_stream(remote) as f:
                self.path.write_bytes(f.read())  # type: ignore[union-attr]
        except FileNotFoundError:
            pass
        except OSError as exc:  # a report, not the run: training goes on, the old lines stay on storage
            log.warning("could not read %s (%s); this attempt's lines are uploaded on their own", remote, exc)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"time": time.time(), **record}) + "\n")
        self._dirty = True

    def rewind(self, step: int) -> None:
        """Drop the records of steps after `step` (a resumed run trains and logs them again)."""
        if self.path is None or not self.path.exists():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _step_of(line) <= step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self._dirty = True

    def sync(self, wait: bool = False) -> None:
        """Upload the file (remote storage only) in the background; with `wait`, until it is there."""
        if self.remote is None or self.path is None:
            return
        if self._upload is not None and self._upload.is_alive():
            if not wait:
                return  # the next sync uploads what this one would have
            self._upload.join()
        if self._dirty:
            self._dirty = False
            self._upload = threading.Thread(target=self._put, args=(self.path.read_bytes(),), daemon=True,
                                            name="metrics-upload")
            self._upload.start()
        if wait and self._upload is not None:
            self._upload.join(timeout=UPLOAD_WAIT_S)

    def _put(self, data: bytes) -> None:
        fs, remote = self.remote  # type: ignore[misc]
        try:
            with fs.open_output_stream(remote) as out:
                out.write(data)
        except OSError as exc:
            self._dirty = True
            log.warning("could not upload %s (%s); retried at the next checkpoint", remote, exc)

    def close(self) -> None:
        self.sync(wait=True)


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", -1))
    except (ValueError, TypeError, AttributeError):
        return -1  # a broken line: kept, readers skip it
