"""Who owns a run directory: `owner.json`, a small record next to the checkpoints.

A run directory is written by one job (namespace, name, uid) at a time, and by one attempt of it:
the attempt that claimed it last. Every checkpoint commit and every prune checks the record first,
so a stale attempt (a partitioned head still running after its successor started) or another job
that shares the name and storage stops itself instead of overwriting or pruning what is not its own.

Note:
    The record is untrusted storage content: one that does not parse counts as absent (and is
    reported), never as a reason to fail or to destroy anything."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, TypeVar

log = logging.getLogger("trainforge.checkpoint")
OWNER_FILE = "owner.json"
T = TypeVar("T")


@dataclass(frozen=True)
class RunOwner:
    """A job's claim on a run directory. `uid` is empty for runs outside Kubernetes that no job
    object names (`trainforge run`): those share one identity per run name."""

    name: str
    namespace: str = ""
    uid: str = ""
    attempt: int = 1
    spec_hash: str = ""
    renewed: float = field(default_factory=time.time)
    """When the owning attempt last claimed or committed (seconds since the epoch)."""

    @property
    def job(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{where} (uid {self.uid})" if self.uid else where

    def same_job(self, other: RunOwner | dict[str, Any] | None) -> bool:
        if other is None:
            return False
        if isinstance(other, dict):
            return (other.get("uid", ""), other.get("namespace", ""), other.get("name")) == \
                (self.uid, self.namespace, self.name)
        return (other.uid, other.namespace, other.name) == (self.uid, self.namespace, self.name)

    def manifest_owner(self) -> dict[str, Any]:
        """What each checkpoint's manifest records of its writer (the attempt, for forensics: which
        attempt wrote what when two ran at once)."""
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid, "attempt": self.attempt}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> RunOwner:
        """Raises ValueError for anything that is not a well-formed record."""
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
            raise ValueError("not an owner record (needs a non-empty name)")
        kinds = {"namespace": str, "uid": str, "attempt": int, "spec_hash": str, "renewed": int | float}
        for key, kind in kinds.items():
            if key in raw and (not isinstance(raw[key], kind) or isinstance(raw[key], bool)):
                raise ValueError(f"owner record field {key!r} has the wrong type ({type(raw[key]).__name__})")
        known = {k: raw[k] for k in ("name", *kinds) if k in raw}
        return cls(**known)


class Claim(StrEnum):
    OURS = "ours"
    """Nobody else has a claim: take (or renew) it."""
    STALE = "stale"
    """A later attempt of this same job owns the run: this attempt must not write."""
    FOREIGN = "foreign"
    """Another job owns the run and it has checkpoints: refuse, with the ways out."""


def decide_claim(current: RunOwner | None, me: RunOwner, has_checkpoints: bool, takeover: bool = False) -> Claim:
    """Pure: may `me` write to a run whose record says `current`?

    Args:
        current: the record found (None: no record, or one that did not parse).
        me: the claiming attempt.
        has_checkpoints: the run holds complete checkpoints of `current`'s job.
        takeover: the spec names a checkpoint to start from explicitly (`resumeFrom`): the user
            takes the run over from its previous owner."""
    if current is None:
        return Claim.OURS
    if me.same_job(current):
        return Claim.STALE if current.attempt > me.attempt else Claim.OURS
    if has_checkpoints and not takeover:
        return Claim.FOREIGN
    return Claim.OURS


def owner_path(run_path: str) -> str:
    return f"{run_path.rstrip('/')}/{OWNER_FILE}"


def read_owner(fs: Any, run_path: str) -> RunOwner | None:
    """The run's record; None when there is none or it does not parse (logged)."""
    return read_record(fs, owner_path(run_path), RunOwner.from_dict)


def read_record(fs: Any, path: str, parse: Callable[[Any], T]) -> T | None:
    """A small JSON record of the run (owner, result): None when absent; one that does not parse is
    logged and counts as absent (storage contents are untrusted, never fatal)."""
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    try:
        with fs.open_input_stream(path) as f:
            return parse(json.loads(f.read().decode()))
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("%s is unreadable and is ignored: %s", path, exc)
        return None


def write_owner(fs: Any, run_path: str, owner: RunOwner) -> RunOwner:
    """Write (or renew) the record; returns what was written."""
    renewed = replace(owner, renewed=time.time())
    fs.create_dir(run_path.rstrip("/"), recursive=True)
    with fs.open_output_stream(owner_path(run_path)) as f:
        f.write(json.dumps(renewed.to_dict(), sort_keys=True).encode())
    return renewed


class StaleWriter(RuntimeError):
    """This attempt no longer owns its run directory; it stops without writing."""


def check_still_owner(fs: Any, run_path: str, me: RunOwner) -> None:
    """Before a commit or a prune: raise StaleWriter when a later attempt or another job holds the run."""
    current = read_owner(fs, run_path)
    if current is None or (me.same_job(current) and current.attempt <= me.attempt):
        return
    who = f"attempt {current.attempt} of this job" if me.same_job(current) else f"TrainingJob {current.job}"
    raise StaleWriter(f"{who} now owns run {run_path}; attempt {me.attempt} stops without writing to it")


def foreign_message(uri: str, current: RunOwner, me: RunOwner) -> str:
    ago = max(0, int(time.time() - current.renewed))
    return (f"run {uri} holds checkpoints of another job, {current.job}, last active {ago} s ago; "
            f"{me.job} will not resume or prune them. Use another metadata.name (or spec.checkpoint.storage), "
            "start over with `trainforge run --fresh` (which discards them), or set spec.checkpoint.resumeFrom "
            "to one of its checkpoints to take the run over from it")
