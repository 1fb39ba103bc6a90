"""A local job's state on disk, beside its checkpoints: `<root>/<name>/.job/`.

    job.yaml       the manifest as submitted (spec.suspend is rewritten by suspend/resume)
    status.json    a TrainingJobStatus, merged under a file lock: lifecycle passes (the supervisor's,
                   the backend's) and the trainer's status callback (in the Ray Train controller
                   process) write it, each only its own fields
    events.jsonl   one event per line
    attempt-N.log  the driver log of attempt N (Ray forwards the workers' output into it)
    process.json   pid of the supervisor running the job, while one runs
    deleting       present once deletion was asked for; the supervisor removes the directory on exit

The directory is 0700 and every file in it 0600 (`PRIVATE_FILE`): job.yaml holds the job's env values
and the logs whatever the task prints, so other users of the machine read none of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..lifecycle import parse_status
from ..spec import TrainingJob, TrainingJobStatus, parse_job
from ..spec.contract import SUPERVISOR_MODULE, merge_patch, stamp, utcnow
from ..spec.load import dump_job
from ..spec.yamlio import loads_all

STATE_DIR = ".job"
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """`os.open` of a state file, created 0600 whatever the umask; an existing file is narrowed too."""
    fd = os.open(path, flags, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)
    return fd


class JobDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = FileLock(str(path / ".lock"), timeout=30, mode=PRIVATE_FILE)

    @classmethod
    def of(cls, root: Path, name: str) -> JobDir:
        return cls(root / name / STATE_DIR)

    @property
    def name(self) -> str:
        return self.path.parent.name

    def exists(self) -> bool:
        return (self.path / "job.yaml").is_file()

    # ---- the job and its status -----------------------------------------------------------------

    def create(self, job: TrainingJob) -> None:
        """The job with an empty status: the first lifecycle pass writes it."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.path.chmod(PRIVATE_DIR)  # mkdir's mode is cut by the umask, and an old directory kept its own
        with self._lock:
            _write_atomic(self.path / "status.json", "{}")
            _write_atomic(self.path / "job.yaml", dump_job(job))

    def read_job(self) -> TrainingJob:
        """The manifest with its current status attached."""
        return self.read_manifest().model_copy(update={"status": _status_model(self.read_status())})

    def read_manifest(self) -> TrainingJob:
        """The manifest as submitted (with suspend as suspend/resume set it), without status."""
        return parse_job(loads_all((self.path / "job.yaml").read_text())[0])

    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "status.json").read_text())
        except FileNotFoundError:
            return {}

    def patch_status(self, patch: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Merge `patch` (or what `patch(current)` returns) into the status, atomically."""
        with self._lock:
            current = self.read_status()
            updated = merge_patch(current, patch(current) if callable(patch) else patch)
            if updated != current:  # a lifecycle pass that changes nothing (most of them) writes nothing
                _write_atomic(self.path / "status.json", json.dumps(updated, indent=1))
            return updated

    def set_suspend(self, suspend: bool) -> None:
        with self._lock:
            doc = loads_all((self.path / "job.yaml").read_text())[0]
            doc["spec"]["suspend"] = suspend
            _write_atomic(self.path / "job.yaml", dump_job(parse_job(doc)))

    def suspend_requested(self) -> bool:
        try:
            return bool(loads_all((self.path / "job.yaml").read_text())[0]["spec"].get("suspend"))
        except (OSError, IndexError, KeyError):
            return False

    # ---- events, logs, the supervisor -------------------------------------------------------------

    def event(self, type_: str, reason: str, message: str, obj: str | None = None) -> None:
        line = json.dumps({"time": stamp(utcnow()), "type": type_, "reason": reason, "message": message,
                           "object": obj or f"TrainingJob/{self.name}"})
        with self._lock, os.fdopen(open_private(self.path / "events.jsonl"), "a") as f:
            f.write(line + "\n")

    def events(self) -> list[dict[str, Any]]:
        try:
            text = (self.path / "events.jsonl").read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def attempt_log(self, attempt: int) -> Path:
        return self.path / f"attempt-{attempt}.log"

    def record_process(self, pid: int) -> None:
        _write_atomic(self.path / "process.json", json.dumps({"pid": pid}))

    def supervisor_pid(self) -> int | None:
        """The pid of the supervisor running this job, if one still runs."""
        try:
            pid = int(json.loads((self.path / "process.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None
        return pid if supervisor_alive(pid, self.path) else None

    def mark_deleting(self) -> None:
        (self.path / "deleting").touch()

    def deleting(self) -> bool:
        return (self.path / "deleting").exists()

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def supervisor_alive(pid: int, job_path: Path) -> bool:
    """True while `pid` is a live (not zombie) supervisor of this job: pids get reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                _reap(pid)
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
        return SUPERVISOR_MODULE.encode() in args and str(job_path).encode() in args
    except (OSError, IndexError):
        if not Path("/proc/self").exists():  # no procfs (macOS): the best check there is
            try:
                os.kill(pid, 0)
                return True
            except OSError:
                return False
        return False


def _reap(pid: int) -> None:
    """Collect an exited supervisor we started, so it does not stay a zombie of this process."""
    with contextlib.suppress(ChildProcessError):  # another process's child: its parent reaps it
        os.waitpid(pid, os.WNOHANG)


def _status_model(doc: dict[str, Any]) -> TrainingJobStatus | None:
    return parse_status(doc)[0] if doc else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as f:
        f.write(text)
    os.replace(tmp, path)
